"""What the primitives need from a quantum processor, and helpers both primitives share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeAlias, runtime_checkable

import numpy as np

from qhpc.resources.errors import PayloadError, ResourceError, TaskFailedError
from qhpc.resources.payload import Payload, TaskResult
from qhpc.resources.target import DeviceTarget

#: a fixed seed, a NumPy generator to draw task seeds from, or None (the QPU's own seeding)
SeedLike: TypeAlias = int | np.random.Generator | None


@runtime_checkable
class TaskRunner(Protocol):
    """Anything the primitives can run on (a QPU, in the broad sense): two methods, both
    synchronous. Not named ``QPU``: that is the hybrid program's handle
    (:class:`qhpc.session.QPU`), which runs circuits, not tasks.

    ``run`` executes one :class:`~qhpc.resources.SamplerTask` or
    :class:`~qhpc.resources.EstimatorTask` to completion and returns its
    :class:`~qhpc.resources.SamplerResult` / :class:`~qhpc.resources.EstimatorResult`,
    raising a :class:`~qhpc.resources.ResourceError` if it cannot (``timeout`` in
    seconds; None waits for ever). ``target`` describes the device: its width and
    its shot and circuit limits are checked before anything is submitted.

    Every :class:`~qhpc.resources.QuantumResource` satisfies this protocol.
    """

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult: ...

    def target(self) -> DeviceTarget: ...


@dataclass(frozen=True)
class PrimitiveOptions:
    """Options of :class:`SamplerV2` and :class:`EstimatorV2`.

    ``timeout``: seconds each task may take on the QPU before the job fails
    (None: no limit).
    """

    timeout: float | None = None

    @classmethod
    def coerce(cls, options: PrimitiveOptions | Mapping[str, Any] | None) -> PrimitiveOptions:
        if options is None:
            return cls()
        if isinstance(options, PrimitiveOptions):
            return options
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known options: {sorted(known)}")
        timeout = options.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return cls(timeout=None if timeout is None else float(timeout))


def task_seeds(seed: SeedLike, count: int) -> list[int | None]:
    """Seeds for the ``count`` tasks of one ``run()`` call.

    An int gives the same seeds on every call (results repeat, like Qiskit's
    reference primitives with an int seed) while keeping the tasks of one call
    independent; a generator gives fresh seeds each call; None leaves seeding
    to the QPU.
    """
    if seed is None:
        return [None] * count
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]


def with_context(where: str, exc: Exception) -> Exception:
    """A copy of ``exc`` whose message starts with ``where`` (e.g. ``"pub 2"``).

    Argument errors and qhpc errors keep their type; a qhpc error that cannot be
    rebuilt from a message alone becomes :class:`TaskFailedError`.
    """
    message = f"{where}: {exc}"
    if type(exc) in (ValueError, TypeError):
        return type(exc)(message)
    if isinstance(exc, ResourceError):
        if type(exc).__init__ is Exception.__init__:
            return type(exc)(message)
        return TaskFailedError(message)
    return ValueError(message)


def check_fits(num_qubits: int, shots: int | None, target: DeviceTarget) -> None:
    """Raise a :class:`PayloadError` if a pub cannot run on ``target``."""
    if num_qubits > target.num_qubits:
        raise PayloadError(
            f"the circuit needs {num_qubits} qubits but {target.name!r} has {target.num_qubits}"
        )
    if shots is not None and shots > target.max_shots:
        raise PayloadError(
            f"{shots} shots exceed the maximum of {target.max_shots} on {target.name!r}"
        )
