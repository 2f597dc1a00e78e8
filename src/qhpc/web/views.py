"""What the console shows, as plain records built for one viewer: the view models.

Every builder takes the viewer's :class:`~qhpc.security.Principal` and returns only
what that principal may see, so the pages, their live panels and the JSON endpoints
(all built from these records) cannot disagree about visibility:

- admins see everything;
- a centre token sees its centre's work, a user token its own
  (:meth:`Principal.may_act_for`: a user name counts within its centre only);
- everyone sees every resource's card, the utilisation timeline (aggregate figures)
  and every queue's length and ETAs, but another's queue entry only as a position;
- usage against share: admins every account, centres their centre's accounts,
  users their own account.

Free text that tenants choose (job names, task errors) is cut to a bounded length
here; escaping is the templates' business (Jinja2 autoescape).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from qhpc.broker import Broker
from qhpc.resources import ResourceStatus
from qhpc.security import Principal, Role
from qhpc.states import OPEN_STATES, TaskStatus
from qhpc.store import JobRecord, NotFoundError, SessionRecord, TaskRecord, UsageRecord

#: characters of a job name shown (the rest is cut, marked with …)
NAME_LIMIT = 80
#: characters of a task's error or a program's message shown
TEXT_LIMIT = 300
#: queue entries listed per resource (the rest are counted)
QUEUE_ROWS = 50
#: jobs listed on the overview, newest first
JOB_ROWS = 50
#: hybrid programs listed on the overview (of the jobs listed)
PROGRAM_ROWS = 10
#: tasks listed on a job's page
TASK_ROWS = 200


def resource_status(broker: Broker, name: str) -> ResourceStatus:
    """A resource's state as the console shows it: the broker's view (a drain wins
    over what the device says), read in this one place."""
    return broker.resource_status(name)


def cut(text: str | None, limit: int) -> str | None:
    """``text`` of at most ``limit`` characters, ending in … when it was longer."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


@dataclass(frozen=True)
class Viewer:
    subject: str
    role: str
    account: str | None
    centre: str | None
    is_admin: bool


def viewer(principal: Principal) -> Viewer:
    return Viewer(
        principal.subject, str(principal.role), principal.account, principal.centre,
        principal.is_admin,
    )  # fmt: skip


@dataclass(frozen=True)
class ResourceCard:
    name: str
    type: str
    state: str
    reason: str
    running: bool
    queue_length: int
    #: busy fraction of the last hour (from usage records), None when unknown
    utilisation: float | None
    #: known calibration and offline windows, as sentences
    windows: list[str]


@dataclass(frozen=True)
class QueueRow:
    position: int
    eta_seconds: float
    mine: bool
    #: False: another's entry, shown as a position only (the fields below are None)
    visible: bool
    task_id: str | None = None
    job_id: str | None = None
    user: str | None = None
    account: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class ResourceQueue:
    resource: str
    length: int
    rows: list[QueueRow]
    #: entries past the rows listed, and how many of them are the viewer's
    more: int
    more_mine: int


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str | None
    user: str
    account: str
    centre: str | None
    resource: str
    kind: str
    state: str
    task_count: int
    created_at: float
    finished_at: float | None
    open: bool


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    resource: str
    user: str
    account: str
    mode: str
    slurm_job_id: str | None
    opened_at: float
    deadline: float


@dataclass(frozen=True)
class ProgramRow:
    job_id: str
    name: str | None
    status: str
    iterations: int
    qpu_calls: int
    progress: str | None
    message: str | None


@dataclass(frozen=True)
class AccountRow:
    account: str
    centre: str | None
    shares: float
    #: the account's part of all shares, and of all (decayed) usage
    share_fraction: float
    usage_fraction: float
    usage_seconds: float


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    index: int
    state: str
    position: int | None
    eta_seconds: float | None
    attempts: int
    error: str | None
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class Overview:
    at: float
    viewer: Viewer
    cards: list[ResourceCard]
    queues: list[ResourceQueue]
    jobs: list[JobRow]
    sessions: list[SessionRow]
    programs: list[ProgramRow]
    accounts: list[AccountRow]
    #: resource → busy fraction per bucket, oldest first (see ``utilisation``)
    timeline: dict[str, list[float]] = field(default_factory=dict)
    timeline_bucket_seconds: float = 0.0


@dataclass(frozen=True)
class JobDetail:
    job: JobRow
    tasks: list[TaskRow]
    more_tasks: int
    program: ProgramRow | None


