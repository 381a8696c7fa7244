"""Time limits for requests, enforced by one timer per event loop.

`asyncio.timeout` schedules a timer handle for each use and cancels it on exit. The cancelled
handles stay in the event loop's heap until they are popped or the heap is rebuilt, and each
heap operation compares handles in Python. Here a request adds itself to a dict on entry and
removes itself on exit, and one timer is set for the earliest deadline. Requests that share
one limit, as all callbacks do, enter in deadline order, so a new request rarely moves the
timer. When the timer fires it cancels every task past its deadline and is set for the next.

`time_limit` behaves as `asyncio.timeout` does: the task is cancelled, and the cancellation
leaves the block as `TimeoutError`, unless the task was also cancelled for another reason.
"""

from __future__ import annotations

import asyncio
import weakref
from types import TracebackType


class _Deadlines:
    """The limits in progress on one event loop, and the timer set for the earliest."""

    __slots__ = ("_armed_for", "_limits", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # A dict removes a limit in constant time, whichever ends first.
        self._limits: dict[TimeLimit, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def add(self, limit: TimeLimit) -> None:
        self._limits[limit] = None
        if self._timer is None or limit.when < self._armed_for:
            self._arm(limit.when)

    def remove(self, limit: TimeLimit) -> None:
        self._limits.pop(limit, None)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Cancel the tasks past their deadline, and set the timer for the earliest left."""
        self._timer = None
        # The loop runs a timer up to its clock resolution early; the armed time counts as due.
        now = max(self._loop.time(), self._armed_for)
        expired = [limit for limit in self._limits if limit.when <= now]
        for limit in expired:
            del self._limits[limit]
            limit.expire()
        if self._limits:
            self._arm(min(limit.when for limit in self._limits))


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


class TimeLimit:
    """`async with time_limit(seconds) as limit:`, then `limit.expired()` after a TimeoutError."""

    __slots__ = ("_cancelling", "_deadlines", "_expired", "_seconds", "_task", "when")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._expired = False
        self._deadlines: _Deadlines | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.when = 0.0

    def expired(self) -> bool:
        """Return whether the limit has cancelled the block."""
        return self._expired

    def expire(self) -> None:
        """Mark the limit as expired and cancel its task. The timer calls this."""
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    async def __aenter__(self) -> TimeLimit:
        if self._seconds is None:
            return self
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("time_limit() must be used inside a task")
        loop = task.get_loop()
        deadlines = _deadlines.get(loop)
        if deadlines is None:
            deadlines = _deadlines[loop] = _Deadlines(loop)
        self._task = task
        self._cancelling = task.cancelling()
        self.when = loop.time() + self._seconds
        self._deadlines = deadlines
        deadlines.add(self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._deadlines is not None:
            self._deadlines.remove(self)
        if self._expired and self._task is not None:
            # As in asyncio.timeout: only this limit's own cancellation becomes a TimeoutError.
            if self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
                raise TimeoutError from error


def time_limit(seconds: float | None) -> TimeLimit:
    """Return a context manager that cancels its block after `seconds`; None sets no limit."""
    return TimeLimit(seconds)
