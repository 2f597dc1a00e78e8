"""Qiskit's ``BaseSamplerV2`` over any qhpc QPU.

All circuits of all pubs of one ``run()`` call go to the QPU as one
:class:`~qhpc.resources.SamplerTask` per distinct shot count (split only where
the device's ``max_circuits`` demands), so a simulator sees one batch. Results
are read from per-shot memory, so every :class:`~qiskit.primitives.BitArray`
keeps the order in which shots were taken. A QPU that returns counts only (it
raises :class:`~qhpc.resources.UnsupportedPayloadError` for memory, as qx
does) is asked for counts instead, and each circuit's counts are expanded into
shots in ascending bitstring order: the distribution is exact, the shot order
carries no meaning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from qiskit.circuit import QuantumCircuit
from qiskit.primitives import BaseSamplerV2, BitArray, DataBin, PrimitiveResult, SamplerPubResult
from qiskit.primitives.containers.sampler_pub import SamplerPub, SamplerPubLike
from qiskit.primitives.primitive_job import PrimitiveJob

from qhpc.primitives.shared import (
    PrimitiveOptions,
    SeedLike,
    TaskRunner,
    check_fits,
    task_seeds,
    with_context,
)
from qhpc.resources.errors import ResourceError, TaskFailedError, UnsupportedPayloadError
from qhpc.resources.payload import SampledCircuit, SamplerResult, SamplerTask
from qhpc.resources.target import DeviceTarget

#: one batch: its shot count and the (pub index, bound circuit) pairs it carries
_Batch = tuple[int, list[tuple[int, QuantumCircuit]]]


class SamplerV2(BaseSamplerV2):  # type: ignore[misc]
    """Samples pubs on a qhpc QPU; a drop-in for Qiskit's ``StatevectorSampler``.

    Args:
        qpu: where circuits run (any :class:`~qhpc.primitives.TaskRunner`).
        default_shots: shots of pubs that specify none, when ``run`` gets none either.
        seed: an int for repeatable results, a NumPy generator, or None (the QPU's seeding).
        options: :class:`~qhpc.primitives.PrimitiveOptions` or a mapping of them.
    """

    def __init__(
        self,
        qpu: TaskRunner,
        *,
        default_shots: int = 1024,
        seed: SeedLike = None,
        options: PrimitiveOptions | Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(default_shots, bool) or not isinstance(default_shots, int | np.integer):
            raise TypeError(f"default_shots must be an integer, not {default_shots!r}")
        if default_shots <= 0:
            raise ValueError(f"default_shots must be positive, got {default_shots}")
        self._qpu = qpu
        self._default_shots = int(default_shots)
        self._seed = seed
        self._options = PrimitiveOptions.coerce(options)
        self._memory = True  # ask for per-shot memory until the QPU refuses it

    @property
    def qpu(self) -> TaskRunner:
        return self._qpu

    @property
    def default_shots(self) -> int:
        return self._default_shots

    @property
    def seed(self) -> SeedLike:
        return self._seed

    @property
    def options(self) -> PrimitiveOptions:
        return self._options

    def run(
        self, pubs: Iterable[SamplerPubLike], *, shots: int | None = None
    ) -> PrimitiveJob[PrimitiveResult[SamplerPubResult]]:
        """Sample every pub; errors in the pubs are raised here, naming the pub."""
        if shots is None:
            shots = self._default_shots
        coerced: list[SamplerPub] = []
        for index, pub in enumerate(pubs):
            try:
                coerced.append(SamplerPub.coerce(pub, shots))
                values = coerced[-1].parameter_values.as_array()
                if values.size and not np.all(np.isfinite(values)):
                    # refused here, as the estimator does, not when result() is read
                    raise ValueError("parameter values must be finite numbers (nan or inf given)")
            except (ValueError, TypeError) as exc:
                raise with_context(f"pub {index}", exc) from exc
        target = self._qpu.target()
        for index, pub in enumerate(coerced):
            if not pub.circuit.cregs:
                warnings.warn(
                    f"pub {index}: the circuit has no classical registers, so its result "
                    "will be empty. Did you mean to add measurements?",
                    UserWarning,
                    stacklevel=2,
                )
            try:
                check_fits(pub.circuit.num_qubits, pub.shots, target)
            except ResourceError as exc:
                raise with_context(f"pub {index}", exc) from exc
        job = PrimitiveJob(self._run, coerced, target)
        job._submit()
        return job

    # -- execution (in the job's thread) -------------------------------------
    def _run(self, pubs: list[SamplerPub], target: DeviceTarget) -> PrimitiveResult:
        batches = _batches(pubs, target.max_circuits)
        shot_bits: list[list[NDArray[np.bool_]]] = [[] for _ in pubs]
        for (shots, items), seed in zip(batches, task_seeds(self._seed, len(batches)), strict=True):
            circuits = [circuit for _, circuit in items]
            where = f"pub(s) {sorted({i for i, _ in items})}"
            try:
                sampled = self._sample(circuits, shots, seed)
                if len(sampled) != len(circuits):
                    raise TaskFailedError(
                        f"the QPU returned {len(sampled)} results for {len(circuits)} circuits"
                    )
                for (index, circuit), result in zip(items, sampled, strict=True):
                    shot_bits[index].append(_shot_bits(result, circuit.num_clbits, shots))
            except ResourceError as exc:
                raise with_context(where, exc) from exc
        results = [_pub_result(pub, bits) for pub, bits in zip(pubs, shot_bits, strict=True)]
        return PrimitiveResult(results, metadata={"version": 2})

    def _sample(
        self, circuits: list[QuantumCircuit], shots: int, seed: int | None
    ) -> tuple[SampledCircuit, ...]:
        timeout = self._options.timeout
        if self._memory:
            task = SamplerTask(tuple(circuits), shots, memory=True, seed=seed)
            try:
                return _sampler_result(self._qpu.run(task, timeout)).circuits
            except UnsupportedPayloadError:
                pass  # counts only: retry without memory below
        task = SamplerTask(tuple(circuits), shots, memory=False, seed=seed)
        result = _sampler_result(self._qpu.run(task, timeout)).circuits
        self._memory = False
        return result


def _batches(pubs: Sequence[SamplerPub], max_circuits: int) -> list[_Batch]:
    """Bound circuits of all pubs, one batch per shot count, split at ``max_circuits``."""
    by_shots: dict[int, list[tuple[int, QuantumCircuit]]] = {}
    for index, pub in enumerate(pubs):
        if not pub.circuit.cregs or pub.circuit.num_clbits == 0 or pub.parameter_values.size == 0:
            continue  # nothing to read out, or nothing to run
        circuit = _flat_clbits(pub.circuit)
        try:
            bound = pub.parameter_values.bind_all(circuit)
        except Exception as exc:  # Qiskit raises RuntimeError for NaN, ValueError elsewhere
            raise ValueError(f"pub {index}: cannot bind its parameter values: {exc}") from exc
        items = by_shots.setdefault(int(pub.shots), [])
        items.extend((index, c) for c in bound.ravel().tolist())
    limit = max(1, max_circuits)
    return [
        (shots, items[start : start + limit])
        for shots, items in by_shots.items()
        for start in range(0, len(items), limit)
    ]


def _flat_clbits(circuit: QuantumCircuit) -> QuantumCircuit:
    """``circuit`` with one classical register holding every clbit, in clbit order.

    qhpc reads results by clbit index (bit 0 rightmost); simulators build their
    bitstrings from registers. The two agree when the registers partition the
    clbits in order, the usual case, which is returned untouched. Circuits with
    registerless, shared or reordered clbits are rebuilt so they agree too.
    """
    in_registers = [bit for creg in circuit.cregs for bit in creg]
    if in_registers == list(circuit.clbits):
        return circuit
    flat = QuantumCircuit(circuit.num_qubits, circuit.num_clbits, name=circuit.name)
    try:
        return flat.compose(
            circuit, qubits=range(circuit.num_qubits), clbits=range(circuit.num_clbits)
        )
    except Exception:  # e.g. control flow conditioned on a register: run it as written
        return circuit


def _sampler_result(result: object) -> SamplerResult:
    if not isinstance(result, SamplerResult):
        raise TaskFailedError(f"the QPU answered a sampler task with {type(result).__name__}")
    return result


def _shot_bits(result: SampledCircuit, width: int, shots: int) -> NDArray[np.bool_]:
    """Outcomes as a ``(shots, width)`` bool array; column ``j`` is clbit ``j``."""
    if result.memory is not None:
        strings: Sequence[str] = result.memory
    else:
        strings = [key for key in sorted(result.counts) for _ in range(result.counts[key])]
    if len(strings) != shots:
        raise TaskFailedError(f"the QPU returned {len(strings)} shots where {shots} were asked")
    if any(len(s) != width for s in strings):
        strings = [_plain_bits(s, width) for s in strings]
    raw = np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8)
    table: NDArray[np.bool_] = raw.reshape(shots, width) == ord("1")
    return table[:, ::-1]


def _plain_bits(outcome: str, width: int) -> str:
    """One outcome as ``width`` binary digits (accepts hex and register-spaced forms)."""
    bits = format(int(outcome, 16), "b") if outcome.startswith("0x") else outcome.replace(" ", "")
    if len(bits) > width or set(bits) - {"0", "1"}:
        raise TaskFailedError(f"the QPU returned outcome {outcome!r} for {width} classical bits")
    return bits.zfill(width)


def _pub_result(pub: SamplerPub, shot_bits: list[NDArray[np.bool_]]) -> SamplerPubResult:
    circuit = pub.circuit
    shape = tuple(pub.shape)
    if shot_bits:
        table = np.stack(shot_bits).reshape((*shape, pub.shots, circuit.num_clbits))
    else:
        table = np.zeros((*shape, pub.shots, circuit.num_clbits), dtype=bool)
    arrays = {
        creg.name: _bit_array(table[..., [circuit.find_bit(bit).index for bit in creg]])
        for creg in circuit.cregs
    }
    return SamplerPubResult(
        DataBin(**arrays, shape=shape),
        metadata={"shots": pub.shots, "circuit_metadata": circuit.metadata},
    )


def _bit_array(little_endian: NDArray[np.bool_]) -> BitArray:
    """A BitArray from bools whose last axis runs from the register's bit 0 upwards."""
    num_bits = little_endian.shape[-1]
    big_endian = little_endian[..., ::-1]
    pad = -num_bits % 8
    if pad:
        zeros = np.zeros((*big_endian.shape[:-1], pad), dtype=bool)
        big_endian = np.concatenate([zeros, big_endian], axis=-1)
    return BitArray(np.packbits(big_endian, axis=-1), num_bits)
