"""Devices of the Munich Quantum Software Stack through QDMI (``pip install mqt-core``).

:class:`QdmiResource` opens one QDMI device by its stable id — through mqt-core's
QDMI driver, or a driver library the admin names — and puts it behind qhpc's resource
interface. Vendors publish QDMI devices as packages (IQM, Amazon Braket, IBM …) that
register with the driver when installed; mqt-core itself ships ``mqt.ddsim.default``
(a decision-diagram simulator) and the ``mqt.sc.*`` superconducting descriptions.

Facts read from mqt-core 4.1 on this machine, which shape the adapter:

- a job holds several programs of one format and common shots, results per program
  index; a device may refuse a list (``try_submit_job`` gives None), and then each
  circuit is a job of its own, and the task id joins their ids with ``+``;
- DDSIM runs jobs one at a time in a worker process (its status is ``BUSY`` meanwhile)
  and cancels by ending it; it cannot look a job up by id ("Not supported"), so a
  task of an earlier broker process can be stopped only on devices that can;
- a failed job says only ``FAILED``; QDMI has no seed (a task's seed is not used);
- the ``mqt.sc.*`` devices report no program format: they describe, they do not run.

Every device call runs bounded by ``timeout`` (a remote device can hang inside the C
library; see :mod:`qhpc.resources.bounded`). Estimator tasks are sampled: Pauli terms
in qubit-wise commuting groups, one measurement circuit per group and parameter set
(:mod:`qhpc.resources.estimation`), all in one job.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mqt.core import qdmi
from qiskit import transpile
from qiskit.circuit import QuantumCircuit

from qhpc.resources.base import QuantumResource, ResourceState, ResourceStatus, TaskStatus
from qhpc.resources.bounded import bounded_call
from qhpc.resources.errors import (
    ResourceConfigError,
    ResourceError,
    TaskFailedError,
    TaskNotFinishedError,
    UnknownTaskError,
)
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
from qhpc.resources.qdmi_config import check_driver, read_token_file
from qhpc.resources.qdmi_programs import Programs, build_programs, decode_counts, decode_shots
from qhpc.resources.qdmi_target import qdmi_target, resource_state
from qhpc.resources.target import DeviceTarget

_JOB_STATES = {
    "CREATED": TaskStatus.QUEUED,
    "SUBMITTED": TaskStatus.QUEUED,
    "QUEUED": TaskStatus.QUEUED,
    "RUNNING": TaskStatus.RUNNING,
    "DONE": TaskStatus.COMPLETED,
    "CANCELED": TaskStatus.CANCELLED,
    "FAILED": TaskStatus.FAILED,
}
#: a task's state from its jobs': the first of these any job is in, else completed
_PRECEDENCE = (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.RUNNING, TaskStatus.QUEUED)
#: non-gate instructions a device runs by name
_PLAIN = frozenset({"measure", "barrier", "reset", "delay"})


def job_status(status: qdmi.Job.Status) -> TaskStatus:
    """QDMI's job status as a task status (an unknown one counts as failed)."""
    return _JOB_STATES.get(status.name, TaskStatus.FAILED)


@dataclass
class _Task:
    payload: Payload
    jobs: list[qdmi.Job]
    #: per circuit: (index into jobs, program index within that job)
    where: list[tuple[int, int]]
    #: per circuit: its classical bits (the width of its outcomes)
    widths: list[int] = field(default_factory=list)
    plan: MeasurementPlan | None = None
    status: TaskStatus = TaskStatus.QUEUED
    result: TaskResult | None = None
    logs: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        self.logs.append(f"{time.strftime('%H:%M:%S')} {message}")


