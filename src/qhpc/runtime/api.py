"""What user code sees of the runtime, inside a program process.

``current_program()`` (or an entry-point parameter named ``report``, ``qpu``/``qi``,
``context`` or ``runtime``) gives the program its context, its QPU handle and
``report(iteration, value, **fields)``; the exceptions below are how the runtime
stops it. They derive from ``BaseException`` so that ``except Exception`` in user
code does not swallow them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from qhpc.runtime.errors import RuntimeBaseError
from qhpc.runtime.hooks import QpuFactory
from qhpc.runtime.outcome import ProgramContext
from qhpc.runtime.wire import ProgressReport, StartProgram, send_frame


class ProgramStopped(BaseException):
    """Raised in user code when the pool stops the program (SIGTERM: timeout or cancel)."""


class CpuLimitExceeded(BaseException):
    """Raised in user code at the CPU-time soft limit (SIGXCPU)."""


class IterationLimitReached(BaseException):
    """Raised by ``report()`` when the iteration number passes ``max_iterations``."""


_current: ProgramRuntime | None = None


def current_program() -> ProgramRuntime:
    """The running program's runtime (only inside a program process)."""
    if _current is None:
        raise RuntimeBaseError("not inside a qhpc runtime program process")
    return _current


def plain_value(value: Any) -> float | int | str | None:
    """A progress value msgpack carries as is: numbers, strings, else their ``repr``."""
    if value is None or isinstance(value, str | int | float):
        return int(value) if isinstance(value, bool) else value
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        converted = item()
        if isinstance(converted, int | float | str):
            return int(converted) if isinstance(converted, bool) else converted
    return repr(value)


class ProgramRuntime:
    """What user code sees of the runtime: its context, its QPU, progress reports."""

    def __init__(self, control: socket.socket, start: StartProgram, make_qpu: QpuFactory):
        self.context: ProgramContext = start.context
        self.program_id = start.program_id
        self.max_iterations = start.max_iterations
        self.iteration = 0
        self._control = control
        self._make_qpu = make_qpu
        self._qpu: object | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def qpu(self) -> object:
        """The QPU handle built by the pool's ``qpu_factory`` from this context (cached)."""
        if self._qpu is None:
            self._qpu = self._make_qpu(self.context)
        return self._qpu

    def report(self, iteration: int, value: Any = None, **fields: Any) -> None:
        """Publish progress (``iteration 17, value -1.137``) to the broker.

        Raises :class:`IterationLimitReached` when ``iteration`` passes the program's
        ``max_iterations``: the program stops there with status ``limit``.
        """
        if os.getpid() != self._pid:
            return  # a copy in a process the program forked: the channel is not its own
        if self.max_iterations is not None and iteration > self.max_iterations:
            raise IterationLimitReached(
                f"maximum iterations ({self.max_iterations}) reached: report({iteration})"
            )
        self.iteration = iteration
        frame = ProgressReport(
            int(iteration), plain_value(value), {k: plain_value(v) for k, v in fields.items()},
            time.monotonic(),
        )  # fmt: skip
        with self._lock:
            send_frame(self._control, frame)


def activate(runtime: ProgramRuntime) -> None:
    """Make ``runtime`` what :func:`current_program` returns (once, at the start)."""
    global _current
    _current = runtime
