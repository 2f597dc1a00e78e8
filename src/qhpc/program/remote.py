"""``RemoteQPU``: a resource behind a qhpc broker, with the interface of a local QPU.

A batch becomes one broker job whose tasks are the batch's payloads (the same
translation as :class:`~qhpc.program.LocalQPU`): ``submit_payloads`` →
``wait`` → ``results``. The broker accepts a job whole or not at all, and a
submission that stops early (timeout, cancellation, interrupt) cancels its
broker job, so nothing half-submitted is left queued.

A *stack* over a RemoteQPU is the same code as over a local one. Where the
broker offers server-side stacks, the whole stack travels (its spec, see
:mod:`qhpc.program.registry`) and is rebuilt and run next to the QPU as one
hybrid job, its tasks at session priority (``stacks="auto"`` or ``"broker"``);
every plugin must then be registered, and one that is not is refused by name
before anything is sent. ``stacks="client"`` keeps the plugins on the client
(one broker job per batch the plugins submit).
"""

from __future__ import annotations

import time
from typing import Any

from qhpc.client import Client, ClientError
from qhpc.program.errors import CancelledError, JobError, RemoteError
from qhpc.program.executor import Executor, PayloadPlan
from qhpc.program.future import current_future
from qhpc.program.job import Batch
from qhpc.program.result import BatchResult
from qhpc.resources.errors import TaskFailedError
from qhpc.resources.payload import Payload, TaskResult
from qhpc.resources.target import DeviceTarget
from qhpc.states import FINAL_STATES

#: where the plugins of a stack over a RemoteQPU run
STACK_MODES = ("auto", "broker", "client")


