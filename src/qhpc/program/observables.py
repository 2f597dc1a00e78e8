"""``ObservableMeasurement``: expectation values from counts, for sampling-only QPUs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from qiskit.circuit import ClassicalRegister, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qhpc.program.job import Batch, Job
from qhpc.program.registry import register_plugin
from qhpc.program.result import BatchResult, Result
from qhpc.program.stack import Plugin
from qhpc.resources import DeviceTarget, circuit_key, observable_key
from qhpc.resources.estimation import MeasurementPlan
from qhpc.resources.payload import EstimatorTask, SampledCircuit

CACHE_SIZE = 256


@dataclass(frozen=True)
class _Measurement:
    """One observable on one circuit: how to measure it and how to combine the counts."""

    circuit: QuantumCircuit
    plan: MeasurementPlan
    circuits: tuple[QuantumCircuit, ...]  # one per qubit-wise commuting group


class ObservableMeasurement(Plugin):
    """Turn expectation jobs into sampling jobs and their counts back into values.

    The observable's Pauli terms are grouped into qubit-wise commuting sets
    (the grouping of :class:`~qhpc.resources.estimation.MeasurementPlan`, the
    same the resources use); each set becomes one sampling job of the circuit
    followed by basis rotations and a measurement of every qubit, with the
    job's ``shots`` (shots are per group). Parameterised circuits stay
    unbound, so the plugin below (``Transpile``) sees the same circuits at
    every iteration. The value's standard error accounts for correlations of
    terms measured together; groups add their variances.

    Jobs with ``shots=None`` ask for exact values, which only the QPU can give:
    they pass through unchanged unless ``default_shots`` is set, in which case
    they are measured with that many shots per group.
    """

    def __init__(self, default_shots: int | None = None) -> None:
        if default_shots is not None and default_shots <= 0:
            raise ValueError(f"default_shots must be positive, got {default_shots}")
        self.default_shots = default_shots
        self._cache: OrderedDict[tuple[Hashable, Hashable], _Measurement] = OrderedDict()
        self._lock = threading.Lock()

    def params(self) -> dict[str, Any]:
        return {"default_shots": self.default_shots}

    def measurement(self, circuit: QuantumCircuit, observable: SparsePauliOp) -> _Measurement:
        content = circuit_key(circuit)
        key = None if content is None else (content, observable_key(observable))
        if key is not None:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit
        zeros = ((0.0,) * circuit.num_parameters,)
        plan = MeasurementPlan.build(EstimatorTask(circuit, (observable,), zeros))
        base = circuit.remove_final_measurements(inplace=False)
        circuits = tuple(
            _rotated(base, group.basis.x, group.basis.z, f"{circuit.name}/g{g}")
            for g, group in enumerate(plan.groups)
        )
        found = _Measurement(circuit, plan, circuits)
        if key is None:  # no content key (custom gates, control flow): never cached
            return found
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    def compile(self, batch: Batch, specs: DeviceTarget) -> Batch:
        jobs: list[Job] = []
        # per input job: None (passed through at jobs[k]) or (measurement, first job, shots)
        routes: list[tuple[int, _Measurement | None, int]] = []
        for job in batch:
            shots = job.shots if job.shots is not None else self.default_shots
            if job.observable is None or shots is None:
                routes.append((len(jobs), None, 0))
                jobs.append(job)
                continue
            found = self.measurement(job.circuit, job.observable)
            routes.append((len(jobs), found, shots))
            for g, circuit in enumerate(found.circuits):
                name = f"{job.name or job.circuit.name}/group{g}"
                meta = {**job.meta, "measures": job.label}
                jobs.append(Job(circuit, None, shots, job.parameters, name, meta))
        return self.remember(Batch(jobs, batch.meta), routes)

    def post_process(self, result: BatchResult) -> BatchResult:
        routes: list[tuple[int, _Measurement | None, int]] = self.recall(result)
        out: list[Result] = []
        for first, found, shots in routes:
            if found is None:
                out.append(result[first])
                continue
            answers = result.results[first : first + len(found.circuits)]
            value, error, meta = _combine(found, answers, shots)
            parameters = answers[0].parameters if answers else None
            out.append(Result(value=value, error=error, parameters=parameters, meta=meta))
        return BatchResult(tuple(out), result.meta)


def _rotated(base: QuantumCircuit, x: object, z: object, name: str) -> QuantumCircuit:
    """``base``, then a rotation into the group's basis, then a measurement of every qubit."""
    circuit = base.copy(name=name)
    width = circuit.num_qubits
    for q in range(width):
        xq, zq = bool(x[q]), bool(z[q])  # type: ignore[index]
        if xq and zq:  # Y
            circuit.sdg(q)
            circuit.h(q)
        elif xq:  # X
            circuit.h(q)
    register = ClassicalRegister(width, "meas")
    circuit.add_register(register)
    circuit.measure(range(width), register)
    return circuit


def _combine(
    found: _Measurement, answers: tuple[Result, ...], shots: int
) -> tuple[float, float, dict[str, object]]:
    if not found.circuits:  # only identity terms: the value is the constant
        return found.plan.constants[0], 0.0, {"shots": 0, "measurement_groups": 0}
    sampled = [
        SampledCircuit(
            counts=dict(a.counts or {}),
            shots=a.shots,
            num_bits=c.num_clbits,
        )
        for a, c in zip(answers, found.circuits, strict=True)
    ]
    estimate = found.plan.combine(sampled, {})
    meta: dict[str, object] = {
        "shots": shots,
        "measurement_groups": len(found.circuits),
        "exact": False,
    }
    for answer in answers:
        for key in ("resource", "readout_mitigated"):
            if key in answer.meta:
                meta[key] = answer.meta[key]
    return estimate.values[0][0], estimate.std_errors[0][0], meta


register_plugin("ObservableMeasurement", ObservableMeasurement)
