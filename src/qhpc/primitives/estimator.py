"""Qiskit's ``BaseEstimatorV2`` over any qhpc QPU.

Each pub becomes :class:`~qhpc.resources.EstimatorTask`\\ s on its circuit:
every distinct parameter row is one circuit carrying all the observables it is
paired with, so the QPU can group commuting terms and, on simulators, compute
every value from one state. A pub whose broadcast pairs every parameter row
with every observable (the usual outer-product forms) is one task; a sparse
pairing (e.g. a ``(n,)`` sweep zipped with ``n`` observables) is split by
observable set so no unneeded pair is estimated.

Precision maps to shots: ``0`` asks for exact values (``shots=None``; Aer
computes them, a sampling QPU uses its default shots), otherwise
``shots = ceil(1 / precision**2)``. ``stds`` are the QPU's standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from qiskit.primitives import BaseEstimatorV2, DataBin, PrimitiveResult, PubResult
from qiskit.primitives.containers.estimator_pub import EstimatorPub, EstimatorPubLike
from qiskit.primitives.primitive_job import PrimitiveJob
from qiskit.quantum_info import SparsePauliOp

from qhpc.primitives.shared import (
    PrimitiveOptions,
    SeedLike,
    TaskRunner,
    check_fits,
    task_seeds,
    with_context,
)
from qhpc.resources.errors import ResourceError, TaskFailedError
from qhpc.resources.payload import EstimatorResult, EstimatorTask
from qhpc.resources.target import DeviceTarget

#: a pub is split into several tasks when its parameter × observable cross
#: product holds more than this many times the pairs its broadcast needs
SPARSITY_LIMIT = 2


def shots_for_precision(precision: float) -> int | None:
    """Shots that reach ``precision`` (one standard error); None means exact."""
    if not (math.isfinite(precision) and precision >= 0):
        raise ValueError(f"precision must be a finite number >= 0, got {precision}")
    if precision == 0:
        return None
    return math.ceil(round(1.0 / precision**2, 6))  # 1/0.1**2 is 100.00000000000001


@dataclass(frozen=True)
class _PubPlan:
    """One pub as tasks, and where their values go in the pub's broadcast shape."""

    pub: EstimatorPub
    shape: tuple[int, ...]
    row_index: NDArray[np.intp]  # pub shape → distinct parameter row
    obs_index: NDArray[np.intp]  # pub shape → distinct observable
    num_rows: int
    num_observables: int
    tasks: tuple[tuple[tuple[int, ...], tuple[int, ...], EstimatorTask], ...]

    @classmethod
    def build(cls, pub: EstimatorPub, target: DeviceTarget) -> _PubPlan:
        circuit = pub.circuit
        shape = tuple(pub.shape)
        shots = shots_for_precision(float(pub.precision))
        check_fits(circuit.num_qubits, shots, target)
        bindings = pub.parameter_values
        values = np.asarray(bindings.as_array(circuit.parameters), dtype=float)
        rows, row_of = np.unique(
            values.reshape(bindings.size, circuit.num_parameters), axis=0, return_inverse=True
        )
        row_index = np.broadcast_to(row_of.reshape(bindings.shape), shape)
        observables, obs_of = _distinct_observables(pub)
        obs_index = np.broadcast_to(obs_of, shape)
        groups = _task_groups(row_index, obs_index, len(rows), len(observables))
        tasks = tuple(
            (
                row_ids,
                obs_ids,
                EstimatorTask(
                    circuit=circuit,
                    observables=tuple(observables[o] for o in obs_ids),
                    parameter_values=tuple(tuple(rows[r]) for r in row_ids),
                    shots=shots,
                ),
            )
            for row_ids, obs_ids in groups
        )
        return cls(
            pub=pub,
            shape=shape,
            row_index=row_index,
            obs_index=obs_index,
            num_rows=len(rows),
            num_observables=len(observables),
            tasks=tasks,
        )