class QdmiResource(QuantumResource):
    """One QDMI device (``device`` is its stable id, e.g. ``mqt.ddsim.default``).

    ``driver`` is the absolute path of a QDMI driver library (default: mqt-core's);
    ``token_file`` an absolute path to a file holding the session token, readable by
    the broker's user only. ``max_shots`` and ``max_circuits`` cap a task (QDMI reports
    neither); ``timeout`` bounds every device call in seconds.
    """

    type_name = "qdmi"
    remembers_tasks = True
    #: the longest pause between status polls in task_wait, seconds
    poll_interval = 0.5
    #: shots of an estimator task that asked for exact values (a device only samples)
    default_estimator_shots = 4096
    #: finished tasks kept for task_result; older ones are forgotten first
    retained_tasks = 10_000

    def __init__(
        self,
        name: str,
        device: str,
        *,
        driver: str | None = None,
        token_file: str | None = None,
        max_shots: int = 100_000,
        max_circuits: int = 300,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(name)
        limits = {"max_shots": max_shots, "max_circuits": max_circuits, "timeout": timeout}
        for option, number in limits.items():
            if number <= 0:
                raise ResourceConfigError(f"{option} must be positive", name, option)
        if not isinstance(device, str) or not device:
            raise ResourceConfigError("the QDMI device id is required", name, "device")
        self.device_id = device
        self.driver = None if driver is None else str(check_driver(name, driver))
        self.token_file = token_file
        self.max_shots, self.max_circuits, self.timeout = max_shots, max_circuits, timeout
        token = None if token_file is None else read_token_file(name, token_file)
        #: what error messages must never show (a driver may quote its parameters)
        self._secret = token
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._lock = threading.Lock()
        self._target: DeviceTarget | None = None
        self._session, self.device = self._open(token)

    def __repr__(self) -> str:
        return (
            f"QdmiResource(name={self.name!r}, device={self.device_id!r}, driver={self.driver!r})"
        )

    def _open(self, token: str | None) -> tuple[qdmi.Session, qdmi.Device]:
        def open_device() -> tuple[qdmi.Session, qdmi.Device | None, list[str]]:
            session = qdmi.Session(driver_path=self.driver, token=token)
            known = session.device_ids
            found = session.get_device(self.device_id) if self.device_id in known else None
            return session, found, known

        try:
            session, device, known = bounded_call(open_device, (), self.timeout, "qdmi-open")
        except TimeoutError as exc:
            raise ResourceConfigError(f"opening the QDMI session: {exc}", self.name) from None
        except Exception as exc:
            where = "driver" if self.driver else "device"
            raise ResourceConfigError(
                f"the QDMI session did not open: {self._redact(exc)}", self.name, where
            ) from None
        if device is None:
            raise ResourceConfigError(
                f"no QDMI device {self.device_id!r}; the driver offers: "
                f"{', '.join(known) or 'none'}",
                self.name,
                "device",
            )
        return session, device

    def _call(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return bounded_call(call, args, self.timeout, "qdmi-call")
        except TimeoutError as exc:
            message = f"{self.name}: {what}: {exc} (the device may still act on it)"
            raise TaskFailedError(message) from None
        except ResourceError:
            raise
        except Exception as exc:
            raise TaskFailedError(f"{self.name}: {what} failed: {self._redact(exc)}") from None

    def _redact(self, error: Exception) -> str:
        text = str(error)
        return text if not self._secret else text.replace(self._secret, "<redacted>")

    def metadata(self) -> dict[str, Any]:
        return super().metadata() | {
            "device": self.device_id,
            "driver": self.driver,
            "token_file": self.token_file,
        }

    def status(self) -> ResourceStatus:
        try:
            state, queue = self._call(
                "status", lambda: (self.device.status(), self.device.queue_length())
            )
        except ResourceError as exc:  # unreachable is a state, not an error, for the broker
            return ResourceStatus(ResourceState.OFFLINE, busy=False, pending=0, reason=str(exc))
        mapped = resource_state(state)
        return ResourceStatus(mapped, mapped is ResourceState.BUSY, int(queue or 0))

    def target(self) -> DeviceTarget:
        """The device's target as it reports itself (read once, then cached)."""
        if self._target is None:
            self._target = self._call(
                "reading the device's properties",
                lambda: qdmi_target(
                    self.name, self.device, max_shots=self.max_shots, max_circuits=self.max_circuits
                ),
            )
        return self._target

    # -- tasks ---------------------------------------------------------------------------
    def task_start(self, payload: Payload) -> str:
        validate_payload(payload, self.target())
        if isinstance(payload, SamplerTask):
            task = _Task(payload, [], [])
            circuits, shots = list(payload.circuits), payload.shots
        else:
            plan = MeasurementPlan.build(payload)
            task = _Task(payload, [], [], plan=plan)
            if not plan.groups:  # identity terms only: nothing to measure
                return self._remember(f"qdmi-{uuid.uuid4().hex}", _constant(task, plan, self.name))
            circuits = self._native(plan.circuits())
            shots = payload.shots or self.default_estimator_shots
        formats = self._call("program formats", self.device.supported_program_formats)
        programs = build_programs(circuits, formats, self.name)
        task.jobs, task.where = self._call("submit", self._submit, programs, shots)
        task.widths = [c.num_clbits for c in circuits]
        task.log(
            f"submitted {len(circuits)} {programs.format.name} program(s) x {shots} shots "
            f"as {len(task.jobs)} job(s) to {self.device_id}"
        )
        if payload.seed is not None:
            task.log("seed not used: QDMI has no seed parameter")
        return self._remember("+".join(job.id for job in task.jobs), task)

    def _native(self, circuits: list[QuantumCircuit]) -> list[QuantumCircuit]:
        """Measurement circuits in the device's gates: the basis rotations are qhpc's own."""
        basis = set(self.target().basis_gates)
        used = {i.operation.name for c in circuits for i in c.data} - _PLAIN
        if used <= basis:
            return circuits
        # barrier and delay are directives the translator passes through; not "gates" to it
        gates = [*basis, "measure", "reset"]
        return list(transpile(circuits, basis_gates=gates, optimization_level=0))

    def _submit(
        self, programs: Programs, shots: int
    ) -> tuple[list[qdmi.Job], list[tuple[int, int]]]:
        texts = list(programs.texts)
        if len(texts) == 1:
            return [self.device.submit_job(texts[0], programs.format, shots)], [(0, 0)]
        job = self.device.try_submit_job(texts, programs.format, shots)
        if job is not None:
            return [job], [(0, i) for i in range(len(texts))]
        jobs: list[qdmi.Job] = []  # the device takes one program per job
        try:
            for text in texts:
                jobs.append(self.device.submit_job(text, programs.format, shots))
        except Exception:
            for started in jobs:
                started.cancel()
            raise
        return jobs, [(i, 0) for i in range(len(texts))]

    def _remember(self, task_id: str, task: _Task) -> str:
        with self._lock:
            if task_id in self._tasks:
                raise TaskFailedError(f"{self.name}: the device reused job id {task_id!r}")
            self._tasks[task_id] = task
            while len(self._tasks) > self.retained_tasks:
                self._tasks.popitem(last=False)
        return task_id

    def _task(self, task_id: str) -> _Task:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTaskError(f"{self.name}: no task with id {task_id!r}")
        return task

    def task_status(self, task_id: str) -> TaskStatus:
        task = self._task(task_id)
        if task.status.is_final:
            return task.status
        states = {
            job_status(s) for s in self._call("status", lambda: [j.check() for j in task.jobs])
        }
        status = next((s for s in _PRECEDENCE if s in states), TaskStatus.COMPLETED)
        if status is not task.status:
            task.status = status
            if status is TaskStatus.FAILED:
                task.log(f"failed: {self.device_id} reported the job FAILED (QDMI gives no reason)")
            else:
                task.log(str(status))
        return status

    def task_wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """Poll at growing intervals up to ``poll_interval``: each poll is a device call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while not (status := self.task_status(task_id)).is_final:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, self.poll_interval)
        return status

    def task_stop(self, task_id: str) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is None:  # a task of an earlier process: only a device that finds jobs by id
            jobs = self._call(
                "finding the job",
                lambda: [self.device.retrieve_job_by_id(j) for j in task_id.split("+")],
            )
        else:
            jobs = task.jobs
        self._call(
            "cancel", lambda: [j.cancel() for j in jobs if not job_status(j.check()).is_final]
        )
        if task is not None:
            task.log("stop requested")

    def task_logs(self, task_id: str) -> str:
        return "\n".join(self._task(task_id).logs)

    def task_result(self, task_id: str) -> TaskResult:
        task = self._task(task_id)
        status = self.task_status(task_id)
        if not status.is_final:
            raise TaskNotFinishedError(f"{self.name}: task {task_id} is {status}")
        if status is not TaskStatus.COMPLETED:
            raise TaskFailedError(f"{self.name}: task {task_id} {status}; see task_logs()")
        if task.result is None:
            task.result = self._call("reading the results", self._decode, task, task_id)
        return task.result

    def _decode(self, task: _Task, task_id: str) -> TaskResult:
        payload = task.payload
        memory = isinstance(payload, SamplerTask) and payload.memory
        sampled = []
        for index, (width, (job, program)) in enumerate(zip(task.widths, task.where, strict=True)):
            where = f"{self.name}: task {task_id}, circuit {index}"
            counts = decode_counts(task.jobs[job].get_counts(program), width, where)
            shots = (
                decode_shots(task.jobs[job].get_shots(program), width, where) if memory else None
            )
            sampled.append(SampledCircuit(counts, sum(counts.values()), width, shots))
        meta: dict[str, object] = {"resource": self.name, "device": self.device_id}
        meta["jobs"] = [j.id for j in task.jobs]
        if isinstance(payload, SamplerTask):
            return SamplerResult(tuple(sampled), meta)
        assert task.plan is not None
        return task.plan.combine(sampled, meta)

    def close(self) -> None:
        """Cancel this process's unfinished jobs (a simulator's worker ends with them) and
        let go of the device: the library's objects are freed now, not at exit."""
        with self._lock:
            open_tasks = [t for t in self._tasks.values() if not t.status.is_final]
            self._tasks.clear()
        for task in open_tasks:
            try:
                self._call("cancel", lambda t=task: [j.cancel() for j in t.jobs])
            except ResourceError:
                pass
        self.__dict__.pop("device", None)
        self.__dict__.pop("_session", None)


def _constant(task: _Task, plan: MeasurementPlan, name: str) -> _Task:
    payload = task.payload
    assert isinstance(payload, EstimatorTask)
    rows = len(payload.parameter_values)
    task.result = EstimatorResult(
        values=tuple(plan.constants for _ in range(rows)),
        std_errors=tuple(tuple(0.0 for _ in plan.constants) for _ in range(rows)),
        shots=None,
        metadata={"resource": name, "exact": True},
    )
    task.status = TaskStatus.COMPLETED
    task.log("identity observables only: computed without the device")
    return task