class RemoteQPU(Executor):
    """The broker resource ``resource``, reached through ``client``.

    ``timeout`` bounds each broker job (seconds, None: no limit); ``priority``,
    ``account`` and ``job_name`` are passed on with every submission.
    ``stacks``: ``"auto"`` runs whole stacks on the broker when it offers
    server-side stacks, else their plugins on the client; ``"broker"`` insists
    on the broker; ``"client"`` always runs plugins on the client.
    """

    def __init__(
        self,
        client: Client,
        resource: str,
        *,
        timeout: float | None = None,
        priority: int = 0,
        account: str | None = None,
        job_name: str | None = None,
        stacks: str = "auto",
    ) -> None:
        if stacks not in STACK_MODES:
            raise ValueError(f"stacks must be one of {STACK_MODES}, not {stacks!r}")
        self.client = client
        self.stacks = stacks
        self._broker_stacks: bool | None = None
        self.name = resource
        self.timeout = timeout
        self.priority = priority
        self.account = account
        self.job_name = job_name
        self._specs: DeviceTarget | None = None
        self.specs()  # an unknown resource fails here, not at the first submission

    def specs(self) -> DeviceTarget:
        if self._specs is None:
            try:
                data = self.client.resource(self.name)
            except ClientError as exc:
                if exc.status == 404:
                    known = ", ".join(r["name"] for r in self.client.resources())
                    raise RemoteError(
                        f"unknown resource {self.name!r} at {self.client.url}; known: {known}"
                    ) from exc
                raise RemoteError(f"{self.name} at {self.client.url}: {exc}") from exc
            self._specs = DeviceTarget.from_dict(data["target"])
        return self._specs

    # the primitives' task-runner protocol, so Qiskit's SamplerV2/EstimatorV2 run remotely too
    def target(self) -> DeviceTarget:
        return self.specs()

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        answer = self._run_payloads([payload], "a primitive task", timeout)[0]
        if answer is None:
            raise TaskFailedError(f"{self.name}: the broker returned no result")
        return answer

    # -- whole stacks on the broker ------------------------------------------------------
    def runs_stacks(self) -> bool:
        """Whether stacks over this QPU run on the broker (asked once, then remembered)."""
        if self.stacks == "client":
            return False
        if self._broker_stacks is None:
            self._broker_stacks = self.client.offers_programs()
        if not self._broker_stacks and self.stacks == "broker":
            raise RemoteError(
                f"the broker at {self.client.url} does not run stacks server side; "
                "use RemoteQPU(..., stacks='client') to run the plugins here"
            )
        return self._broker_stacks

    def run_stack(self, stack: Any, batch: Batch) -> BatchResult | None:
        if not self.runs_stacks():
            return None
        from qhpc.program.server import ENTRY_NAME, decode_answer, make_request

        request = make_request(stack, batch, self.specs())  # PluginSpecError: nothing sent
        what = f"stack {stack.name} on {batch.describe()}"
        future = current_future()
        if future is not None and future.cancel_requested:
            raise CancelledError(f"{future.name} was cancelled before {what} was submitted")
        try:
            job = self.client.submit_program(
                self.name, entry_point=ENTRY_NAME, args=request, account=self.account,
                name=self.job_name or stack.name, timeout=self.timeout,
            )  # fmt: skip
        except ClientError as exc:
            raise JobError(f"the broker refused {what}: {exc.detail}") from exc
        job_id = str(job["job_id"])
        if future is not None:
            future.remote_jobs.append(job_id)
        finished = False
        try:
            program = self._wait_program(job_id)
            finished = True
        finally:
            if not finished:
                self._cancel_quietly(job_id)
        status = str(program.get("status"))
        if status != "completed":
            message = str(program.get("message") or "no message")
            raise RemoteError(f"broker job {job_id} ({what}) {status}: {message}")
        result = decode_answer(program.get("return_value"))
        return result.replace(meta={**result.meta, "broker": self.client.url, "job_id": job_id})

    def _wait_program(self, job_id: str) -> dict[str, Any]:
        future = current_future()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        pause = 0.002  # a short stack ends in milliseconds; grow the pause for long ones
        if future is not None:
            future.set_probe(lambda: str(self.client.job(job_id)["state"]))
        try:
            while True:
                program = self.client.program(job_id)
                if str(program.get("status")) not in {"queued", "running"}:
                    return program
                if deadline is not None and time.monotonic() >= deadline:
                    raise RemoteError(f"broker job {job_id} is not done after {self.timeout} s")
                if future is not None:
                    if future.wait_cancel(pause):
                        raise CancelledError(f"{future.name} was cancelled (broker job {job_id})")
                else:
                    time.sleep(pause)
                pause = min(pause * 1.3, 0.05)
        except ClientError as exc:
            raise RemoteError(f"lost broker job {job_id}: {exc}") from exc
        finally:
            if future is not None:
                future.set_probe(None)

    # -- batches ----------------------------------------------------------------------------
    def _submit_batch(self, batch: Batch) -> BatchResult:
        plan = PayloadPlan.build(batch, self.specs())
        answers = self._run_payloads(plan.payloads, batch.describe(), self.timeout, plan)
        meta = {"resource": self.name, "payloads": len(plan.payloads), "broker": self.client.url}
        return BatchResult(tuple(plan.results(answers)), meta)

    def _run_payloads(
        self,
        payloads: list[Payload],
        what: str,
        timeout: float | None,
        plan: PayloadPlan | None = None,
    ) -> list[TaskResult | None]:
        future = current_future()
        if future is not None and future.cancel_requested:
            raise CancelledError(f"{future.name} was cancelled before {what} was submitted")
        try:
            job = self.client.submit_payloads(
                self.name, payloads, self.priority, self.account, self.job_name
            )
        except ClientError as exc:
            raise JobError(f"the broker refused {what}: {exc.detail}") from exc
        job_id = str(job["job_id"])
        if future is not None:
            future.remote_jobs.append(job_id)
        finished = False
        try:
            task_ids = [str(t["task_id"]) for t in job.get("tasks", [])]
            state = self._wait(job_id, task_ids, timeout)
            finished = True
            if state != "completed":
                raise RemoteError(self._failure(job_id, state, what, plan))
            return self.client.results(job_id)
        finally:
            if not finished:
                self._cancel_quietly(job_id)

    def _wait(self, job_id: str, task_ids: list[str], timeout: float | None) -> str:
        future = current_future()
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        if future is not None:
            future.set_probe(lambda: str(self.client.job(job_id)["state"]))
        try:
            # Long-poll each task (the broker answers the moment it is final) instead
            # of polling the job: an evaluation then costs one round trip, not a sleep.
            # Chunks of at most a second keep a cancel of the future responsive.
            for task_id in task_ids:
                while True:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    chunk = 1.0 if left is None else min(1.0, left)
                    if str(self.client.task(task_id, wait=chunk)["state"]) in FINAL_STATES:
                        break
                    if future is not None and future.cancel_requested:
                        raise CancelledError(f"{future.name} was cancelled (broker job {job_id})")
            while True:
                state = str(self.client.job(job_id)["state"])
                if state in FINAL_STATES:
                    return state
                if deadline is not None and time.monotonic() >= deadline:
                    raise RemoteError(f"broker job {job_id} is still {state} after {timeout} s")
                if future is not None:
                    if future.wait_cancel(pause):
                        raise CancelledError(f"{future.name} was cancelled (broker job {job_id})")
                else:
                    time.sleep(pause)
                pause = min(pause * 1.5, 0.5)
        except ClientError as exc:
            raise RemoteError(f"lost broker job {job_id}: {exc}") from exc
        finally:
            if future is not None:
                future.set_probe(None)

    def _failure(self, job_id: str, state: str, what: str, plan: PayloadPlan | None) -> str:
        lines = [f"broker job {job_id} on {self.name} {state} ({what})"]
        try:
            for task in self.client.job(job_id)["tasks"]:
                if task.get("error"):
                    where = plan.describe(int(task["index"])) if plan else f"task {task['index']}"
                    lines.append(f"{where}: {task['error']}")
        except (ClientError, KeyError, IndexError):
            pass
        return "; ".join(lines)

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.client.cancel(job_id)
        except ClientError:
            pass  # already final, or the broker is gone: nothing more to do

    def __repr__(self) -> str:
        return f"RemoteQPU({self.name} at {self.client.url})"


def target_from_dict(data: dict[str, Any]) -> DeviceTarget:
    """The inverse of ``DeviceTarget.to_dict``: kept for callers of this name, it is
    :meth:`DeviceTarget.from_dict <qhpc.resources.DeviceTarget.from_dict>`."""
    return DeviceTarget.from_dict(data)


def qpu(client: Client, name: str, **options: Any) -> RemoteQPU:
    """``qpu(qhpc.connect(url, token), "aer")``: the broker resource ``name`` as a QPU
    (``qhpc.connect(url, token).qpu(name)`` is the same, and inside a session uses
    the fast path)."""
    return RemoteQPU(client, name, **options)
