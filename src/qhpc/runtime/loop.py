"""The pool's I/O thread: one epoll over every control socket and pipe, plus timers.

One thread for all programs keeps the broker's thread count flat however many
programs run. Readers may be added from any thread (``epoll_ctl`` is thread-safe
and the handler is stored before the descriptor is registered, so no event finds
it missing); they are removed by the loop thread or after it stopped. Handlers run
on this thread and must not block.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class Timer:
    """A scheduled callback; ``cancel()`` makes it a no-op."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, name: str) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._soon: deque[Callable[[], None]] = deque()
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._handlers[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        with self._lock:
            earliest = not self._timers or when < self._timers[0][0]
            heapq.heappush(self._timers, (when, next(self._order), timer))
        if earliest and not self.in_loop:
            self._wake()
        return timer

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._soon.append(callback)
        if not self.in_loop:
            self._wake()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake()
        if not self.in_loop:
            self._thread.join(timeout)
        os.close(self._wake_w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe wakes the loop as well; a closed one means it stopped

    def _next_timeout(self) -> float:
        with self._lock:
            if not self._timers:
                return 1.0
            return max(0.0, min(1.0, self._timers[0][0] - time.monotonic()))

    def _due_timers(self) -> list[Timer]:
        now, due = time.monotonic(), []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        return due

    def _call(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # one program's bad state must not stop the others' I/O
            log.exception("runtime pool: handler %r failed", callback)

    def _run(self) -> None:
        while not self._stopping:
            try:
                events = self._epoll.poll(self._next_timeout())
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                handler = self._handlers.get(fd)
                if handler is not None:
                    self._call(handler)
            while self._soon:
                self._call(self._soon.popleft())
            for timer in self._due_timers():
                if not timer.cancelled:
                    self._call(timer.callback)
        self._epoll.close()
        os.close(self._wake_r)
