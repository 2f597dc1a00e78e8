"""Futures of asynchronous submissions: ``result()`` / ``join()``, ``status()``, ``cancel()``.

A submission runs in its own thread. Cancelling sets an event the thread's
QPUs check between steps (:func:`check_cancelled`): a local QPU stops before
its next task, a remote QPU cancels its broker job and stops waiting, a
variational loop stops before its next evaluation. The future then raises
:class:`~qhpc.program.CancelledError`.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from qhpc.program.errors import CancelledError

T = TypeVar("T")

#: the future whose thread is running (None outside a future's thread)
_CURRENT: contextvars.ContextVar[Future[object] | None] = contextvars.ContextVar(
    "qhpc_program_future", default=None
)


def current_future() -> Future[object] | None:
    return _CURRENT.get()


def check_cancelled() -> None:
    """Raise :class:`CancelledError` if the submission this thread runs was cancelled."""
    future = _CURRENT.get()
    if future is not None and future.cancel_requested:
        raise CancelledError(f"{future.name} was cancelled")


class Future(Generic[T]):
    """The eventual result of ``submit_async``; QLM's ``join()`` is an alias of ``result()``."""

    def __init__(self, work: Callable[[], T], name: str = "submission") -> None:
        self.name = name
        self._work = work
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._state = "queued"
        self._value: T | None = None
        self._error: BaseException | None = None
        self._probe: Callable[[], str] | None = None
        #: broker job ids submitted on behalf of this future (remote QPUs record them)
        self.remote_jobs: list[str] = []
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._run,), name=f"qhpc-{name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        _CURRENT.set(self)  # type: ignore[arg-type]
        with self._lock:
            if self._cancel.is_set():
                self._finish("cancelled", None, CancelledError(f"{self.name} was cancelled"))
                return
            self._state = "running"
        try:
            value = self._work()
        except BaseException as exc:  # handed to the caller of result()
            state = "cancelled" if isinstance(exc, CancelledError) else "failed"
            with self._lock:
                self._finish(state, None, exc)
        else:
            with self._lock:
                self._finish("completed", value, None)

    def _finish(self, state: str, value: T | None, error: BaseException | None) -> None:
        self._state, self._value, self._error = state, value, error
        self._probe = None
        self._done.set()

    # -- hooks for QPUs --------------------------------------------------------------
    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait_cancel(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True if cancellation was requested meanwhile."""
        return self._cancel.wait(timeout)

    def set_probe(self, probe: Callable[[], str] | None) -> None:
        """While set, ``status()`` of a running future asks ``probe`` (e.g. the broker)."""
        self._probe = probe

    # -- the public surface ----------------------------------------------------------
    def result(self, timeout: float | None = None) -> T:
        """Block until done; return the result or raise the submission's error."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.name} is still {self.status()} after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def join(self, timeout: float | None = None) -> T:
        """QLM's name for :meth:`result`."""
        return self.result(timeout)

    def done(self) -> bool:
        return self._done.is_set()

    def status(self) -> str:
        """``queued``, ``running`` (or the broker's word for it), ``completed``, ``failed``,
        ``cancelled``."""
        probe = self._probe
        if self._state == "running" and probe is not None:
            try:
                return probe()
            except Exception:
                return "running"
        return self._state

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._done.wait(timeout)
        return self._error

    def cancel(self) -> bool:
        """Ask the submission to stop; False if it had already finished."""
        with self._lock:
            if self._done.is_set():
                return False
            self._cancel.set()
            return True

    def __repr__(self) -> str:
        return f"<Future {self.name} {self.status()}>"
