"""Failed-login counting and lockout per account and per source address, kept in PostgreSQL.

Every replica of the service reads and writes the same `throttle_counters` rows. Each change is
one `INSERT … ON CONFLICT … DO UPDATE … RETURNING` statement, so concurrent attempts on several
replicas never lose a count, and all times come from the database clock, so replicas whose
clocks drift still agree on when a lockout ends.

A row counts failures in a fixed window. When the count reaches the policy's maximum, the
subject is locked for `base * 2^lockouts` seconds, capped at `max_seconds`, and its count
starts again. The lockout count falls back to zero after `reset_seconds` without a failure.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Interval,
    Table,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert, Update

from app.identity.errors import InvalidValueError
from app.identity.identifiers import normalize_login
from app.models import ThrottleCounter
from app.settings import Settings

Scope = Literal["account", "address"]
ACCOUNT: Final[Scope] = "account"
ADDRESS: Final[Scope] = "address"

# Doubling stops growing here; the cap in seconds applies long before in any sane policy.
_MAX_DOUBLINGS: Final = 30

_counters = cast(Table, ThrottleCounter.__table__)
_columns = _counters.c


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """Limits for one scope: `max_failures` within `window_seconds` lock the subject."""

    max_failures: int
    window_seconds: int
    base_seconds: int
    max_seconds: int
    reset_seconds: int

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def lockout_seconds(self, earlier_lockouts: int) -> int:
        """Return the length of the lockout that follows `earlier_lockouts` earlier ones."""
        doublings = min(earlier_lockouts, _MAX_DOUBLINGS)
        return min(self.base_seconds * int(2**doublings), self.max_seconds)


def account_policy(settings: Settings) -> ThrottlePolicy:
    return ThrottlePolicy(
        max_failures=settings.throttle_account_max_failures,
        window_seconds=settings.throttle_account_window_seconds,
        base_seconds=settings.throttle_lockout_base_seconds,
        max_seconds=settings.throttle_lockout_max_seconds,
        reset_seconds=settings.throttle_lockout_reset_seconds,
    )


def address_policy(settings: Settings) -> ThrottlePolicy:
    return ThrottlePolicy(
        max_failures=settings.throttle_address_max_failures,
        window_seconds=settings.throttle_address_window_seconds,
        base_seconds=settings.throttle_address_block_base_seconds,
        max_seconds=settings.throttle_address_block_max_seconds,
        reset_seconds=settings.throttle_lockout_reset_seconds,
    )


def worst_case_failures_per_hour(policy: ThrottlePolicy, *, hour: int = 1) -> int:
    """Return the most failed guesses a policy lets through in the given hour (1 = first).

    The attacker either sends `max_failures` guesses each time a lockout ends, or stays one
    below the limit in every window; the larger count wins. The first hour allows the most,
    because lockouts start short.
    """
    start, end = (hour - 1) * 3600, hour * 3600
    elapsed, lockouts, greedy = 0, 0, 0
    while elapsed < end:
        if elapsed >= start:
            greedy += policy.max_failures
        elapsed += policy.lockout_seconds(lockouts)
        lockouts += 1
    below_limit = (policy.max_failures - 1) * math.ceil(3600 / policy.window_seconds)
    return max(greedy, below_limit)


def account_subject(login: str) -> str:
    """Return the counter key of a login: SHA-256 of its normalised form, in hex.

    Known and unknown logins are keyed alike, so counting reveals nothing about which exist.
    The login itself is not stored, because shoppers sometimes type a password into it.
    """
    try:
        key = "login:" + normalize_login(login)
    except InvalidValueError:
        key = "raw:" + login
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def address_subject(address: str | None) -> str:
    """Return the counter key of a source address.

    IPv6 addresses are grouped by /64, the block one subscriber usually gets, so an attacker
    cannot rotate through addresses of one network. Missing or unparsable addresses share
    the key `unknown`.
    """
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{parsed}/64", strict=False))
    return str(parsed)


@dataclass(frozen=True, slots=True)
class CountedFailure:
    """A failure that was counted; `locked_until` is set when this failure started a lockout."""

    failures: int
    lockouts: int
    locked_until: datetime | None


@dataclass(frozen=True, slots=True)
class LockoutStatus:
    scope: Scope
    subject: str
    failures: int
    lockouts: int
    window_started_at: datetime
    locked_until: datetime | None
    locked: bool
    updated_at: datetime


def _clock(now: datetime | None) -> ColumnElement[Any]:
    """The database clock, or a fixed time when a test simulates the passage of time."""
    if now is None:
        return func.statement_timestamp()
    return literal(now, _columns.updated_at.type)


def _seconds(value: int) -> ColumnElement[Any]:
    return literal(timedelta(seconds=value), Interval())


def count_failure_statement(
    scope: Scope,
    subject: str | BindParameter[str],
    policy: ThrottlePolicy,
    *,
    now: datetime | None = None,
) -> ReturningInsert[tuple[int, int, datetime | None]]:
    """Build the upsert that `count_failure` runs; it returns no row while the subject is locked.

    `subject` may be a bind parameter, so that the statement compiles once for the driver path.
    """
    clock = _clock(now)
    locked_now = policy.max_failures <= 1

    stale = _columns.updated_at + _seconds(policy.reset_seconds) <= clock
    earlier_lockouts = case((stale, 0), else_=_columns.lockouts)
    window_over = _columns.window_started_at + _seconds(policy.window_seconds) <= clock
    failures = case((window_over, 1), else_=_columns.failures + 1)
    reaches_limit = failures >= policy.max_failures
    doublings = func.least(earlier_lockouts, _MAX_DOUBLINGS)
    # make_interval(years, months, weeks, days, hours, minutes, seconds)
    lockout_length = func.make_interval(
        0, 0, 0, 0, 0, 0,
        func.least(policy.base_seconds * func.power(2, doublings), policy.max_seconds),
        type_=Interval(),
    )
    return (
        insert(_counters)
        .values(
            scope=scope,
            subject=subject,
            failures=0 if locked_now else 1,
            window_started_at=clock,
            lockouts=1 if locked_now else 0,
            locked_until=clock + _seconds(policy.lockout_seconds(0)) if locked_now else None,
            updated_at=clock,
        )
        .on_conflict_do_update(
            index_elements=[_columns.scope, _columns.subject],
            set_={
                "failures": case((reaches_limit, 0), else_=failures),
                "window_started_at": case(
                    (or_(reaches_limit, window_over), clock), else_=_columns.window_started_at
                ),
                "lockouts": case((reaches_limit, earlier_lockouts + 1), else_=earlier_lockouts),
                "locked_until": case(
                    (reaches_limit, clock + lockout_length), else_=_columns.locked_until
                ),
                "updated_at": clock,
            },
            # While locked, the row is left as it is and RETURNING yields nothing.
            where=or_(_columns.locked_until.is_(None), _columns.locked_until <= clock),
        )
        .returning(
            _columns.failures,
            _columns.lockouts,
            case((_columns.locked_until > clock, _columns.locked_until), else_=None).label(
                "locked_until"
            ),
        )
    )


async def count_failure(
    session: AsyncSession,
    scope: Scope,
    subject: str,
    policy: ThrottlePolicy,
    *,
    now: datetime | None = None,
) -> CountedFailure | None:
    """Count one failure for `subject`, locking it when the count reaches the limit.

    Returns None, and changes nothing, while the subject is locked. The row stays locked by
    this transaction until the caller commits, so commit soon.
    """
    statement = count_failure_statement(scope, subject, policy, now=now)
    row: Any = (await session.execute(statement)).one_or_none()
    if row is None:
        return None
    return CountedFailure(failures=row[0], lockouts=row[1], locked_until=row[2])


async def seconds_until_unlocked(
    session: AsyncSession, scope: Scope, subject: str, *, now: datetime | None = None
) -> int | None:
    """Return the whole seconds left in the subject's lockout (at least 1), or None."""
    clock = _clock(now)
    remaining = await session.scalar(
        select(func.extract("epoch", _columns.locked_until - clock)).where(
            _columns.scope == scope,
            _columns.subject == subject,
            _columns.locked_until > clock,
        )
    )
    if remaining is None:
        return None
    return max(1, math.ceil(float(remaining)))


