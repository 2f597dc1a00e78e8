"""Machinery shared by adapters that run tasks in this process (aer, emulator, qx).

:class:`LocalResource` owns task ids, states, the FIFO, cancellation, logs and
waiting; :class:`SamplingResource` adds the estimator on top of a sampler, so
an adapter only says how to sample a batch of circuits (and, if it can, how to
compute exact expectation values).
"""

from __future__ import annotations

import abc
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from qiskit.circuit import Barrier, Delay, Measure, QuantumCircuit, Reset
from qiskit.quantum_info import SparsePauliOp

from qhpc.resources.base import QuantumResource, ResourceState, ResourceStatus, TaskStatus
from qhpc.resources.errors import TaskFailedError, TaskNotFinishedError, UnknownTaskError
from qhpc.resources.estimation import MeasurementPlan
from qhpc.resources.payload import (
    EstimatorResult,
    EstimatorTask,
    Payload,
    SampledCircuit,
    SamplerResult,
    SamplerTask,
    TaskResult,
    validate_payload,
)


@dataclass
class LocalTask:
    """Book-keeping of one task inside a local adapter."""

    id: str
    payload: Payload
    status: TaskStatus = TaskStatus.QUEUED
    result: TaskResult | None = None
    error: str | None = None
    logs: list[str] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    stop_requested: threading.Event = field(default_factory=threading.Event)

    def log(self, message: str) -> None:
        self.logs.append(f"{time.strftime('%H:%M:%S')} {message}")


#: non-gate instructions whose name and parameters say all they do
_PLAIN_INSTRUCTIONS = (Measure, Reset, Barrier, Delay)


def circuit_key(circuit: QuantumCircuit) -> Hashable | None:
    """A key equal for two circuits only if they are the same computation, or ``None``.

    For caches of work derived from a circuit (a transpiled copy, a circuit with
    save instructions): keying by content instead of by object keeps a circuit
    changed in place after it was cached from getting the stale entry. The key
    holds the bit order, the global phase and every instruction's name,
    parameters (``Parameter`` objects compare by identity, so two circuits with
    equally named parameters differ) and bits. Only standard gates and plain
    instructions (measure, reset, barrier, delay) are described by name and
    parameters; a circuit with anything else (a custom gate, control flow, an
    unhashable parameter) gets ``None``: do not cache it.
    """
    instructions = []
    for item in circuit.data:
        operation = item.operation
        if not item.is_standard_gate():
            if not isinstance(operation, _PLAIN_INSTRUCTIONS):
                return None
            if isinstance(operation, Delay):
                instructions.append(
                    (operation.name, operation.unit, tuple(item.params), item.qubits)
                )
                continue
        instructions.append((operation.name, tuple(item.params), item.qubits, item.clbits))
    key = (tuple(circuit.qubits), tuple(circuit.clbits), circuit.global_phase, tuple(instructions))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def observable_key(observable: SparsePauliOp) -> Hashable:
    """A key equal for two Pauli sums only if they have the same terms in the same order."""
    paulis = observable.paulis
    if observable.coeffs.dtype == object:  # parameterised coefficients: bytes would be pointers
        return (observable.num_qubits, tuple(paulis.to_labels()), tuple(observable.coeffs))
    return (
        observable.num_qubits,
        paulis.x.tobytes(),
        paulis.z.tobytes(),
        paulis.phase.tobytes(),
        observable.coeffs.tobytes(),
    )


class TaskStopped(Exception):
    """Raised inside an adapter's execution when ``task_stop`` interrupts it."""


