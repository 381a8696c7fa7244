"""API keys for the admin and session APIs, and the `require_scope` request dependency.

A key is `sso_` followed by 43 URL-safe characters (`secrets.token_urlsafe(32)`, 256 bits).
Only its SHA-256 digest is stored: a key that random cannot be guessed from its hash, so a slow
password hash would add latency and no protection. Requests send `Authorization: Bearer <key>`.

Routes declare the scope they need with an `Annotated` alias:

    async def list_users(key: AdminReadKey, session: SessionDep) -> ...

or, for another scope, `key: Annotated[AuthenticatedKey, Depends(require_scope("sessions"))]`
(`SessionsKey` below). A missing, unknown or revoked key is rejected with 401 and
`WWW-Authenticate: Bearer`, and a key without the scope with 403, both as problem details.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.admin.audit import Actor
from app.deps import SessionDep
from app.identity.errors import DomainError, InvalidValueError, NotFoundError
from app.models import ApiKey

KEY_PREFIX = "sso_"
# `sso_` plus 43 characters; anything much longer is rejected before the database is asked.
MAX_KEY_LENGTH = 128

# Scopes the `api_keys.scopes` check constraint accepts.
SCOPES = ("admin:read", "admin:write", "sessions", "admin:export-secrets")

# A scope on the left also grants the scopes on the right.
IMPLIED_SCOPES: dict[str, frozenset[str]] = {"admin:write": frozenset({"admin:read"})}

# `last_used_at` is written at most once per interval, so that busy keys do not write a row
# on every request.
LAST_USED_INTERVAL = timedelta(minutes=1)

_REALM = 'realm="sso-provider"'


class AuthenticationError(DomainError):
    """A missing, unknown or revoked bearer key (401 with `WWW-Authenticate: Bearer`)."""

    code = "unauthorized"
    status_code = 401

    def __init__(self, message: str, *, token_error: bool) -> None:
        super().__init__(message)
        challenge = f"Bearer {_REALM}"
        if token_error:
            challenge += ', error="invalid_token"'
        self.headers = {"WWW-Authenticate": challenge}


class PermissionDeniedError(DomainError):
    """A valid key without the scope an endpoint requires."""

    code = "insufficient_scope"
    status_code = 403

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"this endpoint requires the scope {scope}: create a key with "
            f"`sso-provider keys create --scope {scope}`"
        )
        self.headers = {
            "WWW-Authenticate": f'Bearer {_REALM}, error="insufficient_scope", scope="{scope}"'
        }


@dataclass(frozen=True, slots=True)
class AuthenticatedKey:
    """The API key that authenticated the current request."""

    id: uuid.UUID
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """Return True if the key has `scope` directly or through a scope that implies it."""
        if scope in self.scopes:
            return True
        return any(scope in IMPLIED_SCOPES.get(held, ()) for held in self.scopes)

    @property
    def actor(self) -> Actor:
        return Actor(key_id=self.id, name=self.name)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    """Return the SHA-256 digest of the whole key, as stored in `api_keys.key_hash`."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def _clean_scopes(scopes: Iterable[str]) -> list[str]:
    cleaned = list(dict.fromkeys(scope.strip() for scope in scopes))
    if not cleaned:
        raise InvalidValueError(f"give at least one scope: {', '.join(SCOPES)}", field="scopes")
    unknown = [scope for scope in cleaned if scope not in SCOPES]
    if unknown:
        raise InvalidValueError(
            f"unknown scope {unknown[0]!r}: use one of {', '.join(SCOPES)}", field="scopes"
        )
    return cleaned


async def create_api_key(
    session: AsyncSession, *, name: str, scopes: Iterable[str]
) -> tuple[ApiKey, str]:
    """Insert a key and return its row and the key itself, which is not stored anywhere."""
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InvalidValueError("name must be 1 to 200 characters", field="name")
    key = generate_key()
    row = ApiKey(name=name, key_hash=hash_key(key), scopes=_clean_scopes(scopes))
    session.add(row)
    await session.flush()
    await session.refresh(row)
    return row, key


async def list_api_keys(session: AsyncSession, *, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list((await session.scalars(query)).all())


async def revoke_api_key(session: AsyncSession, key_id: uuid.UUID) -> tuple[ApiKey, bool]:
    """Revoke a key; return it and whether this call revoked it (False if it already was)."""
    row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id).with_for_update())
    if row is None:
        raise NotFoundError(f"no API key with id {key_id}", field="id")
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = datetime.now(UTC)
    await session.flush()
    return row, True


async def authenticate_key(session: AsyncSession, presented: str) -> AuthenticatedKey | None:
    """Return the live key matching `presented`, or None for an unknown or revoked key.

    Also stamps `last_used_at` when it is older than `LAST_USED_INTERVAL`; the caller commits.
    """
    if not presented.startswith(KEY_PREFIX) or len(presented) > MAX_KEY_LENGTH:
        return None
    digest = hash_key(presented)
    row = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The index lookup compares digests, which a caller cannot choose byte by byte, so its
    # timing reveals nothing useful; the constant-time check confirms the match.
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    if row.revoked_at is not None:
        return None
    now = datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_INTERVAL:
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == row.id,
                or_(
                    ApiKey.last_used_at.is_(None),
                    ApiKey.last_used_at <= now - LAST_USED_INTERVAL,
                ),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
    return AuthenticatedKey(id=row.id, name=row.name, scopes=frozenset(row.scopes))


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="sso_<43 characters>",
    description=(
        "An API key created with `sso-provider keys create --name NAME --scope SCOPE`, sent as "
        "`Authorization: Bearer <key>`. Scopes: `admin:read` (read users and audit events), "
        "`admin:write` (change users; includes `admin:read`), `sessions` (session-token API)."
    ),
)

KeyDependency = Callable[..., Awaitable[AuthenticatedKey]]


def require_scope(scope: str) -> KeyDependency:
    """Return a dependency that authenticates the bearer key and requires `scope`.

    The dependency returns the `AuthenticatedKey` and stores it on `request.state.api_key`.
    It commits the request's session when it stamps `last_used_at`, so use it before any
    change is made in that session (FastAPI resolves dependencies before the handler runs).
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known scopes: {', '.join(SCOPES)}")

    async def authenticated_key(
        request: Request,
        session: SessionDep,
        # A default rather than `Annotated`: postponed annotations cannot see `scope`.
        credentials: HTTPAuthorizationCredentials | None = Security(  # noqa: B008
            bearer_scheme, scopes=[scope]
        ),
    ) -> AuthenticatedKey:
        if credentials is None:
            raise AuthenticationError(
                "missing bearer key: send the header Authorization: Bearer <key>",
                token_error=False,
            )
        key = await authenticate_key(session, credentials.credentials)
        if key is None:
            raise AuthenticationError(
                "the bearer key is unknown or revoked: create one with `sso-provider keys create`",
                token_error=True,
            )
        # Commits only the `last_used_at` stamp: nothing else has happened in this session yet.
        await session.commit()
        if not key.allows(scope):
            raise PermissionDeniedError(scope)
        request.state.api_key = key
        return key

    authenticated_key.__name__ = f"require_{scope.replace(':', '_').replace('-', '_')}"
    return authenticated_key


AdminReadKey = Annotated[AuthenticatedKey, Depends(require_scope("admin:read"))]
AdminWriteKey = Annotated[AuthenticatedKey, Depends(require_scope("admin:write"))]
SessionsKey = Annotated[AuthenticatedKey, Depends(require_scope("sessions"))]
