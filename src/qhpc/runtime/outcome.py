"""What goes into a program process and what comes back out of it.

:class:`ProgramContext` is everything a program process needs to reach its QPU
(endpoint + session token, never a vendor credential); :class:`ProgramOutcome`
is the record of one finished program, with timings and resource usage.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class ProgramStatus(enum.StrEnum):
    """How a program ended. Every outcome has exactly one."""

    #: the entry point returned (or called ``sys.exit(0)``)
    COMPLETED = "completed"
    #: the program raised; ``error`` holds the traceback of the user's code
    FAILED = "failed"
    #: the wall-clock timeout passed; the process was stopped (SIGTERM, then SIGKILL)
    TIMEOUT = "timeout"
    #: ``ProgramHandle.cancel()`` (or the pool closing) stopped it
    CANCELLED = "cancelled"
    #: the process ended without reporting an outcome: a signal (segfault, OOM
    #: killer), ``os._exit``, or the runtime killed it for a protocol violation
    KILLED = "killed"
    #: a resource limit stopped it: CPU time, address space or maximum iterations
    LIMIT = "limit"


#: statuses set by the pool rather than by the program itself
STOPPED_BY_POOL = frozenset({ProgramStatus.TIMEOUT, ProgramStatus.CANCELLED})


class ProgramContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a program process needs to build its QPU handle and identify itself.

    The pool sends this to the program process unchanged; ``make_qpu(context)``
    (the pool's ``qpu_factory``) turns it into the object user code calls. The
    session token is the user's own, scoped credential: it is fine for the program
    to see it. ``env`` adds ``QHPC_*`` variables to the program's environment.
    """

    #: where the QPU side listens, e.g. ``ipc:///run/qhpc/dispatch.sock`` or a socket path
    endpoint: str | None = None
    #: token of the session this program's tasks belong to (exported as QHPC_SESSION)
    session_token: str | None = None
    #: resource name (exported as QHPC_RESOURCE)
    resource: str | None = None
    user: str | None = None
    account: str | None = None
    #: extra environment for the program; names must start with ``QHPC_``
    env: dict[str, str] = msgspec.field(default_factory=dict)
    #: anything else the QPU factory needs (msgpack-able)
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Progress(msgspec.Struct, frozen=True):
    """The last ``report(iteration, value, **fields)`` a program made."""

    iteration: int
    value: float | int | str | None = None
    fields: dict[str, Any] = msgspec.field(default_factory=dict)
    #: seconds since the program was submitted
    at_s: float = 0.0

    def describe(self) -> str:
        """A one-line summary for a status display, e.g. ``iteration 17, value -1.137``."""
        parts = [f"iteration {self.iteration}"]
        if self.value is not None:
            parts.append(f"value {self.value}")
        parts.extend(f"{key} {val}" for key, val in self.fields.items())
        return ", ".join(parts)


class ProgramOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The record of one finished program.

    ``timings`` (seconds): ``start_s`` submit → user code running (the program
    process's own clock; ``CLOCK_MONOTONIC`` is system-wide on Linux),
    ``first_reply_s`` submit → the pool received the program's first frame,
    ``run_s`` user code running → outcome sent, ``termination_s`` outcome received
    (or kill sent) → process reaped, ``total_s`` submit → outcome ready.
    ``resource_usage``: ``cpu_s`` (user + system) and ``max_rss_mb`` of the program
    process. Its RSS includes the pages it shares with the template (~100 MiB with
    qiskit preloaded), because the kernel counts mapped pages.
    """

    program_id: str
    status: ProgramStatus
    #: the entry point's return value when msgpack can carry it, else its ``repr``
    return_value: Any = None
    return_is_repr: bool = False
    #: a one-line reason plus the user's traceback; ``None`` when completed
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    #: exit code of the program process; negative = killed by that signal number
    exit_code: int | None = None
    resource_usage: dict[str, float] = msgspec.field(default_factory=dict)
    iterations: int = 0
    progress: Progress | None = None
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status is ProgramStatus.COMPLETED
