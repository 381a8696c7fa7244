"""Thread priority for CPU-heavy work that must not delay the event loop."""

from __future__ import annotations

import os
import threading


def lower_thread_priority(nice: int) -> None:
    """Raise the niceness of the calling thread by `nice` (a thread-pool initializer).

    On Linux each thread has its own niceness, so hashing threads can run behind the event loop
    of the same process. Elsewhere, or when the call is refused, the thread keeps its priority.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        thread_id = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(current + nice, 19))
    except OSError:
        return
