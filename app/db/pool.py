"""A connection pool that gives returned connections to waiting requests in arrival order.

SQLAlchemy's `AsyncAdaptedQueuePool` keeps idle connections in an `asyncio.Queue`. When a
connection comes back, the queue wakes its longest waiter. But any request that checks out
before that waiter runs takes the connection, because SQLAlchemy tries `get_nowait()` first,
and the woken waiter queues again at the back (CPython 3.11's `asyncio.Queue.get`). Under
sustained load a few requests lose that race again and again until the pool timeout. In one
15-second run of `bench/run.sh --workers 1` on 2 cores (32 client connections, 15 pooled
database connections), 3 profile fetches waited 2 s and got 503 while the median took 33 ms.

`FairAsyncQueuePool` hands a returned connection straight to the longest waiter, and a
checkout waits whenever other checkouts are already waiting.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util.concurrency import await_
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

_T = TypeVar("_T")


class FairAsyncQueue(AsyncAdaptedQueue[_T]):
    """`AsyncAdaptedQueue` whose waiters get items first come, first served."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        # Checkouts still waiting. One that gives up removes itself.
        self._waiters: deque[asyncio.Future[_T]] = deque()

    def put_nowait(self, item: _T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        super().put_nowait(item)

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        # `put_nowait` hands each item to a waiter while there is one, so an item in the queue
        # means that no checkout waits, and a new checkout takes it without jumping the queue.
        if not self.empty():
            return self.get_nowait()
        if not block:
            raise Empty()
        result: _T = await_(self.wait_for_item(timeout))
        return result

    async def wait_for_item(self, seconds: float | None) -> _T:
        """Wait up to `seconds` (None: without limit) for the item that `put_nowait` hands over.

        Raises:
            Empty: if no item arrived in time.
        """
        waiter: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                if isinstance(error, TimeoutError):
                    # The item arrived just as the time ran out, so the checkout succeeded.
                    return waiter.result()
                # The caller was cancelled after the hand-over, so the item goes on.
                # NOTE: if connections returned in the meantime filled the queue, this raises Full
                # and leaves this connection open. Only an overflow connection can hit that.
                self.put_nowait(waiter.result())
            else:
                waiter.cancel()
                # A put_nowait may already have dropped the cancelled waiter.
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                raise Empty() from None
            raise


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """`AsyncAdaptedQueuePool` that serves waiting checkouts in arrival order."""

    _queue_class: Any = FairAsyncQueue
