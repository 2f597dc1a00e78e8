"""Response bodies of the REST API and their construction from store records.

Token views carry neither the hash nor the secret; the secret appears only in
:class:`TokenCreated` / :class:`SessionCreated`, once, when it is made.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from qhpc.broker import Admission, ProgramInfo
from qhpc.resources import TaskResult
from qhpc.store import (
    AccountRecord,
    DrainRecord,
    JobRecord,
    ReservationRecord,
    SessionRecord,
    TaskRecord,
    TokenRecord,
)


class Problem(BaseModel):
    """RFC 9457 problem details; some problems add fields (line, column, errors …)."""

    type: str
    title: str
    status: int
    detail: str


class Health(BaseModel):
    status: str


class VersionInfo(BaseModel):
    version: str
    api: str


class ResourceSummary(BaseModel):
    name: str
    type: str
    state: str
    busy: bool
    pending: int = Field(description="tasks pending inside the device (vendor queue)")
    reason: str
    until: float | None = Field(
        None, description="UNIX seconds when the state is expected to end (a drain's end), if known"
    )
    queue_length: int = Field(description="tasks waiting in the broker for this resource")
    running: bool = Field(description="the broker is running a task on it now")


class ResourceDetail(ResourceSummary):
    target: dict[str, Any]
    metadata: dict[str, Any]


class PoolMember(BaseModel):
    name: str
    state: str = Field(description="the broker's view, in QDMI's words (a drain: maintenance)")
    reason: str
    until: float | None = Field(description="UNIX seconds the state is expected to end, if known")
    queue_length: int = Field(description="tasks waiting in the broker for it")
    sessions: int = Field(description="sessions open on it")
    eta_seconds: float | None = Field(
        description="seconds until a task queued on it now would start, behind all its "
        "queued work; null while not known (drained until resumed, out of service with no "
        "expected end)"
    )


class PoolView(BaseModel):
    name: str
    policy: str = Field(description="how the member is chosen: lowest-eta")
    members: list[PoolMember] = Field(description="in the order the configuration lists them")


class QueueEntry(BaseModel):
    position: int
    eta_seconds: float | None = Field(
        description="seconds from now until it is expected to start; null while that is not "
        "known (the resource is drained until an operator resumes it)"
    )
    mine: bool
    task_id: str | None = None
    job_id: str | None = None
    user: str | None = None
    account: str | None = None
    session_id: str | None = None


class QueueView(BaseModel):
    resource: str
    length: int
    entries: list[QueueEntry]


class TaskView(BaseModel):
    task_id: str
    job_id: str
    index: int
    resource: str
    state: str
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    attempts: int
    session_id: str | None
    queue_position: int | None = None
    eta_seconds: float | None = None


class TaskDetail(TaskView):
    result: dict[str, Any] | None = None


class JobSummary(BaseModel):
    job_id: str
    name: str | None
    user: str
    account: str
    centre: str | None
    resource: str
    kind: str
    priority: int
    state: str
    created_at: float
    finished_at: float | None
    session_id: str | None
    task_count: int
    purged_at: float | None = Field(
        default=None,
        description="when the job's results, output and sources were purged (retention); "
        "its accounting is kept",
    )
    pool: str | None = Field(
        default=None,
        description="the pool it was submitted to (resource: the member the broker chose); "
        "null when it named its resource",
    )


class ProgramView(BaseModel):
    """A hybrid job's program: status, progress while it runs, outcome once it ended."""

    status: str = Field(
        description="queued, running, completed, failed, timeout, cancelled, limit or killed"
    )
    message: str | None = Field(description="why it ended that way (traceback, limit …)")
    entry: str
    entry_point: str | None
    timeout: float
    max_iterations: int | None
    session_id: str | None
    iterations: int = Field(description="the last iteration the program reported")
    progress: dict[str, Any] | None = Field(description="its last report(iteration, value, …)")
    progress_line: str | None = Field(description="the same, as one line")
    qpu_calls: int = Field(description="tasks the program sent to its QPU")
    return_value: Any = Field(description="what the entry function returned (JSON)")
    timings: dict[str, float] = Field(
        description="seconds: initialisation_s, run_s, classical_s, qpu_s, dispatch_overhead_s, "
        "dispatch_overhead_per_call_s, termination_s, total_s"
    )
    started_at: float | None
    finished_at: float | None


