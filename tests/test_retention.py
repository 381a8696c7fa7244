"""Purging old login events and expired throttle counters, by function, command and task."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db.engine import Database, create_engine, create_sessionmaker
from app.db.url import render
from app.identity.passwords import PasswordHasher
from app.main import create_app
from app.models import LoginEvent, SsoSession, ThrottleCounter
from app.security.retention import purge_expired
from tests.conftest import make_settings
from tests.factories import make_user


@pytest.fixture
async def engine(fresh_database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(fresh_database_url, make_settings())
    yield engine
    await engine.dispose()


async def database_now(engine: AsyncEngine) -> datetime:
    async with engine.connect() as connection:
        now = await connection.scalar(select(func.now()))
    assert now is not None
    return now


async def add_events(engine: AsyncEngine, count: int, age: timedelta, reason: str) -> None:
    now = await database_now(engine)
    rows = [
        {"kind": "login", "outcome": "failure", "reason": reason, "occurred_at": now - age}
        for _ in range(count)
    ]
    async with engine.begin() as connection:
        await connection.execute(insert(LoginEvent), rows)


async def reasons_left(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(LoginEvent.reason, func.count()).group_by(LoginEvent.reason)
        )
        return {reason: count for reason, count in rows.all()}


class TestPurgeExpired:
    async def test_deletes_only_old_events(self, engine: AsyncEngine) -> None:
        await add_events(engine, 25, timedelta(days=91), "old")
        await add_events(engine, 5, timedelta(days=89), "recent")

        result = await purge_expired(engine, make_settings())

        assert result.login_events_deleted == 25
        assert await reasons_left(engine) == {"recent": 5}

    async def test_deletes_in_batches(self, engine: AsyncEngine) -> None:
        await add_events(engine, 25, timedelta(days=100), "old")
        deletes: list[str] = []

        def count_deletes(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE FROM LOGIN_EVENTS"):
                deletes.append(statement)

        event.listen(engine.sync_engine, "before_cursor_execute", count_deletes)
        try:
            result = await purge_expired(engine, make_settings(), batch_size=10)
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", count_deletes)

        assert result.login_events_deleted == 25
        assert len(deletes) == 3
        assert "LIMIT" in deletes[0].upper()
        assert await reasons_left(engine) == {}

    async def test_retention_setting_respected(self, engine: AsyncEngine) -> None:
        await add_events(engine, 3, timedelta(days=8), "older")
        await add_events(engine, 2, timedelta(days=6), "newer")

        result = await purge_expired(engine, make_settings(login_event_retention_days=7))

        assert result.login_events_deleted == 3
        assert await reasons_left(engine) == {"newer": 2}

    async def test_parallel_purges_share_work(self, engine: AsyncEngine) -> None:
        await add_events(engine, 200, timedelta(days=100), "old")

        results = await asyncio.gather(
            *(purge_expired(engine, make_settings(), batch_size=7) for _ in range(3))
        )

        assert sum(result.login_events_deleted for result in results) == 200
        assert await reasons_left(engine) == {}

    async def test_expired_counters_deleted(self, engine: AsyncEngine) -> None:
        now = await database_now(engine)
        rows = [
            # Quiet for over a day: no longer affects any decision.
            {"scope": "account", "subject": "stale", "updated_at": now - timedelta(days=2),
             "window_started_at": now - timedelta(days=2), "locked_until": None},
            # Recent failures still count.
            {"scope": "account", "subject": "recent", "updated_at": now - timedelta(minutes=5),
             "window_started_at": now - timedelta(minutes=5), "locked_until": None},
            # Old but still locked: kept until the lockout ends.
            {"scope": "address", "subject": "203.0.113.7", "updated_at": now - timedelta(days=2),
             "window_started_at": now - timedelta(days=2),
             "locked_until": now + timedelta(minutes=5)},
        ]
        async with engine.begin() as connection:
            await connection.execute(insert(ThrottleCounter), rows)

        result = await purge_expired(engine, make_settings())

        assert result.throttle_counters_deleted == 1
        async with engine.connect() as connection:
            left = (await connection.scalars(select(ThrottleCounter.subject))).all()
        assert sorted(left) == ["203.0.113.7", "recent"]


    async def test_ended_sessions_deleted(
        self, engine: AsyncEngine, hasher: PasswordHasher
    ) -> None:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            user = await make_user(session, hasher, login="sessions@example.com")
        now = await database_now(engine)
        ages = {
            b"expired-long-ago": (now - timedelta(days=100), None),
            b"revoked-long-ago": (now + timedelta(hours=1), now - timedelta(days=100)),
            b"expired-yesterday": (now - timedelta(days=1), None),
            b"active": (now + timedelta(hours=1), None),
        }
        rows = [
            {"user_id": user.id, "token_hash": token_hash, "expires_at": expires_at,
             "revoked_at": revoked_at}
            for token_hash, (expires_at, revoked_at) in ages.items()
        ]
        async with engine.begin() as connection:
            await connection.execute(insert(SsoSession), rows)

        result = await purge_expired(engine, make_settings(login_event_retention_days=90))

        assert result.sso_sessions_deleted == 2
        async with engine.connect() as connection:
            left = (await connection.scalars(select(SsoSession.token_hash))).all()
        assert sorted(left) == [b"active", b"expired-yesterday"]


class TestPurgeCommand:
    async def test_command_prints_counts(
        self, engine: AsyncEngine, fresh_database_url: URL
    ) -> None:
        await add_events(engine, 4, timedelta(days=40), "old")
        await add_events(engine, 1, timedelta(days=1), "recent")
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("SSO_")
        }
        environment.update(
            {"SSO_ENVIRONMENT": "development", "SSO_DATABASE_URL": render(fresh_database_url)}
        )

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "events", "purge", "--retention-days", "30",
            "--batch-size", "2",
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)

        assert process.returncode == 0, stderr.decode()
        output = json.loads(stdout)
        assert output["login_events_deleted"] == 4
        assert output["throttle_counters_deleted"] == 0
        assert output["sso_sessions_deleted"] == 0
        assert await reasons_left(engine) == {"recent": 1}

    async def test_command_rejects_zero_days(self, fresh_database_url: URL) -> None:
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("SSO_")
        }
        environment.update(
            {"SSO_ENVIRONMENT": "development", "SSO_DATABASE_URL": render(fresh_database_url)}
        )

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "events", "purge", "--retention-days", "0",
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)

        assert process.returncode == 2
        assert "--retention-days" in stderr.decode()


class TestPurgeTask:
    async def test_background_task_purges(
        self, engine: AsyncEngine, fresh_database_url: URL
    ) -> None:
        await add_events(engine, 3, timedelta(days=100), "old")
        settings = make_settings(login_event_purge_interval_seconds=1)
        database = Database(
            url=fresh_database_url, engine=engine, sessionmaker=create_sessionmaker(engine)
        )
        application = create_app(settings, database=database)

        async with application.router.lifespan_context(application):
            for _ in range(50):
                if not await reasons_left(engine):
                    break
                await asyncio.sleep(0.1)
            left = await reasons_left(engine)

        assert left == {}

    async def test_interval_zero_disables_task(
        self, engine: AsyncEngine, fresh_database_url: URL
    ) -> None:
        settings = make_settings(login_event_purge_interval_seconds=0)
        database = Database(
            url=fresh_database_url, engine=engine, sessionmaker=create_sessionmaker(engine)
        )
        application = create_app(settings, database=database)
        before = {task for task in asyncio.all_tasks()}

        async with application.router.lifespan_context(application):
            started = {
                task for task in asyncio.all_tasks() - before
                if "_purge_periodically" in repr(task.get_coro())
            }

        assert started == set()
