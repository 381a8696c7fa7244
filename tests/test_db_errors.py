"""Lock and statement timeouts are transient, so callers return 503 with Retry-After, not 500."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from app.db.engine import create_engine
from app.db.errors import is_database_unavailable
from tests.conftest import make_settings


async def test_lock_timeout_is_unavailable(fresh_database_url: URL) -> None:
    engine = create_engine(fresh_database_url, make_settings(db_lock_timeout_ms=100))
    try:
        async with engine.connect() as holder, engine.connect() as waiter:
            await holder.execute(text("LOCK TABLE throttle_counters IN ACCESS EXCLUSIVE MODE"))

            with pytest.raises(DBAPIError) as caught:
                await waiter.execute(text("SELECT count(*) FROM throttle_counters"))

            await holder.rollback()
    finally:
        await engine.dispose()

    assert "lock timeout" in str(caught.value)
    assert is_database_unavailable(caught.value)


async def test_statement_timeout_is_unavailable(fresh_database_url: URL) -> None:
    engine = create_engine(fresh_database_url, make_settings(db_statement_timeout_ms=100))
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as caught:
                await connection.execute(text("SELECT pg_sleep(2)"))
    finally:
        await engine.dispose()

    assert "statement timeout" in str(caught.value)
    assert is_database_unavailable(caught.value)
