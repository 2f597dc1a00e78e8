"""QPUs of the programming model: anything that turns a :class:`Batch` into a :class:`BatchResult`.

:class:`Executor` is the common interface of local QPUs, remote QPUs and
stacks: ``submit`` (a job, a batch or a job generator), ``submit_async`` (a
:class:`~qhpc.program.Future`) and ``specs`` (the device target plugins
compile for). :class:`LocalQPU` adapts any qhpc resource, translating a batch
into the fewest payloads (see :class:`PayloadPlan`).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from qiskit.quantum_info import SparsePauliOp

from qhpc.primitives import TaskRunner as ResourceLike
from qhpc.program.errors import JobError, ProgramError, StackError
from qhpc.program.future import Future, check_cancelled
from qhpc.program.generator import JobGenerator, as_result
from qhpc.program.job import Batch, Job
from qhpc.program.result import BatchResult, Result
from qhpc.resources.base import TaskStatus
from qhpc.resources.errors import ResourceError, TaskFailedError
from qhpc.resources.payload import (
    EstimatorResult,
    EstimatorTask,
    Payload,
    SamplerResult,
    SamplerTask,
    TaskResult,
)
from qhpc.resources.target import DeviceTarget

Work = Job | Batch | JobGenerator


class Executor(abc.ABC):
    """What a stack ends in and what a stack is: ``submit(batch) -> batch result``."""

    name: str = "qpu"

    @abc.abstractmethod
    def specs(self) -> DeviceTarget:
        """The device target jobs are compiled for."""

    @abc.abstractmethod
    def _submit_batch(self, batch: Batch) -> BatchResult:
        """Run every job of ``batch``; results in the batch's order."""

    @overload
    def submit(self, work: Batch) -> BatchResult: ...
    @overload
    def submit(self, work: Job | JobGenerator) -> Result: ...

    def submit(self, work: Work) -> Result | BatchResult:
        """Run a job (→ :class:`Result`), a batch (→ :class:`BatchResult`) or a generator."""
        if isinstance(work, Job):
            return self.run_batch(Batch([work]))[0]
        if isinstance(work, Batch):
            return self.run_batch(work)
        if isinstance(work, JobGenerator):
            return self._drive(work)
        raise JobError(f"cannot submit a {type(work).__name__}: give a Job, Batch or JobGenerator")

    def run_batch(self, batch: Batch) -> BatchResult:
        check_cancelled()
        answer = self._submit_batch(batch)
        if len(answer) != len(batch):
            raise ProgramError(
                f"{self.name} answered {len(answer)} results for {len(batch)} jobs "
                f"({batch.describe()})"
            )
        return answer.replace(batch=batch)

    def run_stack(self, stack: Any, batch: Batch) -> BatchResult | None:
        """Run ``batch`` through the whole ``stack`` (whose bottom this is) elsewhere, or
        return None to have the stack's plugins run here (the default)."""
        return None

    def submit_async(self, work: Work) -> Future[Any]:
        """Run ``submit(work)`` in a thread; returns a future (``result``/``join``, ``cancel``)."""
        return Future(lambda: self.submit(work), name=f"submission to {self.name}")

    def _drive(self, generator: JobGenerator) -> Result:
        steps = generator.start()
        answer: Result | BatchResult | None = None
        try:
            while True:
                item = steps.send(answer)  # the first send(None) starts the generator
                if isinstance(item, Job):
                    answer = self.run_batch(Batch([item]))[0]
                elif isinstance(item, Batch):
                    answer = self.run_batch(item)
                else:
                    raise JobError(
                        f"generator {generator.name!r} yielded a {type(item).__name__}; "
                        "yield Job or Batch objects"
                    )
        except StopIteration as stop:
            return as_result(stop.value)
        finally:
            steps.close()

    def __or__(self, other: object) -> Any:
        raise StackError(
            f"{self.name} is a QPU and must end the stack: write plugin | ... | {self.name}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


@dataclass
class PayloadPlan:
    """A batch as payloads: all sampling jobs with equal shots share one sampler task
    (split at the device's circuit limit); expectation jobs on the same circuit and
    shots share one estimator task whose rows are their distinct parameter values
    and whose observables are their distinct observables (every row × observable
    pair is estimated)."""

    batch: Batch
    payloads: list[Payload] = field(default_factory=list)
    #: per payload: (job index, row, observable) — row/observable -1 for sampler circuits
    routes: list[list[tuple[int, int, int]]] = field(default_factory=list)

    @classmethod
    def build(cls, batch: Batch, target: DeviceTarget) -> PayloadPlan:
        plan = cls(batch)
        sampling: dict[int, list[int]] = {}
        estimating: dict[tuple[int, int | None], list[int]] = {}
        for index, job in enumerate(batch):
            _check_fits(job, target)
            if job.observable is None:
                assert job.shots is not None
                sampling.setdefault(job.shots, []).append(index)
            else:
                estimating.setdefault((id(job.circuit), job.shots), []).append(index)
        limit = max(1, target.max_circuits)
        for shots, indices in sampling.items():
            for start in range(0, len(indices), limit):
                chunk = indices[start : start + limit]
                circuits = tuple(batch[i].bound_circuit() for i in chunk)
                plan._add(SamplerTask(circuits, shots), [(i, -1, -1) for i in chunk])
        for (_, est_shots), indices in estimating.items():
            rows: dict[tuple[float, ...], int] = {}
            observables: dict[tuple[tuple[str, complex], ...], int] = {}
            by_object: dict[int, int] = {}  # jobs of one loop share the observable object
            ops: list[SparsePauliOp] = []
            route = []
            for i in indices:
                job = batch[i]
                assert job.observable is not None
                row = rows.setdefault(job.parameters or (), len(rows))
                slot = by_object.get(id(job.observable))
                if slot is None:
                    key = tuple(job.observable.to_list()) if len(indices) > 1 else ()
                    if key not in observables:
                        observables[key] = len(ops)
                        ops.append(job.observable)
                    slot = by_object[id(job.observable)] = observables[key]
                route.append((i, row, slot))
            task = EstimatorTask(
                batch[indices[0]].circuit, tuple(ops), tuple(rows), shots=est_shots
            )
            plan._add(task, route)
        return plan

    def _add(self, payload: Payload, route: list[tuple[int, int, int]]) -> None:
        self.payloads.append(payload)
        self.routes.append(route)

    def describe(self, payload_index: int) -> str:
        return Batch(self.batch[i] for i, _, _ in self.routes[payload_index]).describe()

    def results(self, answers: Sequence[TaskResult | None]) -> list[Result]:
        """Results in batch order from the payloads' answers (in payload order)."""
        out: list[Result | None] = [None] * len(self.batch)
        for p, (answer, route) in enumerate(zip(answers, self.routes, strict=True)):
            if isinstance(answer, SamplerResult) and isinstance(self.payloads[p], SamplerTask):
                for (i, _, _), sampled in zip(route, answer.circuits, strict=True):
                    meta = {"shots": sampled.shots, **_task_meta(answer.metadata)}
                    params = self.batch[i].parameters
                    out[i] = Result(counts=dict(sampled.counts), parameters=params, meta=meta)
            elif isinstance(answer, EstimatorResult) and isinstance(
                self.payloads[p], EstimatorTask
            ):
                for i, row, obs in route:
                    meta = {"shots": answer.shots, **_task_meta(answer.metadata)}
                    out[i] = Result(
                        value=float(answer.values[row][obs]),
                        error=float(answer.std_errors[row][obs]),
                        parameters=self.batch[i].parameters,
                        meta=meta,
                    )
            else:
                kind = type(answer).__name__
                raise ProgramError(f"the QPU answered {kind} for {self.describe(p)}")
        return [r if r is not None else Result() for r in out]


def _task_meta(metadata: dict[str, Any]) -> dict[str, Any]:
    keep = ("resource", "exact", "measurement_groups", "qpu_seconds")
    return {k: metadata[k] for k in keep if k in metadata}


def _check_fits(job: Job, target: DeviceTarget) -> None:
    if job.free_parameters:  # binding just to check would cost a circuit copy per job
        job.bound_circuit()  # raises the JobError naming the unbound parameters
    if job.circuit.num_qubits > target.num_qubits:
        raise JobError(
            f"{job.label} needs {job.circuit.num_qubits} qubits but {target.name!r} "
            f"has {target.num_qubits}"
        )
    if job.shots is not None and job.shots > target.max_shots:
        raise JobError(
            f"{job.label}: {job.shots} shots exceed the maximum of {target.max_shots} "
            f"on {target.name!r}"
        )


class LocalQPU(Executor):
    """A qhpc resource in this process (or anything with ``run(payload)`` and ``target()``).

    Payloads run one after the other through ``resource.run`` — or, without a
    timeout, through ``resource.run_now`` where the resource has it (qhpc's
    local resources): the task then runs on the calling thread when the
    resource is idle, without two thread hand-offs per payload. A failing task
    raises :class:`ProgramError` naming the jobs it carried. ``run`` and
    ``target`` are forwarded, so a LocalQPU also serves Qiskit primitives.
    """

    def __init__(
        self, resource: ResourceLike, *, name: str | None = None, timeout: float | None = None
    ) -> None:
        self.resource = resource
        self.name = name or str(getattr(resource, "name", type(resource).__name__))
        self.timeout = timeout

    def specs(self) -> DeviceTarget:
        return self.resource.target()

    def target(self) -> DeviceTarget:
        return self.resource.target()

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        return self.resource.run(payload, timeout)

    def _submit_batch(self, batch: Batch) -> BatchResult:
        plan = PayloadPlan.build(batch, self.specs())
        answers: list[TaskResult | None] = []
        for index, payload in enumerate(plan.payloads):
            check_cancelled()
            try:
                answers.append(self._run(payload))
            except ResourceError as exc:
                raise ProgramError(f"{self.name} failed on {plan.describe(index)}: {exc}") from exc
        meta = {"resource": self.name, "payloads": len(plan.payloads)}
        return BatchResult(tuple(plan.results(answers)), meta)

    def _run(self, payload: Payload) -> TaskResult:
        run_now = getattr(self.resource, "run_now", None)
        if run_now is not None and self.timeout is None:
            outcome = run_now(payload, threading.Event())
            if outcome is not None:  # None: the resource is busy, queue behind its work
                status, result, error = outcome
                if status is TaskStatus.COMPLETED and result is not None:
                    return result  # type: ignore[no-any-return]
                raise TaskFailedError(f"{self.name}: task {status}: {error}")
        return self.resource.run(payload, self.timeout)


def as_qpu(thing: object) -> Executor:
    """An executor for ``thing``: executors as they are, resources wrapped in :class:`LocalQPU`."""
    if isinstance(thing, Executor):
        return thing
    if isinstance(thing, ResourceLike):
        return LocalQPU(thing)
    raise StackError(
        f"a {type(thing).__name__} is neither a plugin nor a QPU; a stack ends with a qhpc "
        "resource, a LocalQPU/RemoteQPU or another stack"
    )
