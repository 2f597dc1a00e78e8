"""Jobs and batches: what a program submits.

A :class:`Job` is one circuit plus how to read it out: *sampling* (``shots``
measurements, result = counts) or an *observable* (a Pauli sum, result = its
expectation value and standard error; ``shots=None`` asks for the exact value
where the QPU can compute one). A parameterised circuit either carries its
``parameters`` or is left open for a plugin such as
:class:`~qhpc.program.ScipyMinimize` to fill in.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import Pauli, SparsePauliOp

from qhpc.program.errors import JobError

#: anything :class:`Job` accepts as an observable
ObservableLike: TypeAlias = (
    SparsePauliOp | Pauli | str | Mapping[str, float] | Sequence[tuple[str, float]]
)
#: parameter values: ordered like ``circuit.parameters``, or keyed by parameter or name
ParameterValues: TypeAlias = Sequence[float] | Mapping[Parameter | str, float]


class Job:
    """One circuit and its read-out. Immutable; :meth:`replace` makes changed copies."""

    __slots__ = ("circuit", "meta", "name", "observable", "parameters", "shots")

    circuit: QuantumCircuit
    observable: SparsePauliOp | None
    shots: int | None
    parameters: tuple[float, ...] | None
    name: str | None
    meta: dict[str, Any]

    def __init__(
        self,
        circuit: QuantumCircuit,
        observable: ObservableLike | None = None,
        shots: int | None = None,
        parameters: ParameterValues | None = None,
        name: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(circuit, QuantumCircuit):
            raise JobError(f"job {name!r}: the circuit is a {type(circuit).__name__}")
        label = _label(name, circuit)
        if shots is not None and (
            isinstance(shots, bool) or not isinstance(shots, numbers.Integral) or shots <= 0
        ):
            raise JobError(f"{label}: shots must be a positive integer or None, not {shots!r}")
        obs = None if observable is None else _observable(observable, circuit, label)
        if obs is None:
            if shots is None:
                raise JobError(f"{label}: a sampling job needs shots")
            if circuit.num_clbits == 0:
                raise JobError(
                    f"{label}: the circuit measures nothing; add measurements "
                    "(circuit.measure_all()) or give an observable"
                )
        values = None if parameters is None else _parameter_values(parameters, circuit, label)
        for slot, value in (
            ("circuit", circuit),
            ("observable", obs),
            ("shots", None if shots is None else int(shots)),
            ("parameters", values),
            ("name", name),
            ("meta", dict(meta or {})),
        ):
            object.__setattr__(self, slot, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"Job is immutable; use job.replace({key}=...)")

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def sample(
        cls,
        circuit: QuantumCircuit,
        shots: int,
        parameters: ParameterValues | None = None,
        name: str | None = None,
    ) -> Job:
        """Sample ``circuit`` (it must measure) ``shots`` times."""
        return cls(circuit, None, shots, parameters, name)

    @classmethod
    def expectation(
        cls,
        circuit: QuantumCircuit,
        observable: ObservableLike,
        shots: int | None = None,
        parameters: ParameterValues | None = None,
        name: str | None = None,
    ) -> Job:
        """Expectation value of ``observable``; ``shots=None`` asks for the exact value."""
        return cls(circuit, observable, shots, parameters, name)

    # -- views -------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """How errors name this job."""
        return _label(self.name, self.circuit)

    @property
    def is_sampling(self) -> bool:
        return self.observable is None

    @property
    def free_parameters(self) -> tuple[Parameter, ...]:
        """The circuit's parameters when no values are given (empty when it is bound)."""
        if self.parameters is not None:
            return ()
        return tuple(self.circuit.parameters)

    def parameter_dict(self) -> dict[str, float]:
        """Values by parameter name (empty for a circuit without parameters)."""
        if self.parameters is None:
            return {}
        names = [p.name for p in self.circuit.parameters]
        return dict(zip(names, self.parameters, strict=True))

    def bound_circuit(self) -> QuantumCircuit:
        """The circuit with its parameter values assigned."""
        free = self.free_parameters
        if free:
            raise JobError(
                f"{self.label} has {len(free)} unbound parameter(s) {[p.name for p in free]}; "
                "give parameters= or put a ScipyMinimize plugin above the QPU"
            )
        if not self.circuit.num_parameters:
            return self.circuit
        assert self.parameters is not None
        values = dict(zip(self.circuit.parameters, self.parameters, strict=True))
        return self.circuit.assign_parameters(values)

    # -- copies ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Job:
        """A copy with some fields changed (validated again)."""
        fields = {
            "circuit": self.circuit, "observable": self.observable, "shots": self.shots,
            "parameters": self.parameters, "name": self.name, "meta": self.meta,
        }  # fmt: skip
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"Job has no field(s) {sorted(unknown)}")
        fields.update(changes)
        return Job(**fields)

    def bind(self, parameters: ParameterValues) -> Job:
        """This job with parameter values (ordered like ``circuit.parameters`` or by name)."""
        return self.replace(parameters=parameters)

    def __repr__(self) -> str:
        kind = "sample" if self.is_sampling else "expectation"
        return (
            f"Job({kind}, name={self.name!r}, qubits={self.circuit.num_qubits}, "
            f"shots={self.shots}, parameters={self.parameters})"
        )


