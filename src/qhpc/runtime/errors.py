"""Typed errors of the runtime room; each message names what to fix.

A user program that fails is *not* an error of the pool: it becomes a
:class:`~qhpc.runtime.outcome.ProgramOutcome` with a status and a message. These
exceptions are for the caller of the pool (the broker): a closed pool, a template
process that cannot start, a wait that ran out, a malformed frame.
"""

from __future__ import annotations

from qhpc.errors import QhpcError
from qhpc.session import QpuNotConfiguredError as QpuNotConfiguredError  # both rooms raise it


class RuntimeBaseError(QhpcError):
    """Base class of errors raised by ``qhpc.runtime``."""


class PoolClosedError(RuntimeBaseError):
    """The pool was closed; create a new :class:`~qhpc.runtime.RuntimePool`."""


class TemplateStartError(RuntimeBaseError):
    """The template process (zygote) could not start or import its preload modules."""


class NoSpareError(RuntimeBaseError):
    """No program process became ready in time (template still importing, or fork failing)."""


class WaitTimeout(RuntimeBaseError, TimeoutError):
    """``ProgramHandle.wait(timeout)`` returned before the program finished (it keeps running)."""


class WireError(RuntimeBaseError):
    """A frame on a control channel is malformed, oversized or of another wire version."""


class ProgramArgumentsError(RuntimeBaseError, ValueError):
    """A program's ``args``, ``context`` or source cannot be sent to a program process."""
