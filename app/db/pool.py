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
from collections.abc import Callable
from typing import Any, TypeVar, cast

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util.concurrency import await_, greenlet_spawn
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty, Full

_T = TypeVar("_T")


class FairAsyncQueue(AsyncAdaptedQueue[_T]):
    """`AsyncAdaptedQueue` whose waiters get items first come, first served."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        # Checkouts still waiting. One that gives up removes itself.
        self._waiters: deque[asyncio.Future[_T]] = deque()
        # Callback for an item that a cancelled checkout cannot pass on because the queue is full.
        self.on_full: Callable[[_T], None] | None = None

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
                # The caller was cancelled after the hand-over, so the item goes on. Connections
                # returned in the meantime may have filled the queue, and then the item is one
                # too many (an overflow connection).
                try:
                    self.put_nowait(waiter.result())
                except Full:
                    if self.on_full is None:
                        raise
                    self.on_full(waiter.result())
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(FairAsyncQueue[ConnectionPoolEntry], self._pool).on_full = self._return_later
        self._returning: set[asyncio.Task[None]] = set()

    def _return_later(self, record: ConnectionPoolEntry) -> None:
        """Return a connection that a cancelled checkout was handed, as a checkin would.

        The queue calls this outside SQLAlchemy's greenlets, and closing a connection needs one,
        so a task runs SQLAlchemy's checkin. That puts the connection back into the queue if
        there is room by then, and otherwise closes it and lowers the overflow count.
        """
        task = asyncio.get_running_loop().create_task(
            greenlet_spawn(self._do_return_conn, record)
        )
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)