class JobView(JobSummary):
    tasks: list[TaskView]
    program: ProgramView | None = Field(None, description="hybrid jobs only")


class LogsView(BaseModel):
    job_id: str
    stdout: str = Field(description="standard output from stdout_offset on")
    stderr: str = Field(description="standard error from stderr_offset on")
    stdout_offset: int = Field(
        description="bytes of stdout so far (UTF-8): pass back as stdout_offset to get only "
        "what is new"
    )
    stderr_offset: int = Field(description="the same for stderr")
    final: bool = Field(description="the program has ended: nothing more will come")


class CancelView(JobSummary):
    affected_tasks: list[str]


class TaskResultView(BaseModel):
    task_id: str
    index: int
    state: str
    error: str | None
    result: dict[str, Any] | None


class JobResults(BaseModel):
    job_id: str
    state: str
    tasks: list[TaskResultView]
    program: ProgramView | None = Field(None, description="hybrid jobs only")


class SessionView(BaseModel):
    session_id: str
    resource: str
    user: str
    account: str
    centre: str | None
    mode: str
    opened_at: float
    deadline: float
    closed_at: float | None
    slurm_job_id: str | None
    pool: str | None = Field(
        default=None,
        description="the pool it was opened on (resource: the member the broker chose)",
    )


class SessionCreated(SessionView):
    token: str = Field(description="the session token; shown only in this response")
    eta_seconds: float | None = Field(
        default=None,
        description="when it opened: seconds until a task queued on its resource would start "
        "behind all queued work (session tasks usually go sooner); null while not known "
        "(drained until resumed, out of service with no expected end)",
    )


class SessionTaskCreated(BaseModel):
    task_id: str
    session_id: str


class ReservationView(BaseModel):
    reservation_id: str
    resource: str
    account: str
    start: float
    end: float
    allow_backfill: bool
    created_by: str


class AccountView(BaseModel):
    name: str
    shares: float
    centre: str | None


class UsageRow(BaseModel):
    group: str | None
    tasks: int
    qpu_seconds: float
    shots: int
    circuits: int


class AccountingView(BaseModel):
    group_by: str
    since: float | None
    until: float | None
    rows: list[UsageRow]


class TokenView(BaseModel):
    token_id: str
    role: str
    subject: str
    account: str | None
    centre: str | None
    session_id: str | None
    resource: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None


class TokenCreated(TokenView):
    token: str = Field(description="the secret; shown only in this response")


# -- construction ----------------------------------------------------------------------


def job_summary(job: JobRecord) -> JobSummary:
    return JobSummary(
        job_id=job.job_id, name=job.name, user=job.user, account=job.account,
        centre=job.centre, resource=job.resource, kind=job.kind, priority=job.priority,
        state=job.state, created_at=job.created_at, finished_at=job.finished_at,
        session_id=job.session_id, task_count=job.task_count, purged_at=job.purged_at,
        pool=job.pool,
    )  # fmt: skip


def program_view(info: ProgramInfo) -> ProgramView:
    record = info.record
    return ProgramView(
        status=record.status, message=record.message, entry=record.entry,
        entry_point=record.entry_point, timeout=record.timeout,
        max_iterations=record.max_iterations, session_id=record.session_id,
        iterations=record.iterations, progress=info.progress, progress_line=info.progress_line,
        qpu_calls=info.qpu_calls, return_value=info.return_value, timings=info.timings,
        started_at=record.started_at, finished_at=record.finished_at,
    )  # fmt: skip


def known(seconds: float) -> float | None:
    """An ETA as the API shows it: None for one that is not known (inf)."""
    return seconds if math.isfinite(seconds) else None


class AdmittedSession(BaseModel):
    session_id: str | None = Field(
        description="null for another centre's session (a centre token sees its own only)"
    )
    duty_cycle: float | None = Field(
        description="the fraction of its time the session keeps the QPU busy, its waits in "
        "the queue taken out; null until it has finished enough tasks to be measured"
    )


