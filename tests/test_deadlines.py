"""`time_limit` cancels a block past its deadline, as `asyncio.timeout` does, on a shared timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.ops import deadlines
from app.ops.deadlines import time_limit


async def test_limit_raises_timeout_error() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with time_limit(0.1) as limit:
            await asyncio.sleep(5)
    elapsed = time.monotonic() - started
    assert limit.expired()
    assert 0.09 <= elapsed < 0.6
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_block_done_in_time_is_not_cancelled() -> None:
    async with time_limit(0.1) as limit:
        await asyncio.sleep(0)
    # Past the deadline, when the timer fires: nothing cancels this task any more.
    await asyncio.sleep(0.2)
    assert not limit.expired()


async def test_none_sets_no_limit() -> None:
    async with time_limit(None) as limit:
        await asyncio.sleep(0.1)
    assert not limit.expired()


async def test_other_cancellation_stays_cancellation() -> None:
    entered = asyncio.Event()

    async def limited() -> None:
        async with time_limit(5):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(limited())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_limits_expire_in_turn() -> None:
    async def limited(seconds: float) -> str:
        try:
            async with time_limit(seconds):
                await asyncio.sleep(0.3)
        except TimeoutError:
            return "timed out"
        return "done"

    outcomes = await asyncio.gather(*(limited(0.1 if n % 2 else 5.0) for n in range(20)))
    assert outcomes == ["done", "timed out"] * 10


async def test_earlier_limit_moves_the_timer() -> None:
    async def limited(seconds: float) -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with time_limit(seconds):
                await asyncio.sleep(5)
        return time.monotonic() - started

    late = asyncio.create_task(limited(2.0))
    await asyncio.sleep(0)
    assert await limited(0.1) < 1.0
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late


async def test_limit_shorter_than_a_pass_of_the_loop() -> None:
    with pytest.raises(TimeoutError):
        async with time_limit(0.000001):
            await asyncio.sleep(0.5)


async def test_timer_stops_when_no_limit_is_left() -> None:
    async with time_limit(0.05):
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.1)
    assert deadlines._deadlines[loop]._timer is None
