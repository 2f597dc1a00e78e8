"""Errors of :mod:`qhpc.program`; each names the job, plugin or stack at fault."""

from __future__ import annotations

from qhpc.errors import QhpcError


class ProgramError(QhpcError):
    """Base class of every error raised by the programming model."""


class JobError(ProgramError, ValueError):
    """A job is malformed or cannot run where it was sent (the message names the job)."""


class PluginError(ProgramError):
    """A plugin raised; the message names the plugin and the batch's jobs."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(message)


class StackError(ProgramError):
    """A stack is built wrongly (no QPU at the bottom, a QPU in the middle …)."""


class CancelledError(ProgramError):
    """The submission was cancelled through its future."""


class RemoteError(ProgramError):
    """The broker refused or failed a submission (the message names the broker job)."""


class PluginSpecError(StackError, ValueError):
    """A plugin cannot travel to a broker or be rebuilt there: unregistered, unknown name,
    bad params (the message names the plugin)."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(message)