@dataclass(frozen=True)
class Batch:
    """Jobs submitted together (one round trip to the QPU), with free-form metadata."""

    jobs: tuple[Job, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __init__(self, jobs: Iterable[Job] | Job, meta: Mapping[str, Any] | None = None) -> None:
        items = (jobs,) if isinstance(jobs, Job) else tuple(jobs)
        for index, job in enumerate(items):
            if not isinstance(job, Job):
                raise JobError(f"batch item {index} is a {type(job).__name__}, not a Job")
        object.__setattr__(self, "jobs", items)
        object.__setattr__(self, "meta", dict(meta or {}))

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __getitem__(self, index: int) -> Job:
        return self.jobs[index]

    def describe(self) -> str:
        """The jobs' labels, for error messages."""
        labels = [job.label for job in self.jobs[:5]]
        more = f" and {len(self.jobs) - 5} more" if len(self.jobs) > 5 else ""
        return ", ".join(labels) + more if labels else "an empty batch"


# -- validation helpers ------------------------------------------------------------------


def _label(name: str | None, circuit: QuantumCircuit) -> str:
    if name:
        return f"job {name!r}"
    return f"job on circuit {circuit.name!r}"


def _observable(obs: ObservableLike, circuit: QuantumCircuit, label: str) -> SparsePauliOp:
    try:
        if isinstance(obs, SparsePauliOp):
            op = obs
        elif isinstance(obs, str | Pauli):
            op = SparsePauliOp(obs)
        elif isinstance(obs, Mapping):
            op = SparsePauliOp.from_list(list(obs.items()))
        else:
            op = SparsePauliOp.from_list(list(obs))
    except Exception as exc:
        raise JobError(f"{label}: the observable is not a Pauli sum: {exc}") from exc
    if np.abs(np.imag(op.coeffs)).max(initial=0.0) > 1e-10:
        raise JobError(f"{label}: the observable has complex coefficients (not Hermitian)")
    width = circuit.num_qubits
    if op.num_qubits > width:
        raise JobError(
            f"{label}: the observable acts on {op.num_qubits} qubits but the circuit has {width}"
        )
    if op.num_qubits < width:  # identity on the circuit's extra qubits
        op = op.apply_layout(None, width)
    return op


def _parameter_values(
    values: ParameterValues, circuit: QuantumCircuit, label: str
) -> tuple[float, ...] | None:
    params = list(circuit.parameters)
    names = [p.name for p in params]
    if isinstance(values, Mapping):
        by_name = {(k if isinstance(k, str) else k.name): v for k, v in values.items()}
        unknown = sorted(set(by_name) - set(names))
        missing = [n for n in names if n not in by_name]
        if unknown or missing:
            raise JobError(
                f"{label}: parameter values do not match the circuit's parameters {names}"
                + (f"; unknown {unknown}" if unknown else "")
                + (f"; missing {missing}" if missing else "")
            )
        ordered: list[Any] = [by_name[n] for n in names]
    else:
        try:
            ordered = list(np.asarray(values, dtype=float).ravel()) if len(values) else []
        except (TypeError, ValueError) as exc:
            raise JobError(f"{label}: parameter values must be numbers: {exc}") from exc
        if len(ordered) != len(params):
            raise JobError(
                f"{label}: {len(ordered)} parameter value(s) given but the circuit has "
                f"{len(params)} parameter(s) {names}"
            )
    try:
        floats = tuple(float(v) for v in ordered)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{label}: parameter values must be numbers: {exc}") from exc
    if not all(math.isfinite(v) for v in floats):
        raise JobError(f"{label}: parameter values must be finite, got {floats}")
    return floats if params else None
