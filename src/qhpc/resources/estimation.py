"""Expectation values from counts, so estimator tasks run on sampling-only QPUs.

Pauli terms of all observables are grouped into qubit-wise commuting sets;
each set needs one measurement circuit per parameter set (basis rotations,
then measure every qubit). Per-shot values of each observable's part in a group
are averaged over the counts, so the standard error accounts for correlations
between terms measured together; groups are independent samples, so their
variances add.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from qiskit.circuit import ClassicalRegister, QuantumCircuit
from qiskit.quantum_info import Pauli, SparsePauliOp

from qhpc.resources.payload import EstimatorResult, EstimatorTask, SampledCircuit


@dataclass(frozen=True)
class _Group:
    basis: Pauli  # the measurement basis: X, Y or Z (or I) on each qubit
    # for each observable: (z-masks of its terms in this group, real coefficients)
    terms: tuple[tuple[tuple[int, ...], tuple[float, ...]], ...]


@dataclass(frozen=True)
class MeasurementPlan:
    """Which circuits to sample for an estimator task, and how to combine their counts."""

    task: EstimatorTask
    groups: tuple[_Group, ...]
    constants: tuple[float, ...]  # identity-term coefficient per observable
    clbit_offset: int  # classical bits the circuit itself keeps (mid-circuit measurements)

    @classmethod
    def build(cls, task: EstimatorTask) -> MeasurementPlan:
        labels: list[Pauli] = []
        for obs in task.observables:
            for pauli in obs.paulis:
                if pauli.x.any() or pauli.z.any():
                    labels.append(pauli)
        groups: list[_Group] = []
        if labels:
            unique = SparsePauliOp(list({p.to_label(): p for p in labels}.values()))
            for grouped in unique.group_commuting(qubit_wise=True):
                basis = _common_basis(grouped.paulis)
                per_obs = []
                for obs in task.observables:
                    masks: list[int] = []
                    coeffs: list[float] = []
                    for pauli, coeff in zip(obs.paulis, obs.coeffs, strict=True):
                        if not (pauli.x.any() or pauli.z.any()):
                            continue
                        if _covered(pauli, grouped.paulis):
                            masks.append(_support_mask(pauli))
                            coeffs.append(float(np.real(coeff)))
                    per_obs.append((tuple(masks), tuple(coeffs)))
                groups.append(_Group(basis=basis, terms=tuple(per_obs)))
        constants = tuple(
            float(
                sum(
                    np.real(c)
                    for p, c in zip(o.paulis, o.coeffs, strict=True)
                    if not (p.x.any() or p.z.any())
                )
            )
            for o in task.observables
        )
        offset = task.circuit.remove_final_measurements(inplace=False).num_clbits
        return cls(task=task, groups=tuple(groups), constants=constants, clbit_offset=offset)

    def circuits(self) -> list[QuantumCircuit]:
        """Measurement circuits, parameter set major: ``[p0g0, p0g1, …, p1g0, …]``."""
        out: list[QuantumCircuit] = []
        for index, bound in enumerate(self.task.bound_circuits()):
            for g, group in enumerate(self.groups):
                out.append(_measurement_circuit(bound, group.basis, f"p{index}g{g}"))
        return out

    def combine(
        self, sampled: list[SampledCircuit], metadata: dict[str, object]
    ) -> EstimatorResult:
        n_groups = len(self.groups)
        values: list[tuple[float, ...]] = []
        errors: list[tuple[float, ...]] = []
        shots = None
        for p in range(len(self.task.parameter_values)):
            row_v: list[float] = []
            row_e: list[float] = []
            for o, constant in enumerate(self.constants):
                mean, variance = constant, 0.0
                for g, group in enumerate(self.groups):
                    masks, coeffs = group.terms[o]
                    if not masks:
                        continue
                    result = sampled[p * n_groups + g]
                    shots = result.shots
                    m, v = _group_moments(result, masks, coeffs, self.clbit_offset)
                    mean += m
                    variance += v / result.shots
                row_v.append(mean)
                row_e.append(math.sqrt(variance))
            values.append(tuple(row_v))
            errors.append(tuple(row_e))
        return EstimatorResult(
            values=tuple(values),
            std_errors=tuple(errors),
            shots=shots,
            metadata={**metadata, "exact": False, "measurement_groups": n_groups},
        )


def _covered(pauli: Pauli, group: object) -> bool:
    label = pauli.to_label()
    return any(label == other.to_label() for other in group)  # type: ignore[attr-defined]


def _support_mask(pauli: Pauli) -> int:
    mask = 0
    for q in range(pauli.num_qubits):
        if pauli.x[q] or pauli.z[q]:
            mask |= 1 << q
    return mask


def _common_basis(paulis: object) -> Pauli:
    items = list(paulis)  # type: ignore[call-overload]
    n = items[0].num_qubits
    z = np.zeros(n, dtype=bool)
    x = np.zeros(n, dtype=bool)
    for p in items:
        z |= p.z
        x |= p.x
    return Pauli((z, x))


def _measurement_circuit(bound: QuantumCircuit, basis: Pauli, name: str) -> QuantumCircuit:
    n = bound.num_qubits
    circuit = QuantumCircuit(*bound.qregs, name=name)
    circuit.compose(bound, inplace=True)
    for q in range(n):
        if basis.x[q] and basis.z[q]:  # Y
            circuit.sdg(q)
            circuit.h(q)
        elif basis.x[q]:  # X
            circuit.h(q)
    creg = ClassicalRegister(n, "meas")
    circuit.add_register(creg)
    circuit.measure(range(n), creg)
    return circuit


def _group_moments(
    result: SampledCircuit, masks: tuple[int, ...], coeffs: tuple[float, ...], offset: int
) -> tuple[float, float]:
    """Mean and single-shot variance of Σ c·(±1) over the counts."""
    total = 0.0
    total_sq = 0.0
    for bits, count in result.counts.items():
        outcome = int(bits, 2) >> offset
        value = 0.0
        for mask, coeff in zip(masks, coeffs, strict=True):
            value += -coeff if (outcome & mask).bit_count() % 2 else coeff
        total += value * count
        total_sq += value * value * count
    mean = total / result.shots
    variance = max(total_sq / result.shots - mean * mean, 0.0)
    return mean, variance
