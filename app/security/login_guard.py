"""Brute-force protection around a login check: the steps before and after the password.

A login attempt runs in this order:

1. `open_login_gate` rejects a source address that is blocked. Then it counts the attempt
   against the account *before* the password is checked and commits the count, so parallel
   attempts on any replica cannot slip past the limit while a hash is being verified.
2. The caller checks the password, or, for a locked account, calls `verify_rejected_login`,
   which does the same database lookup and argon2id work without using the real hash. A
   locked account thus costs the same time and gets the same answer as a wrong password.
3. `close_login_gate` clears the account's failures after a success, and otherwise counts a
   failure against the source address and writes the audit events of any new lockout.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.identity.service import find_user
from app.models import AuditEvent, User, UserAddress, UserAttribute
from app.ops.metrics import LOCKOUTS, record_login
from app.rum.events import request_id_of
from app.security.throttle import (
    ACCOUNT,
    ADDRESS,
    CountedFailure,
    account_policy,
    account_subject,
    address_policy,
    address_subject,
    clear_failures,
    count_failure,
    seconds_until_unlocked,
)
from app.settings import Settings

logger = logging.getLogger(__name__)

# `actor_name` of audit events that the service writes on its own, not for an API key.
SYSTEM_ACTOR = "sso-provider"


class SourceThrottledError(Exception):
    """A blocked source address, which the callback layer turns into 429 with `Retry-After`."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"source address blocked for {retry_after_seconds} more seconds")
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True, slots=True)
class LoginGate:
    """The decision of the brute-force checks made before the password check."""

    account_subject: str
    address_subject: str
    # Seconds left in the source address's block; such an attempt is not checked at all.
    throttled_for_seconds: int | None = None
    # The account was locked before this attempt, so the response is that of a wrong password.
    account_locked: bool = False
    # This attempt's count started a lockout of the account.
    new_lockout: CountedFailure | None = None

    @property
    def allowed(self) -> bool:
        return self.throttled_for_seconds is None and not self.account_locked


async def open_login_gate(
    session: AsyncSession, settings: Settings, login: str, source: str | None
) -> LoginGate:
    """Check the address block, count this attempt against the account, and commit."""
    account = account_subject(login)
    address = address_subject(source)
    if address_policy(settings).enabled:
        wait = await seconds_until_unlocked(session, ADDRESS, address)
        if wait is not None:
            record_login("failure", "throttled")
            return LoginGate(account, address, throttled_for_seconds=wait)

    counted = await count_failure(session, ACCOUNT, account, account_policy(settings))
    # Committed before the slow password check: the row lock is released and other requests
    # see this attempt at once.
    await session.commit()
    if counted is None:
        record_login("failure", "locked_out")
        return LoginGate(account, address, account_locked=True)
    new_lockout = counted if counted.locked_until is not None else None
    return LoginGate(account, address, new_lockout=new_lockout)


async def verify_rejected_login(
    session: AsyncSession, hasher: PasswordHasher, login: str, password: str
) -> User | None:
    """Look the user up and spend one decoy password verification, as a real check would.

    Returns the user, for the audit record only: the password is never checked against it.
    """
    user = await find_user(session, login=login)
    # As in `authenticate`: no connection is kept while argon2id runs.
    await session.commit()
    await hasher.verify(password, None)
    return user


async def close_login_gate(
    session: AsyncSession,
    request: Request,
    settings: Settings,
    gate: LoginGate,
    *,
    succeeded: bool,
    user: User | None,
) -> None:
    """Record the attempt's result in the counters and audit events; the caller commits.

    A failure for a login that matched no user also runs the two relation queries that loading
    a found user costs, so unknown logins take as long as known ones.
    """
    if succeeded:
        await clear_failures(session, ACCOUNT, gate.account_subject)
        return
    if user is None:
        await _mirror_relation_lookups(session)

    if gate.new_lockout is not None:
        account_locked(session, request, gate.new_lockout, user.user_key if user else None)

    policy = address_policy(settings)
    if not policy.enabled:
        return
    counted = await count_failure(session, ADDRESS, gate.address_subject, policy)
    if counted is not None and counted.locked_until is not None:
        LOCKOUTS.inc()
        logger.warning(
            "throttle.address_blocked address=%s until=%s lockouts=%s",
            gate.address_subject,
            counted.locked_until.isoformat(),
            counted.lockouts,
        )
        session.add(
            AuditEvent(
                actor_name=SYSTEM_ACTOR,
                action="address.blocked",
                request_id=request_id_of(request),
                details={
                    "source_address": gate.address_subject,
                    "blocked_until": counted.locked_until.isoformat(),
                    "lockouts": counted.lockouts,
                },
            )
        )


async def _mirror_relation_lookups(session: AsyncSession) -> None:
    # The same statements `find_user` sends to load addresses and attributes, for no user.
    await session.execute(select(UserAddress).where(UserAddress.user_id.in_([0])))
    await session.execute(select(UserAttribute).where(UserAttribute.user_id.in_([0])))


def account_locked(
    session: AsyncSession,
    request: Request,
    lockout: CountedFailure,
    user_key: uuid.UUID | None,
) -> None:
    """Count, log and (for a known user) add the audit event of a lockout that just started."""
    LOCKOUTS.inc()
    locked_until: datetime | None = lockout.locked_until
    logger.warning(
        "throttle.account_locked user_key=%s until=%s lockouts=%s",
        user_key,
        locked_until.isoformat() if locked_until else None,
        lockout.lockouts,
    )
    if user_key is None:
        # An unknown login has no user to show the lockout to; the log line is enough.
        return
    session.add(
        AuditEvent(
            actor_name=SYSTEM_ACTOR,
            action="user.locked",
            target_user_key=user_key,
            request_id=request_id_of(request),
            details={
                "locked_until": locked_until.isoformat() if locked_until else None,
                "lockouts": lockout.lockouts,
            },
        )
    )
