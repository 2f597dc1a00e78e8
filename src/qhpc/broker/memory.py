"""Give memory back to the system once a burst of work has drained.

A burst of REST clients (``bench/bench_rest_load.py``: 64 of them) grows the broker's
heap by tens of megabytes — request objects, payloads, results — and glibc's
allocator keeps the freed pages for reuse, so the broker's resident size stays at
its peak long after the queue has drained (measured: 155 → 218 MB, not returned).
An operator then cannot tell a leak from a high-water mark. ``malloc_trim(0)``
hands the free pages at the top of every arena and the free runs inside them back
to the kernel; it costs a few milliseconds, so :class:`MemoryReturn` calls it only
when the broker is idle and has grown by 5 % since the last trim, at most once per
``min_interval``.
Python's own small-object arenas are returned by the interpreter when they empty;
this covers what sits below them in malloc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)

#: least time between two trims (seconds): a trim costs a few ms of the caller's thread
MIN_INTERVAL = 30.0
#: growth of the resident size since the last trim that is worth a trim
GROWTH = 0.05
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def release_free_memory() -> bool:
    """Return malloc's free pages to the kernel; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int:
    """This process's resident set size (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


class MemoryReturn:
    """Trims when the broker is idle and has grown since the last trim (see the module
    docstring), at most once per ``min_interval``.

    ``observe(busy)`` is called periodically (the broker's reaper does, every second)
    with whether any work is queued or running. Growth, not a record of past work, says
    whether there is anything to give back: a burst of REST reads leaves no trace in
    the queues but grows the heap all the same.
    """

    def __init__(
        self,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        release: Callable[[], bool] = release_free_memory,
        resident: Callable[[], int] = resident_bytes,
    ) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self.release = release
        self.resident = resident
        #: the resident size after the last trim (or at the first look)
        self.baseline: int | None = None
        self._last = -float("inf")
        self.trims = 0

    def observe(self, busy: bool) -> bool:
        """True if this call trimmed."""
        if busy:
            return False
        size = self.resident()
        if self.baseline is None:
            self.baseline = size
            return False
        now = self.clock()
        if size <= self.baseline * (1 + GROWTH) or now - self._last < self.min_interval:
            return False
        self._last = now
        started = time.perf_counter()
        if not self.release():
            return False
        self.trims += 1
        self.baseline = min(size, self.resident() or size)
        log.debug("returned free memory to the system: %.0f → %.0f MB (%.1f ms)",
                  size / 2**20, self.baseline / 2**20,
                  (time.perf_counter() - started) * 1e3)  # fmt: skip
        return True