class EstimatorV2(BaseEstimatorV2):  # type: ignore[misc]
    """Estimates expectation values on a qhpc QPU; a drop-in for ``StatevectorEstimator``.

    Args:
        qpu: where circuits run (any :class:`~qhpc.primitives.TaskRunner`).
        default_precision: precision of pubs that specify none, when ``run`` gets none
            either; 0 asks for exact values.
        seed: an int for repeatable results, a NumPy generator, or None (the QPU's seeding).
        options: :class:`~qhpc.primitives.PrimitiveOptions` or a mapping of them.
    """

    def __init__(
        self,
        qpu: TaskRunner,
        *,
        default_precision: float = 0.0,
        seed: SeedLike = None,
        options: PrimitiveOptions | Mapping[str, Any] | None = None,
    ) -> None:
        if not (math.isfinite(default_precision) and default_precision >= 0):
            raise ValueError(
                f"default_precision must be a finite number >= 0, got {default_precision}"
            )
        self._qpu = qpu
        self._default_precision = float(default_precision)
        self._seed = seed
        self._options = PrimitiveOptions.coerce(options)

    @property
    def qpu(self) -> TaskRunner:
        return self._qpu

    @property
    def default_precision(self) -> float:
        return self._default_precision

    @property
    def seed(self) -> SeedLike:
        return self._seed

    @property
    def options(self) -> PrimitiveOptions:
        return self._options

    def run(
        self, pubs: Iterable[EstimatorPubLike], *, precision: float | None = None
    ) -> PrimitiveJob[PrimitiveResult[PubResult]]:
        """Estimate every pub; errors in the pubs are raised here, naming the pub."""
        if precision is None:
            precision = self._default_precision
        shots_for_precision(float(precision))  # nan, inf, negative: refused here, not later
        target = self._qpu.target()
        plans: list[_PubPlan] = []
        for index, pub in enumerate(pubs):
            try:
                plans.append(_PubPlan.build(EstimatorPub.coerce(pub, precision), target))
            except (ValueError, TypeError, ResourceError) as exc:
                raise with_context(f"pub {index}", exc) from exc
        job = PrimitiveJob(self._run, plans)
        job._submit()
        return job

    # -- execution (in the job's thread) -------------------------------------
    def _run(self, plans: list[_PubPlan]) -> PrimitiveResult:
        seeds = iter(task_seeds(self._seed, sum(len(plan.tasks) for plan in plans)))
        results = []
        for index, plan in enumerate(plans):
            try:
                results.append(self._run_plan(plan, seeds))
            except ResourceError as exc:
                raise with_context(f"pub {index}", exc) from exc
        return PrimitiveResult(results, metadata={"version": 2})

    def _run_plan(self, plan: _PubPlan, seeds: Iterable[int | None]) -> PubResult:
        evs = np.full((plan.num_rows, plan.num_observables), np.nan)
        stds = np.full((plan.num_rows, plan.num_observables), np.nan)
        for (row_ids, obs_ids, task), seed in zip(plan.tasks, seeds, strict=False):
            result = self._qpu.run(replace(task, seed=seed), self._options.timeout)
            values, errors = _checked(result, len(row_ids), len(obs_ids))
            cells = np.ix_(row_ids, obs_ids)
            evs[cells] = values
            stds[cells] = errors
        data = DataBin(
            evs=np.asarray(evs[plan.row_index, plan.obs_index], dtype=float),
            stds=np.asarray(stds[plan.row_index, plan.obs_index], dtype=float),
            shape=plan.shape,
        )
        metadata = {
            "target_precision": plan.pub.precision,
            "circuit_metadata": plan.pub.circuit.metadata,
        }
        return PubResult(data, metadata=metadata)


def _distinct_observables(pub: EstimatorPub) -> tuple[list[SparsePauliOp], NDArray[np.intp]]:
    """The pub's distinct observables as Pauli sums, and each entry's index among them."""
    array = pub.observables
    seen: dict[tuple[tuple[str, complex], ...], int] = {}
    distinct: list[SparsePauliOp] = []
    index = np.zeros(array.shape, dtype=np.intp)
    for position in np.ndindex(array.shape):
        # Projector terms (0, 1, +, …) are expanded into Paulis, which a QPU can measure.
        op = SparsePauliOp.from_sparse_observable(array.slice(position).as_paulis()).simplify()
        key = tuple(sorted(zip(op.paulis.to_labels(), op.coeffs.tolist(), strict=True)))
        if key not in seen:
            seen[key] = len(distinct)
            distinct.append(op)
        index[position] = seen[key]
    return distinct, index


def _task_groups(
    row_index: NDArray[np.intp], obs_index: NDArray[np.intp], num_rows: int, num_obs: int
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(rows, observables) per task: every row with every observable it is paired with."""
    if row_index.size == 0:
        return []
    pairs = np.unique(np.stack([row_index.ravel(), obs_index.ravel()], axis=1), axis=0)
    if num_rows * num_obs <= SPARSITY_LIMIT * len(pairs):
        return [(tuple(range(num_rows)), tuple(range(num_obs)))]
    needed: dict[int, set[int]] = {}
    for row, obs in pairs.tolist():
        needed.setdefault(row, set()).add(obs)
    by_observables: dict[tuple[int, ...], list[int]] = {}
    for row, observables in needed.items():
        by_observables.setdefault(tuple(sorted(observables)), []).append(row)
    return [(tuple(rows), obs) for obs, rows in by_observables.items()]


def _checked(
    result: object, num_rows: int, num_obs: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The result's values and standard errors, after checking they have the asked shape."""
    if not isinstance(result, EstimatorResult):
        raise TaskFailedError(f"the QPU answered an estimator task with {type(result).__name__}")
    values = np.asarray(result.values, dtype=float)
    errors = np.asarray(result.std_errors, dtype=float)
    expected = (num_rows, num_obs)
    if values.shape != expected or errors.shape != expected:
        raise TaskFailedError(
            f"the QPU returned values of shape {values.shape} and standard errors of shape "
            f"{errors.shape} for {num_rows} parameter set(s) × {num_obs} observable(s)"
        )
    return values, errors