class LocalResource(QuantumResource):
    """A resource executed in this process: one worker thread, FIFO, one task at a time.

    Subclasses implement :meth:`_execute` (and :meth:`target`); everything about
    task ids, states, cancellation, logs and waiting lives here once.
    """

    #: finished tasks kept for ``task_result``; older ones are forgotten first
    retained_tasks = 10_000

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._tasks: dict[str, LocalTask] = {}
        self._finished: deque[str] = deque()
        self._queue: deque[LocalTask] = deque()
        self._running: LocalTask | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None

    # -- QRMI surface -------------------------------------------------------
    def task_start(self, payload: Payload) -> str:
        validate_payload(payload, self.target())
        self._check_payload(payload)
        record = LocalTask(id=uuid.uuid4().hex, payload=payload)
        record.log(f"queued {payload.kind} task on {self.name}")
        with self._cond:
            if self._closed:
                raise TaskFailedError(f"{self.name} is closed")
            self._tasks[record.id] = record
            self._queue.append(record)
            self._ensure_worker()
            self._cond.notify_all()
        return record.id

    def task_stop(self, task_id: str) -> None:
        with self._cond:
            record = self._record(task_id)
            if record.status is TaskStatus.QUEUED:
                record.stop_requested.set()
                self._queue.remove(record)
                self._finish(record, TaskStatus.CANCELLED, error="cancelled before it started")
            elif record.status is TaskStatus.RUNNING:
                record.stop_requested.set()
                record.log("stop requested")
            self._cond.notify_all()

    def task_status(self, task_id: str) -> TaskStatus:
        with self._cond:
            return self._record(task_id).status

    def task_result(self, task_id: str) -> TaskResult:
        with self._cond:
            record = self._record(task_id)
            if record.status is TaskStatus.COMPLETED and record.result is not None:
                return record.result
            if record.status.is_final:
                raise TaskFailedError(
                    f"{self.name}: task {task_id} {record.status}: {record.error}"
                )
            raise TaskNotFinishedError(f"{self.name}: task {task_id} is {record.status}")

    def task_logs(self, task_id: str) -> str:
        with self._cond:
            return "\n".join(self._record(task_id).logs)

    def task_wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        with self._cond:
            record = self._record(task_id)
            self._cond.wait_for(lambda: record.status.is_final, timeout)
            return record.status

    def run_now(
        self, payload: Payload, stop_requested: threading.Event
    ) -> tuple[TaskStatus, TaskResult | None, str | None] | None:
        """Run ``payload`` on the calling thread if the resource is idle, else ``None``.

        The synchronous entry point of the broker's executor: the same admission checks
        and execution as :meth:`task_start` + :meth:`task_wait` + :meth:`task_result`,
        without the worker-thread hand-off (two thread switches per task) and without a
        retained task record. Returns the final status, the result (when completed) and
        an error (otherwise); ``stop_requested`` stops it like :meth:`task_stop` would.
        Admission errors raise, as from :meth:`task_start`.
        """
        validate_payload(payload, self.target())
        self._check_payload(payload)
        record = LocalTask(id="inline", payload=payload, stop_requested=stop_requested)
        with self._cond:
            if self._closed:
                raise TaskFailedError(f"{self.name} is closed")
            if self._running is not None or self._queue:
                return None  # the worker has work: keep its FIFO order
            record.status = TaskStatus.RUNNING
            self._running = record
        try:
            self._wait_until_available(record)
            if stop_requested.is_set():
                raise TaskStopped
            result = self._execute(record)
        except TaskStopped:
            return TaskStatus.CANCELLED, None, "stopped while running"
        except Exception as exc:
            return TaskStatus.FAILED, None, f"{type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._running = None
                self._cond.notify_all()
        return TaskStatus.COMPLETED, result, None

    def status(self) -> ResourceStatus:
        with self._cond:
            busy = self._running is not None
            pending = len(self._queue)
        state, reason = self._state()
        if busy and state is ResourceState.IDLE:
            state = ResourceState.BUSY
        return ResourceStatus(state=state, busy=busy, pending=pending, reason=reason)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for record in list(self._queue):
                record.stop_requested.set()
                self._finish(record, TaskStatus.CANCELLED, error="resource closed")
            self._queue.clear()
            if self._running is not None:
                self._running.stop_requested.set()
            self._cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=10)

    # -- hooks for subclasses --------------------------------------------------
    @abc.abstractmethod
    def _execute(self, record: LocalTask) -> TaskResult:
        """Run one task to completion; raise :class:`TaskStopped` if stopped."""

    def _check_payload(self, payload: Payload) -> None:
        """Extra admission checks beyond the target's limits (override to add)."""

    def _state(self) -> tuple[ResourceState, str]:
        return ResourceState.IDLE, ""

    def _wait_until_available(self, record: LocalTask) -> None:
        """Block before a task starts while the device cannot run it (override)."""

    # -- internals -----------------------------------------------------------
    def _record(self, task_id: str) -> LocalTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTaskError(f"{self.name}: no task with id {task_id!r}") from None

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(
                target=self._work, name=f"qhpc-resource-{self.name}", daemon=True
            )
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                # Not while a task runs inline (run_now) on a caller's thread.
                self._cond.wait_for(
                    lambda: self._closed or (bool(self._queue) and self._running is None)
                )
                if self._closed:
                    return
                record = self._queue[0]
            try:
                self._wait_until_available(record)
            except TaskStopped:
                pass
            with self._cond:
                if record.status is not TaskStatus.QUEUED:
                    continue  # stopped while it waited for the device
                self._queue.popleft()
                if record.stop_requested.is_set():
                    self._finish(record, TaskStatus.CANCELLED, error="stopped")
                    continue
                record.status = TaskStatus.RUNNING
                record.started_at = time.monotonic()
                record.log("running")
                self._running = record
                self._cond.notify_all()
            self._run_one(record)

    def _run_one(self, record: LocalTask) -> None:
        try:
            result = self._execute(record)
        except TaskStopped:
            with self._cond:
                self._finish(record, TaskStatus.CANCELLED, error="stopped while running")
        except Exception as exc:
            with self._cond:
                record.log(traceback.format_exc(limit=5))
                self._finish(record, TaskStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        else:
            with self._cond:
                record.result = result
                self._finish(record, TaskStatus.COMPLETED)
        finally:
            with self._cond:
                self._running = None
                self._cond.notify_all()

    def _finish(self, record: LocalTask, status: TaskStatus, error: str | None = None) -> None:
        # Caller holds self._cond.
        record.status = status
        record.error = error
        record.finished_at = time.monotonic()
        record.log(str(status) + (f": {error}" if error else ""))
        self._finished.append(record.id)
        while len(self._finished) > self.retained_tasks:
            self._tasks.pop(self._finished.popleft(), None)
        self._cond.notify_all()


class SamplingResource(LocalResource):
    """A local resource defined by how it samples circuits.

    Estimator tasks use :meth:`_exact_expectations` when the adapter can compute
    exact values and the task asks for them (``shots=None``); otherwise they are
    estimated from counts of basis-rotated circuits.
    """

    #: shots used for an estimator task that asked for exact values on a
    #: resource that can only sample
    default_estimator_shots = 4096

    @abc.abstractmethod
    def _sample(
        self,
        circuits: list[QuantumCircuit],
        shots: int,
        memory: bool,
        seed: int | None,
        record: LocalTask,
    ) -> tuple[list[SampledCircuit], dict[str, object]]:
        """Sample every circuit; return results in order and adapter metadata."""

    def _exact_expectations(self, task: EstimatorTask, record: LocalTask) -> EstimatorResult | None:
        """Exact expectation values, or None if this resource cannot compute them."""
        return None

    def _execute(self, record: LocalTask) -> TaskResult:
        payload = record.payload
        if isinstance(payload, SamplerTask):
            sampled, meta = self._sample(
                list(payload.circuits), payload.shots, payload.memory, payload.seed, record
            )
            return SamplerResult(circuits=tuple(sampled), metadata={"resource": self.name, **meta})
        if payload.shots is None:
            exact = self._exact_expectations(payload, record)
            if exact is not None:
                return exact
        plan = MeasurementPlan.build(payload)
        shots = payload.shots or self.default_estimator_shots
        record.log(f"estimating from {len(plan.groups)} measurement group(s) × {shots} shots")
        if not plan.groups:  # only identity terms: nothing to measure
            rows = len(payload.parameter_values)
            return EstimatorResult(
                values=tuple(plan.constants for _ in range(rows)),
                std_errors=tuple(tuple(0.0 for _ in plan.constants) for _ in range(rows)),
                shots=None,
                metadata={"resource": self.name, "exact": True},
            )
        sampled, meta = self._sample(plan.circuits(), shots, False, payload.seed, record)
        return plan.combine(sampled, {"resource": self.name, **meta})
