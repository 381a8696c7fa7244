"""Delete login events older than the retention period, throttle counters that expired, and
SSO sessions that ended (expired or revoked) longer ago than that period.

Rows go in batches of `SSO_LOGIN_EVENT_PURGE_BATCH_SIZE`, each batch in its own short
transaction (`DELETE … WHERE id IN (SELECT id … LIMIT n FOR UPDATE SKIP LOCKED)`), so a purge
never holds locks for long and several replicas purging at once skip each other's rows instead
of waiting. `sso-provider events purge` runs it once; `install_purge_task` runs it in the
background every `SSO_LOGIN_EVENT_PURGE_INTERVAL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import delete, func, literal, or_, select, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import LoginEvent, SsoSession, ThrottleCounter
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    cutoff: datetime
    login_events_deleted: int
    throttle_counters_deleted: int
    sso_sessions_deleted: int


def counter_expiry_seconds(settings: Settings) -> int:
    """Return the age after which a throttle counter no longer affects any decision."""
    return max(
        settings.throttle_account_window_seconds,
        settings.throttle_address_window_seconds,
        settings.throttle_lockout_reset_seconds,
    )


async def _delete_in_batches(engine: AsyncEngine, build: Callable[[], Any], batch_size: int) -> int:
    deleted = 0
    while True:
        async with engine.begin() as connection:
            result = await connection.execute(build())
        count = result.rowcount or 0
        deleted += count
        if count < batch_size:
            return deleted
        # Let other work on this event loop run between batches.
        await asyncio.sleep(0)


async def purge_expired(
    engine: AsyncEngine,
    settings: Settings,
    *,
    retention_days: int | None = None,
    batch_size: int | None = None,
    now: datetime | None = None,
) -> PurgeResult:
    """Delete login events older than the retention period, expired throttle counters, and
    sessions that expired or were revoked before the retention period began.

    Ended sessions stay for the retention period, so RemoteSessionValidation still returns
    "expired" or "revoked" for their tokens, not "no session has this token".
    """
    days = retention_days if retention_days is not None else settings.login_event_retention_days
    size = batch_size if batch_size is not None else settings.login_event_purge_batch_size
    async with engine.connect() as connection:
        clock = now if now is not None else await connection.scalar(select(func.now()))
    assert clock is not None
    cutoff = clock - timedelta(days=days)
    counter_cutoff = clock - timedelta(seconds=counter_expiry_seconds(settings))

    def old_events() -> Any:
        batch = (
            select(LoginEvent.id)
            .where(LoginEvent.occurred_at < literal(cutoff, LoginEvent.occurred_at.type))
            .limit(size)
            .with_for_update(skip_locked=True)
        )
        return delete(LoginEvent).where(LoginEvent.id.in_(batch.scalar_subquery()))

    def expired_counters() -> Any:
        at = ThrottleCounter.updated_at.type
        batch = (
            select(ThrottleCounter.scope, ThrottleCounter.subject)
            .where(
                ThrottleCounter.updated_at < literal(counter_cutoff, at),
                or_(
                    ThrottleCounter.locked_until.is_(None),
                    ThrottleCounter.locked_until < literal(clock, at),
                ),
            )
            .limit(size)
            .with_for_update(skip_locked=True)
        )
        return delete(ThrottleCounter).where(
            tuple_(ThrottleCounter.scope, ThrottleCounter.subject).in_(batch)
        )

    def ended_sessions() -> Any:
        at = literal(cutoff, SsoSession.expires_at.type)
        # NOTE: no index covers expires_at or revoked_at, so each batch scans sso_sessions.
        batch = (
            select(SsoSession.id)
            .where(or_(SsoSession.expires_at < at, SsoSession.revoked_at < at))
            .limit(size)
            .with_for_update(skip_locked=True)
        )
        return delete(SsoSession).where(SsoSession.id.in_(batch.scalar_subquery()))

    events = await _delete_in_batches(engine, old_events, size)
    counters = await _delete_in_batches(engine, expired_counters, size)
    sessions = await _delete_in_batches(engine, ended_sessions, size)
    return PurgeResult(
        cutoff=cutoff,
        login_events_deleted=events,
        throttle_counters_deleted=counters,
        sso_sessions_deleted=sessions,
    )


async def _purge_periodically(app: FastAPI, settings: Settings) -> None:
    interval = settings.login_event_purge_interval_seconds
    while True:
        # Replicas started together spread their purges over a tenth of the interval.
        await asyncio.sleep(interval * random.uniform(0.9, 1.0))  # noqa: S311 - not a secret
        try:
            result = await purge_expired(app.state.database.engine, settings)
        except (SQLAlchemyError, OSError) as error:
            logger.warning("retention.purge_failed error=%s", type(error).__name__)
            continue
        logger.info(
            "retention.purged login_events=%s throttle_counters=%s sso_sessions=%s cutoff=%s",
            result.login_events_deleted,
            result.throttle_counters_deleted,
            result.sso_sessions_deleted,
            result.cutoff.isoformat(),
        )


def install_purge_task(app: FastAPI, settings: Settings) -> None:
    """Run the purge in the background while the app runs, unless the interval is 0.

    The app's lifespan is wrapped, so the task starts after the database is open and stops
    before it closes.
    """
    if settings.login_event_purge_interval_seconds <= 0:
        return
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with inner(application) as state:
            task = asyncio.create_task(_purge_periodically(application, settings))
            try:
                yield state
            finally:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    app.router.lifespan_context = lifespan
