"""Task payloads and their results.

Two payloads cover what QRMI's primitives carry: a :class:`SamplerTask`
(circuits + shots → counts per circuit) and an :class:`EstimatorTask`
(circuit + Pauli-sum observables + parameter sets → expectation values with
standard errors). Circuits are held in one canonical form, Qiskit's
``QuantumCircuit``; :mod:`qhpc.resources.circuits` reads every accepted format
into it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeAlias

from qiskit.circuit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qhpc.resources.errors import PayloadError
from qhpc.resources.target import DeviceTarget

ObservableLike: TypeAlias = (
    SparsePauliOp | str | Mapping[str, complex | float] | Sequence[tuple[str, complex | float]]
)


@dataclass(frozen=True)
class SamplerTask:
    """Run each circuit ``shots`` times and count the measured bitstrings."""

    circuits: tuple[QuantumCircuit, ...]
    shots: int
    memory: bool = False
    seed: int | None = None

    kind = "sampler"

    def __post_init__(self) -> None:
        if isinstance(self.circuits, QuantumCircuit):
            object.__setattr__(self, "circuits", (self.circuits,))
        else:
            object.__setattr__(self, "circuits", tuple(self.circuits))
        if isinstance(self.shots, bool) or not isinstance(self.shots, int):
            raise PayloadError(f"shots must be an integer, not {self.shots!r}")
        if self.shots <= 0:
            raise PayloadError(f"shots must be positive, got {self.shots}")
        if not self.circuits:
            raise PayloadError("a sampler task needs at least one circuit")
        for index, circuit in enumerate(self.circuits):
            if not isinstance(circuit, QuantumCircuit):
                raise PayloadError(f"circuit {index} is a {type(circuit).__name__}, not a circuit")
            if circuit.num_clbits == 0:
                raise PayloadError(
                    f"circuit {index} ({circuit.name!r}) measures nothing; "
                    "add measurements (e.g. circuit.measure_all())"
                )
            if circuit.num_parameters:
                raise PayloadError(
                    f"circuit {index} ({circuit.name!r}) has unbound parameters "
                    f"{[p.name for p in circuit.parameters]}; bind them before sampling"
                )

    @cached_property
    def num_qubits(self) -> int:
        # Cached: a session that repeats a payload gets the same (frozen) object back
        # from the broker's decoder, and admission asks this of every task.
        return max(int(c.num_qubits) for c in self.circuits)

    @property
    def total_shots(self) -> int:
        return self.shots * len(self.circuits)


@dataclass(frozen=True)
class EstimatorTask:
    """Expectation values of Pauli-sum observables on a (parameterised) circuit.

    ``parameter_values`` holds one row per parameter set, ordered like
    ``circuit.parameters``. ``shots=None`` asks for exact values where the
    resource can compute them, and the resource's default shots elsewhere.
    """

    circuit: QuantumCircuit
    observables: tuple[SparsePauliOp, ...]
    parameter_values: tuple[tuple[float, ...], ...] = ((),)
    shots: int | None = None
    seed: int | None = None

    kind = "estimator"

    @classmethod
    def create(
        cls,
        circuit: QuantumCircuit,
        observables: ObservableLike | Iterable[ObservableLike],
        parameter_values: Sequence[float] | Sequence[Sequence[float]] | None = None,
        shots: int | None = None,
        seed: int | None = None,
    ) -> EstimatorTask:
        """Build a task from friendly inputs: labels, dicts, lists of terms, 1-D or 2-D values."""
        return cls(
            circuit=circuit,
            observables=_coerce_observables(observables),
            parameter_values=_coerce_parameter_values(parameter_values),
            shots=shots,
            seed=seed,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.circuit, QuantumCircuit):
            raise PayloadError(f"the estimator circuit is a {type(self.circuit).__name__}")
        object.__setattr__(self, "observables", tuple(self.observables))
        object.__setattr__(
            self, "parameter_values", tuple(tuple(map(float, r)) for r in self.parameter_values)
        )
        if not self.observables:
            raise PayloadError("an estimator task needs at least one observable")
        if self.shots is not None and (isinstance(self.shots, bool) or self.shots <= 0):
            raise PayloadError(f"shots must be positive or None (exact), got {self.shots}")
        width = self.circuit.num_qubits
        for index, obs in enumerate(self.observables):
            if not isinstance(obs, SparsePauliOp):
                raise PayloadError(f"observable {index} is not a SparsePauliOp; use create()")
            if obs.num_qubits != width:
                raise PayloadError(
                    f"observable {index} acts on {obs.num_qubits} qubits but the circuit "
                    f"has {width}"
                )
        expected = self.circuit.num_parameters
        if not self.parameter_values:
            raise PayloadError("parameter_values needs at least one row (use ((),) for none)")
        for row_index, row in enumerate(self.parameter_values):
            if len(row) != expected:
                raise PayloadError(
                    f"parameter set {row_index} has {len(row)} values but the circuit has "
                    f"{expected} parameters {[p.name for p in self.circuit.parameters]}"
                )
            if not all(math.isfinite(v) for v in row):
                raise PayloadError(f"parameter set {row_index} contains a non-finite value")

    @property
    def num_qubits(self) -> int:
        return int(self.circuit.num_qubits)

    def bound_circuits(self) -> list[QuantumCircuit]:
        """One circuit per parameter set, without final measurements."""
        base = self.circuit.remove_final_measurements(inplace=False)
        if not self.circuit.num_parameters:
            return [base for _ in self.parameter_values]
        params = list(self.circuit.parameters)
        return [
            base.assign_parameters(dict(zip(params, row, strict=True)))
            for row in self.parameter_values
        ]


Payload: TypeAlias = SamplerTask | EstimatorTask


@dataclass(frozen=True)
class SampledCircuit:
    """Counts of one circuit; keys are bitstrings with classical bit 0 rightmost."""

    counts: dict[str, int]
    shots: int
    num_bits: int
    memory: tuple[str, ...] | None = None

    def probabilities(self) -> dict[str, float]:
        return {k: v / self.shots for k, v in self.counts.items()}

    def most_frequent(self) -> str:
        return max(self.counts.items(), key=lambda kv: kv[1])[0]


@dataclass(frozen=True)
class SamplerResult:
    circuits: tuple[SampledCircuit, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    kind = "sampler"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "circuits": [
                {"counts": c.counts, "shots": c.shots, "num_bits": c.num_bits}
                | ({"memory": list(c.memory)} if c.memory is not None else {})
                for c in self.circuits
            ],
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class EstimatorResult:
    """``values[p][o]`` is observable ``o`` under parameter set ``p``."""

    values: tuple[tuple[float, ...], ...]
    std_errors: tuple[tuple[float, ...], ...]
    shots: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    kind = "estimator"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "values": [list(r) for r in self.values],
            "std_errors": [list(r) for r in self.std_errors],
            "shots": self.shots,
            "metadata": self.metadata,
        }


TaskResult: TypeAlias = SamplerResult | EstimatorResult


def result_from_dict(data: Mapping[str, Any]) -> TaskResult:
    """The inverse of ``SamplerResult.to_dict`` / ``EstimatorResult.to_dict``.

    JSON has no NaN: ``None`` in values or standard errors reads back as NaN.
    Raises :class:`PayloadError` naming what is malformed.
    """
    kind = data.get("kind")
    try:
        metadata = dict(data.get("metadata") or {})
        if kind == "sampler":
            return SamplerResult(
                circuits=tuple(
                    SampledCircuit(
                        counts={str(k): int(v) for k, v in c["counts"].items()},
                        shots=int(c["shots"]),
                        num_bits=int(c["num_bits"]),
                        memory=None if c.get("memory") is None else tuple(c["memory"]),
                    )
                    for c in data["circuits"]
                ),
                metadata=metadata,
            )
        if kind == "estimator":
            return EstimatorResult(
                values=tuple(tuple(_float(v) for v in row) for row in data["values"]),
                std_errors=tuple(tuple(_float(v) for v in row) for row in data["std_errors"]),
                shots=data.get("shots"),
                metadata=metadata,
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PayloadError(f"malformed {kind} result: {type(exc).__name__}: {exc}") from None
    raise PayloadError(f"unknown result kind {kind!r}")


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def normalise_counts(raw: Mapping[str, int], num_bits: int) -> dict[str, int]:
    """Counts keyed by plain bitstrings: hex keys decoded, register spaces removed, padded."""
    out: dict[str, int] = {}
    for key, value in raw.items():
        if key.startswith("0x"):
            bits = format(int(key, 16), "b")
        else:
            bits = key.replace(" ", "")
        bits = bits.zfill(num_bits)
        out[bits] = out.get(bits, 0) + int(value)
    return out


def validate_payload(payload: Payload, target: DeviceTarget) -> None:
    """Raise :class:`PayloadError` if the payload does not fit ``target``."""
    width = payload.num_qubits
    if width > target.num_qubits:
        raise PayloadError(
            f"circuit needs {width} qubits but {target.name!r} has {target.num_qubits}"
        )
    if isinstance(payload, SamplerTask):
        if payload.shots > target.max_shots:
            raise PayloadError(
                f"shots={payload.shots} exceeds the maximum of {target.max_shots} on "
                f"{target.name!r}"
            )
        if len(payload.circuits) > target.max_circuits:
            raise PayloadError(
                f"{len(payload.circuits)} circuits exceed the maximum of {target.max_circuits} "
                f"per task on {target.name!r}"
            )
    elif payload.shots is not None and payload.shots > target.max_shots:
        raise PayloadError(
            f"shots={payload.shots} exceeds the maximum of {target.max_shots} on {target.name!r}"
        )


def _coerce_observable(obs: ObservableLike, index: int) -> SparsePauliOp:
    try:
        if isinstance(obs, SparsePauliOp):
            return obs
        if isinstance(obs, str):
            return SparsePauliOp(obs)
        if isinstance(obs, Mapping):
            return SparsePauliOp.from_list(list(obs.items()))
        return SparsePauliOp.from_list(list(obs))
    except Exception as exc:
        raise PayloadError(f"observable {index} is not a Pauli sum: {exc}") from exc


def _coerce_observables(
    observables: ObservableLike | Iterable[ObservableLike],
) -> tuple[SparsePauliOp, ...]:
    if isinstance(observables, SparsePauliOp | str | Mapping):
        return (_coerce_observable(observables, 0),)
    items = list(observables)
    # A list of (label, coeff) pairs is one observable, not many.
    if items and all(isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str) for t in items):
        return (_coerce_observable(items, 0),)
    return tuple(_coerce_observable(o, i) for i, o in enumerate(items))


def _coerce_parameter_values(
    values: Sequence[float] | Sequence[Sequence[float]] | None,
) -> tuple[tuple[float, ...], ...]:
    if values is None:
        return ((),)
    rows: list[Any] = list(values)
    if not rows:
        return ((),)
    if all(isinstance(v, numbers.Real) for v in rows):
        return (tuple(float(v) for v in rows),)
    try:
        return tuple(tuple(float(v) for v in row) for row in rows)
    except TypeError as exc:
        raise PayloadError(f"parameter values must be numbers: {exc}") from exc
