"""A pool of asyncpg connections for the statements that skip SQLAlchemy.

RemoteUserFetch and RemoteLogin run one or two statements each, straight on an asyncpg
connection, and each statement is its own implicit transaction. A checkout through SQLAlchemy's
pool costs them more CPU than the statement: SQLAlchemy runs the checkout and the return in a
greenlet, fires its pool events and keeps a record per connection. In one run of
`bench/run.sh --workers 1 --scenarios profile,floor`, serving the profile fetch from a plain
queue of asyncpg connections raised its rate from 2,398 to 3,480 per second.

`DriverPool` keeps what those statements need and nothing more:

- at most `size` connections, opened when a checkout finds none idle;
- a returned connection goes straight to the checkout that has waited longest, and a new
  checkout waits behind the ones already waiting (see `app.db.pool` for why order matters);
- a checkout waits at most `timeout` seconds and then raises `DriverPoolTimeoutError`, which
  `is_database_unavailable` counts as an outage (503);
- a connection that the server has closed, or one older than `recycle` seconds, is replaced
  at checkout, at no round-trip cost;
- a connection whose statement was cancelled, or failed in a way that may have broken it
  (`leaves_connection_unusable`), is closed instead of returned;
- a connection older than `recycle` seconds is also closed when it comes back.

No statement leaves a transaction open, so a returned connection needs no reset round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from app.db.errors import leaves_connection_unusable

logger = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[Any]]


class DriverPoolTimeoutError(TimeoutError):
    """No connection became free within the pool's timeout."""


class DriverPoolClosedError(ConnectionError):
    """The pool was closed, because the service is stopping.

    A `ConnectionError`, so a callback that races the shutdown gets 503 and is retried, as
    with any unreachable database (`is_database_unavailable`).
    """