def as_json(record: Any) -> Any:
    """A view model as JSON-ready data."""
    return asdict(record)


# -- builders ---------------------------------------------------------------------------


def job_row(job: JobRecord) -> JobRow:
    return JobRow(
        job.job_id, cut(job.name, NAME_LIMIT), job.user, job.account, job.centre, job.resource,
        job.kind, job.state, job.task_count, job.created_at, job.finished_at,
        job.state in OPEN_STATES,
    )  # fmt: skip


def visible_jobs(broker: Broker, principal: Principal, limit: int = JOB_ROWS) -> list[JobRecord]:
    """The newest jobs the principal may see (none for a session token)."""
    if principal.role is Role.ADMIN:
        found = broker.records.jobs(limit=limit)
    elif principal.role is Role.CENTRE and principal.centre is not None:
        found = broker.records.jobs(centre=principal.centre, limit=limit)
    elif principal.role is Role.USER:
        found = broker.records.jobs(user=principal.subject, limit=limit)
    else:
        found = []
    return [j for j in found if principal.may_act_for(j.user, j.centre)]


def visible_job(broker: Broker, principal: Principal, job_id: str) -> JobRecord | None:
    """The job if it exists and the principal may see it; None for both other cases."""
    if principal.role is Role.SESSION:
        return None
    try:
        job = broker.get_job(job_id)
    except NotFoundError:
        return None
    return job if principal.may_act_for(job.user, job.centre) else None


def cards(broker: Broker, utilisation: dict[str, list[float]]) -> list[ResourceCard]:
    found = []
    for name in broker.resources.names():
        spec = broker.resources.spec(name)
        status = resource_status(broker, name)
        series = utilisation.get(name)
        found.append(
            ResourceCard(
                name, spec.type, str(status.state), status.reason, broker.is_busy(name),
                broker.queue_length(name), sum(series) / len(series) if series else None,
                _windows(broker.resources.get(name).metadata()),
            )
        )  # fmt: skip
    return found


def _windows(metadata: dict[str, Any]) -> list[str]:
    """Calibration and offline windows an adapter declares (the emulator's keys)."""
    found = []
    calibration = metadata.get("calibration")
    if isinstance(calibration, dict):
        every, duration = calibration.get("every_s"), calibration.get("duration_s")
        if isinstance(every, int | float) and isinstance(duration, int | float):
            found.append(f"calibrates for {duration:g} s every {every:g} s (device time)")
    offline = metadata.get("offline")
    if isinstance(offline, list):
        for window in offline[:5]:
            if isinstance(window, list) and len(window) == 2:
                found.append(f"offline from t={window[0]:g} s to t={window[1]:g} s (device time)")
    return found