def clear_failures_statement(
    scope: Scope, subject: str | BindParameter[str], *, now: datetime | None = None
) -> Update:
    """Build the update that `clear_failures` runs."""
    clock = _clock(now)
    return (
        update(_counters)
        .where(_columns.scope == scope, _columns.subject == subject)
        .values(failures=0, window_started_at=clock, locked_until=None, updated_at=clock)
    )


async def clear_failures(
    session: AsyncSession, scope: Scope, subject: str, *, now: datetime | None = None
) -> None:
    """Forget the failures of a subject after a successful login.

    The lockout count stays, so successes between an attacker's bursts do not shorten the
    next lockout, and it decays after `reset_seconds` like any other.
    """
    await session.execute(clear_failures_statement(scope, subject, now=now))


async def lockout_status(
    session: AsyncSession, scope: Scope, subject: str, *, now: datetime | None = None
) -> LockoutStatus | None:
    """Return the subject's counter, or None when it has no failures on record."""
    clock = _clock(now)
    row = (
        await session.execute(
            select(
                _columns.failures,
                _columns.lockouts,
                _columns.window_started_at,
                _columns.locked_until,
                and_(_columns.locked_until.is_not(None), _columns.locked_until > clock),
                _columns.updated_at,
            ).where(_columns.scope == scope, _columns.subject == subject)
        )
    ).one_or_none()
    if row is None:
        return None
    return LockoutStatus(
        scope=scope,
        subject=subject,
        failures=row[0],
        lockouts=row[1],
        window_started_at=row[2],
        locked_until=row[3],
        locked=bool(row[4]),
        updated_at=row[5],
    )


async def unlock(
    session: AsyncSession, scope: Scope, subject: str, *, now: datetime | None = None
) -> LockoutStatus | None:
    """Lift a lockout and reset its counts; return the status as it was before, or None.

    The row is locked first, so a failure counted at the same moment on another replica is
    either seen here or applied to the reset row.
    """
    clock = _clock(now)
    before = (
        await session.execute(
            select(_columns.subject)
            .where(_columns.scope == scope, _columns.subject == subject)
            .with_for_update()
        )
    ).one_or_none()
    if before is None:
        return None
    status = await lockout_status(session, scope, subject, now=now)
    await session.execute(
        update(_counters)
        .where(_columns.scope == scope, _columns.subject == subject)
        .values(
            failures=0, lockouts=0, locked_until=None, window_started_at=clock, updated_at=clock
        )
    )
    return status
