"""Checkpoints of a job chain: what one step hands to the next.

A chain's directory holds ``checkpoint-001.json`` … ``checkpoint-NNN.json``,
one per finished step; step *i* restores checkpoint *i-1* (nothing for the
first step) and saves checkpoint *i*. A program run as a chain step finds its
place in the environment (``QHPC_CHAIN_DIR``, ``QHPC_CHAIN_STEP``,
``QHPC_CHAIN_STEPS``), so a plain script needs only::

    from qhpc.slurm import checkpoint
    state = checkpoint.load() or {"theta": [0.1] * 4}
    ...                                   # one quantum block
    checkpoint.save(state)

States are JSON objects; numpy arrays and numpy scalars are stored as lists and
numbers. A save is atomic (written to a temporary file, flushed to disk, then
renamed), so a step killed half-way never leaves a torn checkpoint behind.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qhpc.slurm.errors import SlurmError

CHAIN_DIR_ENV = "QHPC_CHAIN_DIR"
STEP_ENV = "QHPC_CHAIN_STEP"
STEPS_ENV = "QHPC_CHAIN_STEPS"
CHECKPOINT_FORMAT = 1


class ChainError(SlurmError):
    """A job chain cannot be built, submitted, run or inspected as asked."""


class CheckpointError(ChainError):
    """A checkpoint is missing, unreadable or not what a chain step expects."""


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where step ``step`` of the chain in ``directory`` saves its checkpoint."""
    return Path(directory) / f"checkpoint-{step:03d}.json"


def _plain(value: Any) -> Any:
    """JSON's ``default``: numpy arrays and scalars as lists and numbers."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"a {type(value).__name__} cannot be stored in a checkpoint")


@dataclass(frozen=True)
class StepContext:
    """Step ``step`` of ``steps`` of the chain whose files live in ``directory``."""

    directory: Path
    step: int
    steps: int

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ChainError(f"a chain has at least one step, not {self.steps}")
        if not 1 <= self.step <= self.steps:
            raise ChainError(f"step {self.step} is outside the chain's steps 1..{self.steps}")

    @classmethod
    def from_env(cls) -> StepContext:
        """The step this process runs, from ``QHPC_CHAIN_DIR/STEP/STEPS``."""
        names = (CHAIN_DIR_ENV, STEP_ENV, STEPS_ENV)
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            raise ChainError(
                f"not running as a chain step: {', '.join(missing)} not set "
                "(qhpc's chain runner sets them; see `qhpc slurm chain submit`)"
            )
        try:
            step, steps = int(os.environ[STEP_ENV]), int(os.environ[STEPS_ENV])
        except ValueError as exc:
            raise ChainError(
                f"{STEP_ENV}={os.environ[STEP_ENV]!r} and {STEPS_ENV}={os.environ[STEPS_ENV]!r} "
                "must be whole numbers"
            ) from exc
        return cls(Path(os.environ[CHAIN_DIR_ENV]), step, steps)

    def environment(self) -> dict[str, str]:
        """The variables that tell a program which step it runs."""
        return {
            CHAIN_DIR_ENV: str(self.directory),
            STEP_ENV: str(self.step),
            STEPS_ENV: str(self.steps),
        }

    @property
    def first(self) -> bool:
        return self.step == 1

    @property
    def last(self) -> bool:
        return self.step == self.steps

    @property
    def saved(self) -> bool:
        """Whether this step has saved its checkpoint."""
        return checkpoint_path(self.directory, self.step).exists()

    def load(self) -> dict[str, Any] | None:
        """The state the previous step saved; None for the first step."""
        if self.first:
            return None
        return read_checkpoint(self.directory, self.step - 1)

    def save(self, state: dict[str, Any]) -> Path:
        """Store this step's state for the next step (atomically); returns the file."""
        return write_checkpoint(self.directory, self.step, state)


def read_checkpoint(directory: Path, step: int) -> dict[str, Any]:
    """The state step ``step`` saved in ``directory``."""
    path = checkpoint_path(directory, step)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"step {step} left no checkpoint at {path}: it failed or did not call save()"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"checkpoint {path} is not JSON: {exc.msg} at line {exc.lineno}"
        ) from exc
    if not isinstance(document, dict) or not isinstance(document.get("state"), dict):
        raise CheckpointError(f"checkpoint {path} holds no state object: not written by qhpc")
    if document.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {document.get('format')!r}; this qhpc reads "
            f"format {CHECKPOINT_FORMAT}"
        )
    state: dict[str, Any] = document["state"]
    return state


def write_checkpoint(directory: Path, step: int, state: dict[str, Any]) -> Path:
    """Write step ``step``'s state atomically (temporary file, fsync, rename)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"a checkpoint state is a dict, not a {type(state).__name__}")
    document = {"format": CHECKPOINT_FORMAT, "step": step, "saved_at": time.time(), "state": state}
    try:
        text = json.dumps(document, default=_plain, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"step {step}'s state cannot be stored: {exc}") from exc
    path = checkpoint_path(directory, step)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror}") from exc
    return path


def load() -> dict[str, Any] | None:
    """The previous step's state (None in the first step); for programs run as steps."""
    return StepContext.from_env().load()


def save(state: dict[str, Any]) -> Path:
    """Save this step's state for the next step; for programs run as steps."""
    return StepContext.from_env().save(state)
