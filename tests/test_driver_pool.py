"""The driver pool that serves the callbacks' statements, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from app.db.driver_pool import DriverPool, DriverPoolClosedError, DriverPoolTimeoutError
from app.db.engine import Database, create_engine, database_for
from app.db.errors import is_database_unavailable
from tests.conftest import make_settings

WAIT_SECONDS = 0.05


@pytest.fixture
async def pool(shared_database_url: URL) -> AsyncIterator[DriverPool]:
    """A pool of two connections that waits up to half a second."""
    async with database_with(
        shared_database_url, db_driver_pool_size=2, db_pool_timeout_seconds=0.5
    ) as database:
        yield database.driver_pool


@asynccontextmanager
async def database_with(url: URL, **overrides: Any) -> AsyncIterator[Database]:
    """A Database on `url` whose settings differ from the tests' by `overrides`."""
    settings = make_settings(**overrides)
    database = database_for(url, create_engine(url, settings), settings)
    try:
        yield database
    finally:
        await database.dispose()


async def backend_pid(connection: Any) -> int:
    pid: int = await connection.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_connections_carry_service_settings(pool: DriverPool) -> None:
    async with pool.connection() as connection:
        application = await connection.fetchval("SHOW application_name")
        statement_timeout = await connection.fetchval("SHOW statement_timeout")

    assert application == "sso-provider"
    assert statement_timeout == "5s"


async def test_opens_at_most_size_connections(pool: DriverPool) -> None:
    async def fetch_pid() -> int:
        async with pool.connection() as connection:
            await asyncio.sleep(WAIT_SECONDS)
            return await backend_pid(connection)

    pids = await asyncio.gather(*(fetch_pid() for _ in range(6)))

    assert len(set(pids)) == 2
    assert pool.stats() == {"size": 2, "open": 2, "in_use": 0, "idle": 2, "waiting": 0}


async def test_waiter_served_before_newcomer(pool: DriverPool) -> None:
    order: list[str] = []
    checked_out = [await pool.acquire(), await pool.acquire()]

    async def waiting() -> None:
        async with pool.connection():
            order.append("waiting")

    task = asyncio.create_task(waiting())
    await asyncio.sleep(WAIT_SECONDS)
    assert pool.stats()["waiting"] == 1
    pool.release(checked_out.pop())
    # A new checkout arrives before the waiting task has run, and must queue behind it.
    async with pool.connection():
        order.append("newcomer")
    await task
    pool.release(checked_out.pop())

    assert order == ["waiting", "newcomer"]


async def test_checkout_gives_up_after_timeout(pool: DriverPool) -> None:
    checked_out = [await pool.acquire(), await pool.acquire()]
    try:
        with pytest.raises(DriverPoolTimeoutError) as raised:
            await pool.acquire()
    finally:
        for connection in checked_out:
            pool.release(connection)

    assert is_database_unavailable(raised.value)
    assert pool.stats()["waiting"] == 0
    # No expired waiter is left in the queue, so the next checkout gets an idle connection at once.
    async with asyncio.timeout(0.1), pool.connection() as connection:
        assert await connection.fetchval("SELECT 1") == 1


async def test_server_closed_connection_replaced(pool: DriverPool) -> None:
    doomed, other = await pool.acquire(), await pool.acquire()
    ended = await backend_pid(doomed)
    pool.release(doomed)
    await other.fetchval("SELECT pg_terminate_backend($1)", ended)
    pool.release(other)
    await asyncio.sleep(0.2)  # lets the event loop read the end of that connection's stream

    pids = []
    for _ in range(4):
        async with pool.connection() as connection:
            pids.append(await backend_pid(connection))

    # The checkout that found the closed connection opened a replacement in its place.
    assert ended not in pids
    assert len(set(pids)) == 2
    assert pool.stats()["open"] == 2


@pytest.mark.parametrize(
    ("error", "replaced"),
    [(TimeoutError(), True), (OSError("connection reset"), True), (ValueError("bug"), False)],
)
async def test_connection_after_error(
    shared_database_url: URL, error: Exception, replaced: bool
) -> None:
    async with database_with(shared_database_url, db_driver_pool_size=1) as database:
        async with database.driver_connection() as connection:
            first = await backend_pid(connection)
        with pytest.raises(type(error)):
            async with database.driver_connection() as connection:
                raise error
        async with database.driver_connection() as connection:
            after = await backend_pid(connection)

    assert (after != first) is replaced


