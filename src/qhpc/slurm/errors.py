"""Typed errors of the Slurm room; each message names what to fix."""

from __future__ import annotations

from qhpc.errors import QhpcError


class SlurmError(QhpcError):
    """Base class of errors raised by ``qhpc.slurm``."""


class SlurmCommandError(SlurmError):
    """A Slurm command (``scontrol``, ``sacct`` …) failed or is not installed."""


class HookSettingsError(SlurmError):
    """The hooks' settings file is missing, unreadable or incomplete."""


class SessionHandoverError(SlurmError):
    """A job asked for a QPU but no session could be opened or handed to it."""
