"""The connection pool serves waiting checkouts in arrival order, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import greenlet_spawn

from app.db.engine import create_engine
from app.db.pool import FairAsyncQueue, FairAsyncQueuePool
from tests.conftest import make_settings

WAIT_SECONDS = 0.05


async def checkout_in_order(engine: AsyncEngine) -> list[str]:
    """Return the order in which a waiting checkout and a later one get the only connection.

    The holder returns the connection and a new checkout follows at once, before the waiting
    task has run, which is where a plain asyncio.Queue lets the newcomer in first.
    """
    order: list[str] = []
    holder = await engine.raw_connection()

    async def waiting() -> None:
        connection = await engine.raw_connection()
        order.append("waiting")
        await greenlet_spawn(connection.close)

    task = asyncio.create_task(waiting())
    await asyncio.sleep(WAIT_SECONDS)
    await greenlet_spawn(holder.close)
    newcomer = await engine.raw_connection()
    order.append("newcomer")
    await greenlet_spawn(newcomer.close)
    await task
    return order


@pytest.fixture
async def engine(shared_database_url: URL) -> AsyncIterator[AsyncEngine]:
    settings = make_settings(db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=5)
    engine = create_engine(shared_database_url, settings)
    yield engine
    await engine.dispose()


async def test_engine_uses_fair_pool(engine: AsyncEngine) -> None:
    assert isinstance(engine.pool, FairAsyncQueuePool)


async def test_waiter_served_before_newcomer(engine: AsyncEngine) -> None:
    assert await checkout_in_order(engine) == ["waiting", "newcomer"]


async def test_plain_pool_lets_newcomer_first(shared_database_url: URL) -> None:
    # The behaviour FairAsyncQueuePool exists to change, checked on SQLAlchemy's own pool, so
    # the test above cannot pass by accident of scheduling.
    plain = create_async_engine(
        shared_database_url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=5,
    )
    try:
        assert await checkout_in_order(plain) == ["newcomer", "waiting"]
    finally:
        await plain.dispose()


async def test_timed_out_waiter_removed(shared_database_url: URL) -> None:
    settings = make_settings(db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.2)
    engine = create_engine(shared_database_url, settings)
    try:
        holder = await engine.raw_connection()
        with pytest.raises(exc.TimeoutError):
            await engine.raw_connection()
        await greenlet_spawn(holder.close)

        again = await asyncio.wait_for(engine.raw_connection(), timeout=1)

        assert not engine.pool._pool._waiters  # type: ignore[attr-defined]
        await greenlet_spawn(again.close)
    finally:
        await engine.dispose()


async def test_item_passed_on_when_waiter_cancelled() -> None:
    queue: FairAsyncQueue[str] = FairAsyncQueue(1)
    task = asyncio.create_task(queue.wait_for_item(None))
    await asyncio.sleep(0)

    queue.put_nowait("connection")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert queue.get_nowait() == "connection"


async def test_items_go_to_waiters_in_order() -> None:
    queue: FairAsyncQueue[int] = FairAsyncQueue(3)
    tasks = [asyncio.create_task(queue.wait_for_item(5)) for _ in range(3)]
    await asyncio.sleep(0)

    for item in (10, 20, 30):
        queue.put_nowait(item)

    assert [await task for task in tasks] == [10, 20, 30]
    assert queue.empty()


async def test_item_past_full_queue_goes_to_on_full() -> None:
    queue: FairAsyncQueue[str] = FairAsyncQueue(1)
    spilled: list[str] = []
    queue.on_full = spilled.append
    task = asyncio.create_task(queue.wait_for_item(None))
    await asyncio.sleep(0)

    # The waiter is handed one connection, another fills the queue, and then the waiter is
    # cancelled before it runs.
    queue.put_nowait("handed over")
    queue.put_nowait("returned")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert spilled == ["handed over"]
    assert queue.get_nowait() == "returned"


async def test_pool_closes_connection_past_full_queue(shared_database_url: URL) -> None:
    settings = make_settings(db_pool_size=1, db_max_overflow=1)
    engine = create_engine(shared_database_url, settings)
    try:
        pool = engine.pool
        assert isinstance(pool, FairAsyncQueuePool)
        # Two connection records as the pool's checkout makes them, the second an overflow.
        first = await greenlet_spawn(pool._do_get)
        second = await greenlet_spawn(pool._do_get)
        overflow_before = pool.overflow()
        # The first one's checkin fills the queue, so the second has no room when a cancelled
        # checkout passes it on.
        await greenlet_spawn(pool._do_return_conn, first)
        pool._return_later(second)
        await asyncio.gather(*pool._returning)

        assert pool.overflow() == overflow_before - 1
        assert second.dbapi_connection is None
        assert pool.checkedin() == 1
    finally:
        await engine.dispose()