class DriverPool:
    """Fair pool of asyncpg connections, checked out with `connection()`."""

    def __init__(self, connect: Connect, *, size: int, timeout: float, recycle: float) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self._connect = connect
        self.size = size
        self._timeout = timeout
        # A negative recycle age keeps connections for as long as they work.
        self._recycle = recycle if recycle >= 0 else float("inf")
        self._idle: deque[Any] = deque()
        # Checkouts waiting, oldest first, with their deadlines. Each gets a connection, or
        # None: "open your own". Every checkout waits as long, so the deadlines are in order
        # too, and one timer, set for the oldest deadline, serves them all.
        self._waiters: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._opened_at: dict[Any, float] = {}
        # Connections open or being opened: the count that `size` bounds.
        self._open = 0
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    def connection(self) -> Checkout:
        """Check out a connection for statements that run outside any transaction block."""
        return Checkout(self)

    def stats(self) -> dict[str, int]:
        """Return the pool's numbers: size, open, in use, idle and waiting checkouts."""
        idle = len(self._idle)
        return {
            "size": self.size,
            "open": self._open,
            "in_use": self._open - idle,
            "idle": idle,
            "waiting": sum(1 for _, waiter in self._waiters if not waiter.done()),
        }

    async def acquire(self) -> Any:
        """Return a connection, waiting in arrival order when all `size` are in use.

        Raises:
            DriverPoolTimeoutError: if none became free within the timeout.
            DriverPoolClosedError: if the pool is closed.
        """
        if self._closed:
            raise DriverPoolClosedError("the database pool is closed")
        if self._waiters:
            connection = await self._wait()
        elif self._idle:
            # Oldest first, as SQLAlchemy's queue pool does: every connection stays in use,
            # so one the server closed is found at its next turn.
            connection = self._idle.popleft()
        elif self._open < self.size:
            self._open += 1
            connection = None
        else:
            connection = await self._wait()
        if connection is not None and self._is_stale(connection):
            # The server closed it while it sat idle (a restart, `idle_session_timeout`), or it
            # outlived the recycle age, which a firewall's idle timeout may have ended silently.
            # Its slot stays with this checkout, which opens the replacement without queueing
            # again.
            self._opened_at.pop(connection, None)
            self._close_in_background(connection, broken=False)
            connection = None
        if connection is None:
            # This checkout has a slot of `size` reserved, and opens the connection for it.
            return await self._open_connection()
        return connection

    def release(self, connection: Any, *, broken: bool = False) -> None:
        """Take back a connection: close it when `broken` or stale, else pass it to a checkout."""
        if broken or self._closed or self._is_stale(connection):
            self._forget(connection)
            self._close_in_background(connection, broken=broken)
            return
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _is_stale(self, connection: Any) -> bool:
        """Return whether `connection` is closed or older than the recycle age."""
        return bool(
            connection.is_closed()
            or time.monotonic() - self._opened_at.get(connection, 0.0) > self._recycle
        )

    async def close(self) -> None:
        """Close every idle connection and reject new checkouts. Busy ones close when returned."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(DriverPoolClosedError("the database pool is closed"))
        while self._idle:
            connection = self._idle.pop()
            self._forget(connection)
            self._close_in_background(connection, broken=False)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _wait(self) -> Any:
        """Wait for a returned connection, or None when a slot to open one became free."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        entry = (loop.time() + self._timeout, waiter)
        self._waiters.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry[0], self._expire_waiters)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # The caller was cancelled after the hand-over, so the hand-over goes on.
                self._pass_on(waiter.result())
            else:
                waiter.cancel()
                # A hand-over may already have removed it. Otherwise it would block later checkouts.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            raise

    def _expire_waiters(self) -> None:
        """Fail the checkouts whose deadline has passed; set the timer for the next one."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiters and self._waiters[0][0] <= now:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    DriverPoolTimeoutError(
                        f"no database connection became free within {self._timeout:g} s"
                    )
                )
        if self._waiters:
            self._timer = loop.call_at(self._waiters[0][0], self._expire_waiters)

    async def _open_connection(self) -> Any:
        try:
            connection = await self._connect()
        except BaseException:
            self._open -= 1
            self._pass_slot()
            raise
        if self._closed:
            self._open -= 1
            self._close_in_background(connection, broken=False)
            raise DriverPoolClosedError("the database pool is closed")
        self._opened_at[connection] = time.monotonic()
        return connection

    def _pass_on(self, connection: Any) -> None:
        if connection is None:
            self._open -= 1
            self._pass_slot()
        else:
            self.release(connection)

    def _forget(self, connection: Any) -> None:
        """Stop counting `connection`, whose slot goes to the longest waiter, if any."""
        self._opened_at.pop(connection, None)
        self._open -= 1
        self._pass_slot()

    def _pass_slot(self) -> None:
        """Let the longest waiter open a connection in a slot that just became free."""
        if self._closed or self._open >= self.size:
            return
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    def _close_in_background(self, connection: Any, *, broken: bool) -> None:
        if broken or connection.is_closed():
            connection.terminate()
            return
        task = asyncio.get_running_loop().create_task(_close_quietly(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class Checkout:
    """`async with pool.connection() as connection`: one checkout and its return."""

    __slots__ = ("_connection", "_pool")

    def __init__(self, pool: DriverPool) -> None:
        self._pool = pool
        self._connection: Any = None

    async def __aenter__(self) -> Any:
        self._connection = await self._pool.acquire()
        return self._connection

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        # A cancelled statement may leave the connection mid-protocol, so it goes too.
        broken = error is not None and (
            not isinstance(error, Exception) or leaves_connection_unusable(error)
        )
        self._pool.release(self._connection, broken=broken)


async def _close_quietly(connection: Any) -> None:
    try:
        await connection.close(timeout=5)
    except Exception as error:
        # The connection is going away in any case, so terminate drops what the close left.
        logger.warning("db.driver_connection_close_failed error=%s", type(error).__name__)
        connection.terminate()