async def test_cancelled_statement_closes_connection(pool: DriverPool) -> None:
    async def sleeper() -> None:
        async with pool.connection() as connection:
            await connection.execute("SELECT pg_sleep(5)")

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert pool.stats() == {"size": 2, "open": 0, "in_use": 0, "idle": 0, "waiting": 0}
    async with pool.connection() as connection:
        assert await connection.fetchval("SELECT 1") == 1


async def test_cancelled_waiter_passes_connection_on(pool: DriverPool) -> None:
    checked_out = [await pool.acquire(), await pool.acquire()]
    first = asyncio.create_task(pool.acquire())
    second = asyncio.create_task(pool.acquire())
    await asyncio.sleep(WAIT_SECONDS)

    # The first waiter is handed a connection and cancelled before it runs again.
    pool.release(checked_out.pop())
    first.cancel()
    connection = await second
    pool.release(connection)
    pool.release(checked_out.pop())

    assert first.cancelled()
    assert pool.stats() == {"size": 2, "open": 2, "in_use": 0, "idle": 2, "waiting": 0}


async def test_old_connection_closed_on_return(shared_database_url: URL) -> None:
    async with database_with(shared_database_url, db_pool_recycle_seconds=0) as database:
        async with database.driver_connection() as connection:
            first = await backend_pid(connection)
            await asyncio.sleep(WAIT_SECONDS)
        async with database.driver_connection() as replacement:
            second = await backend_pid(replacement)
        await asyncio.sleep(0.2)  # the old connection closes in the background

    assert second != first
    assert connection.is_closed()


async def test_over_age_idle_connection_replaced(
    shared_database_url: URL,
) -> None:
    # A firewall may end a connection that sits idle without telling either side, so one that
    # outlived the recycle age must not serve another statement.
    async with database_with(shared_database_url, db_pool_recycle_seconds=1) as database:
        async with database.driver_connection() as connection:
            first = await backend_pid(connection)
        await asyncio.sleep(1.2)
        async with database.driver_connection() as connection:
            second = await backend_pid(connection)

    assert second != first


async def test_dead_hand_over_keeps_turn(pool: DriverPool) -> None:
    checked_out = [await pool.acquire(), await pool.acquire()]
    first = asyncio.create_task(pool.acquire())
    await asyncio.sleep(WAIT_SECONDS)
    second = asyncio.create_task(pool.acquire())
    await asyncio.sleep(WAIT_SECONDS)

    # Handed to the first waiter, the connection dies before that waiter runs again.
    handed = checked_out.pop()
    pool.release(handed)
    handed.terminate()
    connection = await asyncio.wait_for(first, 1)

    assert connection is not handed
    assert not second.done()
    pool.release(connection)
    pool.release(await second)
    pool.release(checked_out.pop())
    assert pool.stats() == {"size": 2, "open": 2, "in_use": 0, "idle": 2, "waiting": 0}


async def test_url_options_yield_to_settings(
    shared_database_url: URL,
) -> None:
    url = shared_database_url.update_query_dict(
        {"command_timeout": "10", "statement_cache_size": "0"}
    )
    async with database_with(url) as database, database.driver_connection() as connection:
        assert await connection.fetchval("SELECT 1") == 1


async def test_closed_pool_rejects_checkouts(pool: DriverPool) -> None:
    idle, checked_out = await pool.acquire(), await pool.acquire()
    pool.release(idle)

    await pool.close()
    assert idle.is_closed()
    pool.release(checked_out)
    await asyncio.sleep(0.2)  # a connection returned after the close closes in the background

    assert checked_out.is_closed()
    with pytest.raises(DriverPoolClosedError) as raised:
        await pool.acquire()
    # A callback that races the shutdown gets a 503, which Digital River retries.
    assert is_database_unavailable(raised.value)
    assert pool.stats()["open"] == 0


async def test_close_fails_waiting_checkouts(pool: DriverPool) -> None:
    checked_out = [await pool.acquire(), await pool.acquire()]
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await asyncio.sleep(WAIT_SECONDS)

    await pool.close()
    for connection in checked_out:
        pool.release(connection)

    for task in waiters:
        with pytest.raises(DriverPoolClosedError):
            await task


async def test_failed_connect_frees_slot() -> None:
    attempts = 0

    async def fail_to_connect() -> Any:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("nothing listens")

    pool = DriverPool(fail_to_connect, size=1, timeout=0.5, recycle=-1)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()

    assert attempts == 2
    assert pool.stats()["open"] == 0


async def test_size_zero_rejected() -> None:
    async def connect() -> asyncpg.Connection:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="at least 1"):
        DriverPool(connect, size=0, timeout=1, recycle=-1)