class _Owners:
    """Job owners looked up once per build (a queue entry names its job, not its centre)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._seen: dict[str, tuple[str, str | None] | None] = {}

    def sees(self, principal: Principal, job_id: str, user: str) -> bool:
        if principal.role is Role.ADMIN:
            return True
        if principal.role is Role.USER and user != principal.subject:
            return False  # most entries: decided without a lookup
        if job_id not in self._seen:
            try:
                job = self.broker.get_job(job_id)
                self._seen[job_id] = (job.user, job.centre)
            except NotFoundError:
                self._seen[job_id] = None
        owner = self._seen[job_id]
        return owner is not None and principal.may_act_for(*owner)


def queues(broker: Broker, principal: Principal) -> list[ResourceQueue]:
    owners = _Owners(broker)
    found = []
    for name in broker.resources.names():
        entries = broker.queue(name)
        rows = []
        more = more_mine = 0
        for position, (task, eta) in enumerate(entries, start=1):
            if position > QUEUE_ROWS:
                more += 1
                more_mine += task.user == principal.subject and owners.sees(
                    principal, task.job_id, task.user
                )
                continue
            if owners.sees(principal, task.job_id, task.user):
                mine = task.user == principal.subject
                rows.append(
                    QueueRow(
                        position, eta, mine, True, task.task_id, task.job_id, task.user,
                        task.account, task.session_id,
                    )
                )  # fmt: skip
            else:
                rows.append(QueueRow(position, eta, False, False))
        found.append(ResourceQueue(name, len(entries), rows, more, more_mine))
    return found


def sessions(broker: Broker, principal: Principal) -> list[SessionRow]:
    if principal.role is Role.SESSION:
        return []
    found = broker.records.sessions(open_only=True)
    return [_session_row(s) for s in found if principal.may_act_for(s.user, s.centre)]


def _session_row(s: SessionRecord) -> SessionRow:
    return SessionRow(
        s.session_id, s.resource, s.user, s.account, s.mode, s.slurm_job_id, s.opened_at,
        s.deadline,
    )  # fmt: skip


def program_row(broker: Broker, job: JobRecord) -> ProgramRow | None:
    try:
        info = broker.programs.info(job.job_id)
    except NotFoundError:
        return None
    record = info.record
    return ProgramRow(
        job.job_id, cut(job.name, NAME_LIMIT), record.status, record.iterations, info.qpu_calls,
        cut(info.progress_line, TEXT_LIMIT), cut(record.message, TEXT_LIMIT),
    )  # fmt: skip


def accounts(broker: Broker, principal: Principal, now: float) -> list[AccountRow]:
    every = broker.records.accounts()
    usage = broker.usage.snapshot(now)
    total_shares = sum(a.shares for a in every) or 1.0
    total_usage = sum(usage.values())
    rows = []
    for account in every:
        if principal.role is Role.ADMIN:
            visible = True
        elif principal.role is Role.CENTRE:
            visible = principal.centre is not None and account.centre == principal.centre
        else:
            visible = principal.role is Role.USER and account.name == principal.account
        if not visible:
            continue
        used = usage.get(account.name, 0.0)
        rows.append(
            AccountRow(
                account.name, account.centre, account.shares, account.shares / total_shares,
                used / total_usage if total_usage > 0 else 0.0, used,
            )
        )  # fmt: skip
    return rows


def utilisation(
    records: Iterable[UsageRecord], resources: list[str], now: float, window: float, buckets: int
) -> dict[str, list[float]]:
    """Busy fraction of each resource per bucket of ``[now - window, now)``, oldest first.

    A task's QPU seconds are laid on the time before it finished; a bucket's fraction
    is capped at 1 (an emulator's device time may run faster than the clock).
    """
    width = window / buckets
    start = now - window
    series = {name: [0.0] * buckets for name in resources}
    for record in records:
        row = series.get(record.resource)
        if row is None:
            continue
        begin, end = (
            max(record.finished_at - record.qpu_seconds, start),
            min(record.finished_at, now),
        )
        first = int((begin - start) // width)
        for index in range(max(first, 0), buckets):
            low = start + index * width
            if low >= end:
                break
            row[index] += min(end, low + width) - max(begin, low)
    return {name: [min(busy / width, 1.0) for busy in row] for name, row in series.items()}


def task_row(task: TaskRecord, place: tuple[int, float] | None) -> TaskRow:
    position, eta = place if place is not None else (None, None)
    return TaskRow(
        task.task_id, task.index, task.state, position, eta, task.attempts,
        cut(task.error, TEXT_LIMIT), task.started_at, task.finished_at,
    )  # fmt: skip


def job_detail(broker: Broker, job: JobRecord) -> JobDetail:
    """A job the viewer may see (checked by the caller: :func:`visible_job`)."""
    tasks = broker.tasks_of_job(job.job_id)
    places: dict[str, tuple[int, float]] = {}
    if (
        any(t.state == TaskStatus.QUEUED for t in tasks)
        and job.resource in broker.resources.names()
    ):
        places = {
            task.task_id: (position, eta)
            for position, (task, eta) in enumerate(broker.queue(job.resource), start=1)
        }
    rows = [task_row(t, places.get(t.task_id)) for t in tasks[:TASK_ROWS]]
    program = program_row(broker, job) if job.kind == "hybrid" else None
    return JobDetail(job_row(job), rows, max(len(tasks) - TASK_ROWS, 0), program)


def overview(
    broker: Broker, principal: Principal, timeline: dict[str, list[float]], bucket_seconds: float
) -> Overview:
    """Everything the overview page shows to ``principal``."""
    now = broker.clock()
    jobs = visible_jobs(broker, principal)
    programs = [
        row
        for row in (program_row(broker, j) for j in jobs if j.kind == "hybrid")
        if row is not None
    ][:PROGRAM_ROWS]
    return Overview(
        at=now, viewer=viewer(principal), cards=cards(broker, timeline),
        queues=queues(broker, principal), jobs=[job_row(j) for j in jobs],
        sessions=sessions(broker, principal), programs=programs,
        accounts=accounts(broker, principal, now), timeline=timeline,
        timeline_bucket_seconds=bucket_seconds,
    )  # fmt: skip
