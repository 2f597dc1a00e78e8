"""Jobs (submit, list, inspect, cancel, results), hybrid programs and their logs, tasks."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from qhpc.api import rules
from qhpc.api.deps import BrokerDep, CurrentPrincipal
from qhpc.api.models import (
    IdempotencyKey,
    JobSubmission,
    PathId,
    ProgramSubmission,
    QueryName,
    TaskStateName,
)
from qhpc.api.problems import InvalidRequest
from qhpc.api.views import (
    CancelView,
    JobResults,
    JobSummary,
    JobView,
    LogsView,
    TaskDetail,
    TaskResultView,
    job_summary,
    program_view,
    result_json,
    task_view,
)
from qhpc.api.wire import payloads_of
from qhpc.broker import Broker, Idempotency, scope_of
from qhpc.security import Principal
from qhpc.states import OPEN_STATES, TaskStatus
from qhpc.store import JobRecord

jobs = APIRouter(prefix="/jobs", tags=["jobs"])
tasks = APIRouter(prefix="/tasks", tags=["tasks"])
programs = APIRouter(prefix="/programs", tags=["programs"])

#: longest a GET /tasks/{id}?wait= may hold a request (and a server thread)
MAX_WAIT_SECONDS = 60.0


def _job_view(broker: Broker, job: JobRecord) -> JobView:
    records = broker.tasks_of_job(job.job_id)
    places = {}
    if any(t.state == TaskStatus.QUEUED for t in records):
        places = rules.queue_places(broker, job.resource)
    program = program_view(broker.programs.info(job.job_id)) if job.kind == "hybrid" else None
    return JobView(
        **job_summary(job).model_dump(),
        tasks=[task_view(t, places.get(t.task_id)) for t in records],
        program=program,
    )


#: set on the answer to a submission that repeated an earlier one's Idempotency-Key
REPLAYED_HEADER = "Idempotent-Replayed"


def _idempotency(
    principal: Principal, key: str | None, kind: str, body: BaseModel
) -> Idempotency | None:
    if key is None:
        return None
    # The validated model, not the raw bytes: key order, spacing and spelled-out
    # defaults do not make a retry look like another request.
    canonical = json.dumps(
        [kind, body.model_dump(mode="json")], sort_keys=True, separators=(",", ":")
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return Idempotency(scope=scope_of(principal), key=key, request_hash=digest)


def _prior(broker: Broker, idempotency: Idempotency | None, response: Response) -> JobRecord | None:
    """The job of an earlier submission with this key (409 if it had another body).

    Answered from the store, without parsing circuits or checking the resource again.
    A concurrent first use is settled by the broker instead, whose submit then returns
    the job that won (without the replay header).
    """
    prior = broker.keys.prior(idempotency)
    if prior is not None:
        response.headers[REPLAYED_HEADER] = "true"
    return prior


_IDEMPOTENT = (
    " With an Idempotency-Key header, a repeat of the same request (a retry after a lost "
    "answer) answers 201 with the job the first one made (header Idempotent-Replayed: true) "
    "instead of storing another; the same key with another body is a 409."
)


@programs.post(
    "",
    status_code=201,
    summary="submit a hybrid job: a program the broker runs next to the QPU",
    description="The program (source, or a server-side entry_point) runs in the broker's "
    "runtime pool with a QPU handle on a session of the job's owner. The job is stored "
    "before this answers; follow it with GET /v1/jobs/{id} (progress), "
    "GET /v1/jobs/{id}/logs and GET /v1/jobs/{id}/results (return value, timings). "
    "A syntax error is refused here (422, with line and column)." + _IDEMPOTENT,
)
def submit_program(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    body: ProgramSubmission,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    owner = rules.resolve_owner(
        broker, principal, resource=body.resource, user=body.user, account=body.account,
        centre=body.centre,
    )  # fmt: skip
    idempotency = _idempotency(principal, idempotency_key, "programs", body)
    prior = _prior(broker, idempotency, response)
    if prior is not None:
        return _job_view(broker, prior)
    job = broker.programs.submit(
        user=owner.user, account=owner.account, centre=owner.centre, resource=body.resource,
        source=body.source, entry_point=body.entry_point, entry=body.entry, args=body.args,
        timeout=body.timeout, max_iterations=body.max_iterations, name=body.name,
        filename=body.filename, idempotency=idempotency,
    )  # fmt: skip
    return _job_view(broker, broker.get_job(job.job_id))


@jobs.post(
    "",
    status_code=201,
    summary="submit a batch job (circuits or encoded payloads)",
    description="The job is stored before this answers." + _IDEMPOTENT,
)
def submit_job(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    body: JobSubmission,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobView:
    owner = rules.resolve_owner(
        broker, principal, resource=body.resource, user=body.user, account=body.account,
        centre=body.centre,
    )  # fmt: skip
    rules.check_priority(principal, body.priority)
    idempotency = _idempotency(principal, idempotency_key, "jobs", body)
    prior = _prior(broker, idempotency, response)
    if prior is not None:
        return _job_view(broker, prior)
    broker.resources.check_name(body.resource)  # unknown → 404 before parsing circuits
    payloads = payloads_of(body, broker.decoder, split=body.split_circuits)
    job = broker.submit(
        user=owner.user, account=owner.account, centre=owner.centre, resource=body.resource,
        payloads=payloads, priority=body.priority, name=body.name, idempotency=idempotency,
    )  # fmt: skip
    return _job_view(broker, job)


@jobs.get("", summary="jobs visible to the token, newest first")
def list_jobs(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    state: TaskStateName | None = None,
    resource: QueryName = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[JobSummary]:
    found = rules.list_visible_jobs(
        broker, principal, state=state, resource=resource, limit=limit, offset=offset
    )
    return [job_summary(j) for j in found]


@jobs.get("/{job_id}", summary="a job with its tasks, queue positions and ETAs")
def get_job(broker: BrokerDep, principal: CurrentPrincipal, job_id: PathId) -> JobView:
    return _job_view(broker, rules.visible_job(broker, principal, job_id))


@jobs.delete("/{job_id}", summary="cancel a job: queued tasks now, running ones stopped")
def cancel_job(broker: BrokerDep, principal: CurrentPrincipal, job_id: PathId) -> CancelView:
    rules.visible_job(broker, principal, job_id)
    affected = broker.cancel(job_id)
    job = broker.get_job(job_id)
    return CancelView(**job_summary(job).model_dump(), affected_tasks=affected)


@jobs.get(
    "/{job_id}/results",
    summary="per task: state, error and result",
    description="410 Gone once the job's results were purged (the broker keeps results for "
    "a limited time; the job and its accounting stay).",
)
def job_results(broker: BrokerDep, principal: CurrentPrincipal, job_id: PathId) -> JobResults:
    job = rules.kept(rules.visible_job(broker, principal, job_id))
    views = []
    for task in broker.tasks_of_job(job_id):
        result = broker.task_result(task.task_id) if task.state == TaskStatus.COMPLETED else None
        views.append(
            TaskResultView(
                task_id=task.task_id, index=task.index, state=task.state, error=task.error,
                result=result_json(result),
            )
        )  # fmt: skip
    program = program_view(broker.programs.info(job_id)) if job.kind == "hybrid" else None
    return JobResults(job_id=job.job_id, state=job.state, tasks=views, program=program)


@jobs.get(
    "/{job_id}/logs",
    summary="a hybrid job's program output (stdout, stderr), from offsets on",
    description="Offsets are byte offsets into each stream (UTF-8). Poll with the offsets "
    "of the previous answer to follow the output; final is true once the program has ended. "
    "Output is stored while the program runs, so it survives a broker crash; each stream keeps "
    "its first BrokerConfig.program_output_limit bytes (default 4 MiB), ending in a "
    "truncation marker when the program printed more. 410 Gone once the output was purged "
    "(retention).",
)
def job_logs(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    job_id: PathId,
    stdout_offset: Annotated[int, Query(ge=0, le=2**40)] = 0,
    stderr_offset: Annotated[int, Query(ge=0, le=2**40)] = 0,
) -> LogsView:
    job = rules.visible_job(broker, principal, job_id)
    if job.kind != "hybrid":
        raise InvalidRequest(f"job {job_id} is a {job.kind} job; only hybrid jobs have logs")
    rules.kept(job)
    logs = broker.programs.logs(job_id, stdout_offset, stderr_offset)
    return LogsView(
        job_id=job_id, stdout=logs.stdout, stderr=logs.stderr,
        stdout_offset=logs.stdout_offset, stderr_offset=logs.stderr_offset, final=logs.final,
    )  # fmt: skip


@tasks.get(
    "/{task_id}",
    summary="one task; with wait=SECONDS, blocks until it is final or the time is up",
    description="410 Gone for a completed task whose result was purged (retention).",
)
def get_task(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    task_id: PathId,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)] = 0.0,
) -> TaskDetail:
    task = rules.visible_task(broker, principal, task_id)
    if wait > 0 and task.state in OPEN_STATES:
        task = broker.wait_task(task_id, timeout=wait)
    place = None
    if task.state == TaskStatus.QUEUED:
        place = rules.queue_places(broker, task.resource).get(task_id)
    result = broker.task_result(task_id) if task.state == TaskStatus.COMPLETED else None
    return TaskDetail(**task_view(task, place).model_dump(), result=result_json(result))