class ResourceAdmission(BaseModel):
    """How many sessions may hold a resource now (``Broker.admission``); plain numbers,
    for the Slurm feedback agent: it holds ``hold`` of the ``licences``."""

    resource: str
    admitted: int = Field(
        description="sessions that may hold the QPU now (1 ≤ admitted ≤ licences)"
    )
    open: int = Field(description="sessions open on it now")
    licences: int = Field(description="Slurm's licence total used (the request's, or the broker's)")
    hold: int = Field(description="licences − admitted: what Slurm should keep back")
    target: float = Field(description="the latency ratio a session may reach (over alone)")
    prior: float = Field(description="duty cycle assumed for unmeasured and future sessions")
    duty_cycles: list[float | None] = Field(description="the open sessions', oldest first")
    predicted_latency_ratio: float = Field(
        description="the worst-off session's predicted latency over alone with `admitted` sessions"
    )
    open_latency_ratio: float = Field(
        description="the same for the sessions open now (above target: more are open than fit)"
    )
    at: float = Field(description="UNIX seconds of the measurement")
    sessions: list[AdmittedSession]


def admission_view(admission: Admission, shown: Callable[[str], bool]) -> ResourceAdmission:
    """The API's view of an admission; ``shown(session_id)``: may the caller see that id."""
    sessions = [
        AdmittedSession(session_id=sid if shown(sid) else None, duty_cycle=duty)
        for sid, duty in zip(admission.session_ids, admission.duty_cycles, strict=True)
    ]
    return ResourceAdmission(
        resource=admission.resource, admitted=admission.admitted, open=admission.open,
        licences=admission.licences, hold=admission.hold, target=admission.target,
        prior=admission.prior, duty_cycles=list(admission.duty_cycles),
        predicted_latency_ratio=admission.predicted_latency_ratio,
        open_latency_ratio=admission.open_latency_ratio, at=admission.at, sessions=sessions,
    )  # fmt: skip


class DrainView(BaseModel):
    resource: str
    reason: str
    since: float
    until: float | None = Field(description="UNIX seconds the drain ends; null: until resumed")
    drained_by: str


def drain_view(drain: DrainRecord) -> DrainView:
    return DrainView(
        resource=drain.resource, reason=drain.reason, since=drain.since, until=drain.until,
        drained_by=drain.drained_by,
    )  # fmt: skip


def task_view(task: TaskRecord, place: tuple[int, float] | None = None) -> TaskView:
    return TaskView(
        task_id=task.task_id, job_id=task.job_id, index=task.index, resource=task.resource,
        state=task.state, submitted_at=task.submitted_at, started_at=task.started_at,
        finished_at=task.finished_at, error=task.error, attempts=task.attempts,
        session_id=task.session_id,
        queue_position=None if place is None else place[0],
        eta_seconds=None if place is None else known(place[1]),
    )  # fmt: skip


def session_view(session: SessionRecord) -> SessionView:
    return SessionView(
        session_id=session.session_id, resource=session.resource, user=session.user,
        account=session.account, centre=session.centre, mode=session.mode,
        opened_at=session.opened_at, deadline=session.deadline, closed_at=session.closed_at,
        slurm_job_id=session.slurm_job_id, pool=session.pool,
    )  # fmt: skip


def reservation_view(r: ReservationRecord) -> ReservationView:
    return ReservationView(
        reservation_id=r.reservation_id, resource=r.resource, account=r.account, start=r.start,
        end=r.end, allow_backfill=r.allow_backfill, created_by=r.created_by,
    )  # fmt: skip


def account_view(a: AccountRecord) -> AccountView:
    return AccountView(name=a.name, shares=a.shares, centre=a.centre)


def token_view(t: TokenRecord) -> TokenView:
    # Built field by field (not from asdict) so token_hash can never slip through.
    return TokenView(
        token_id=t.token_id, role=t.role, subject=t.subject, account=t.account,
        centre=t.centre, session_id=t.session_id, resource=t.resource,
        created_at=t.created_at, expires_at=t.expires_at, revoked_at=t.revoked_at,
    )  # fmt: skip


def result_json(result: TaskResult | None) -> dict[str, Any] | None:
    return None if result is None else json_safe(result.to_dict())


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN/inf become null, bytes become base64 text, unknown objects text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return str(value)
