"""Issue, validate and revoke SSO session tokens.

A token is `secrets.token_urlsafe(32)`: 43 URL-safe characters carrying 256 random bits. Only its
SHA-256 digest is stored and looked up. A value that random cannot be recovered from its digest,
so a slow password hash would add latency and no protection. Times come from the database clock
(`now()`), so every replica agrees on expiry.

Functions here flush or execute but never commit: the caller owns the transaction.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.models import SsoSession, User
from app.settings import Settings

TOKEN_BYTES: Final = 32
# token_urlsafe(32) is unpadded Base64url of 32 bytes: always 43 characters.
TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")


class TokenFailure(enum.Enum):
    """Reason a presented token identifies no user; the value is recorded as the event reason."""

    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    REVOKED = "revoked"
    EXPIRED = "expired"
    USER_DISABLED = "user_disabled"
    USER_ERASED = "user_erased"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new session: the token is shown once, to the caller that created it."""

    id: uuid.UUID
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """Result of checking one token.

    `user` is set on success and, where the token was found, on failure too (for the event
    record). `session_id` is set whenever the token matched a stored session.
    """

    failure: TokenFailure | None
    user: User | None = None
    session_id: uuid.UUID | None = None
    expires_at: datetime | None = None

    @property
    def valid(self) -> bool:
        return self.failure is None


def generate_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> bytes:
    """Return the SHA-256 digest of the token, as stored in `sso_sessions.token_hash`."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def is_well_formed(token: str) -> bool:
    return TOKEN_RE.fullmatch(token) is not None


async def create_session(session: AsyncSession, user: User, settings: Settings) -> IssuedToken:
    """Issue a token for `user`, expiring `session_lifetime_minutes` from now.

    The caller checks that the user may sign in (status active); this function does not.
    """
    token = generate_token()
    lifetime = timedelta(minutes=settings.session_lifetime_minutes)
    row = (
        await session.execute(
            insert(SsoSession)
            .values(user_id=user.id, token_hash=hash_token(token), expires_at=func.now() + lifetime)
            .returning(SsoSession.id, SsoSession.expires_at)
        )
    ).one()
    return IssuedToken(id=row.id, token=token, expires_at=row.expires_at)


async def check_token(session: AsyncSession, token: str, settings: Settings) -> TokenCheck:
    """Check one presented token and, when it is valid, stamp `last_validated_at`.

    Failures are decided in this order: malformed, unknown, user erased, user disabled,
    revoked (including a token issued before the user's latest password change), expired.
    The user's state comes first so that a disabled user's token reports that, even though
    disabling also revokes it. With sliding renewal a valid token's expiry moves to now plus
    the lifetime, capped at `session_max_lifetime_minutes` after issue, and never moves back.
    """
    if not is_well_formed(token):
        return TokenCheck(TokenFailure.MALFORMED)
    digest = hash_token(token)
    found = (
        await session.execute(
            select(SsoSession, User, func.now())
            .join(User, User.id == SsoSession.user_id)
            .options(selectinload(User.addresses), selectinload(User.attributes))
            .where(SsoSession.token_hash == digest)
        )
    ).one_or_none()
    # The index lookup compares digests, which a caller cannot steer byte by byte, so its
    # timing reveals nothing useful; the constant-time check confirms the match.
    if found is None or not hmac.compare_digest(found[0].token_hash, digest):
        return TokenCheck(TokenFailure.UNKNOWN)
    stored, user, now = found
    failure = _failure_of(stored, user, now)
    if failure is not None:
        return TokenCheck(failure, user, stored.id, stored.expires_at)

    values: dict[str, object] = {"last_validated_at": func.now()}
    if settings.session_sliding_renewal:
        renewed = func.least(
            func.now() + timedelta(minutes=settings.session_lifetime_minutes),
            SsoSession.created_at + timedelta(minutes=settings.session_max_lifetime_minutes),
        )
        values["expires_at"] = func.greatest(SsoSession.expires_at, renewed)
    # The conditions repeat the checks, so a revocation that commits between the read and this
    # update still wins.
    expires_at = await session.scalar(
        update(SsoSession)
        .where(
            SsoSession.id == stored.id,
            SsoSession.revoked_at.is_(None),
            SsoSession.expires_at > func.now(),
        )
        .values(**values)
        .returning(SsoSession.expires_at)
        .execution_options(synchronize_session=False)
    )
    if expires_at is None:
        return TokenCheck(TokenFailure.REVOKED, user, stored.id, stored.expires_at)
    return TokenCheck(None, user, stored.id, expires_at)


def _failure_of(stored: SsoSession, user: User, now: datetime) -> TokenFailure | None:
    if user.status == "erased":
        return TokenFailure.USER_ERASED
    if user.status != "active":
        return TokenFailure.USER_DISABLED
    if stored.revoked_at is not None:
        return TokenFailure.REVOKED
    # A password change revokes the user's sessions; this also covers a change made by a path
    # that did not call revoke_user_sessions.
    if user.password_changed_at is not None and stored.created_at < user.password_changed_at:
        return TokenFailure.REVOKED
    if stored.expires_at <= now:
        return TokenFailure.EXPIRED
    return None


async def revoke_session(session: AsyncSession, session_id: uuid.UUID, reason: str) -> bool:
    """Revoke one session; return False if no session has this id.

    Revoking a revoked session succeeds and keeps the first revocation's time and reason.
    """
    exists = await session.scalar(select(SsoSession.id).where(SsoSession.id == session_id))
    if exists is None:
        return False
    await session.execute(
        update(SsoSession)
        .where(SsoSession.id == session_id, SsoSession.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return True


async def revoke_user_sessions(session: AsyncSession, user_id: int, reason: str) -> int:
    """Revoke every live session of the user with primary key `user_id`; return how many.

    Runs in the caller's transaction, so the revocation commits with the change that caused
    it (a disabled account, an erasure, a new password).
    """
    revoked = await session.scalars(
        update(SsoSession)
        .where(SsoSession.user_id == user_id, SsoSession.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
        .returning(SsoSession.id)
        .execution_options(synchronize_session=False)
    )
    return len(revoked.all())
