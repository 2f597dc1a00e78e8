"""System endpoints (no token), resource status, target and queue, and the pools."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

import qhpc
from qhpc.api.deps import BrokerDep, CurrentPrincipal
from qhpc.api.models import DrainBody, PathId
from qhpc.api.views import (
    DrainView,
    Health,
    PoolMember,
    PoolView,
    QueueEntry,
    QueueView,
    ResourceAdmission,
    ResourceDetail,
    ResourceSummary,
    VersionInfo,
    admission_view,
    drain_view,
    json_safe,
    known,
)
from qhpc.broker import MAX_LICENCES, Broker, DrainRequest, QueuedTask
from qhpc.security import Principal, Role
from qhpc.store import NotFoundError

system = APIRouter(tags=["system"])
resources = APIRouter(prefix="/resources", tags=["resources"])
pools = APIRouter(prefix="/pools", tags=["resources"])


@system.get("/health", summary="liveness probe (no token needed)")
async def health() -> Health:
    return Health(status="ok")


@system.get("/version", summary="broker and API version (no token needed)")
async def version() -> VersionInfo:
    return VersionInfo(version=qhpc.__version__, api="v1")


def _summary(broker: Broker, name: str) -> ResourceSummary:
    spec = broker.resources.spec(name)  # unknown name → 404
    status = broker.resource_status(name)
    return ResourceSummary(
        name=name,
        type=spec.type,
        state=str(status.state),
        busy=status.busy,
        pending=status.pending,
        reason=status.reason,
        until=status.until,
        queue_length=broker.queue_length(name),
        running=broker.is_busy(name),
    )


@resources.get("", summary="every resource with its status and broker queue length")
def list_resources(broker: BrokerDep, principal: CurrentPrincipal) -> list[ResourceSummary]:
    return [_summary(broker, name) for name in broker.resources.names()]


@pools.get(
    "",
    summary="every pool with its members: state, queue length, open sessions, ETA",
    description="A pool is several resources behind one name: work naming it goes to the "
    "member with the lowest ETA whose target fits (then the shorter queue, then fewer open "
    "sessions, then the name). The members' figures are the ones that choice reads.",
)
def list_pools(broker: BrokerDep, principal: CurrentPrincipal) -> list[PoolView]:
    views = []
    for name in broker.resources.pool_names():
        spec = broker.resources.pool(name)
        assert spec is not None  # a name the registry listed
        members = []
        for member in broker.pools.members(spec):
            status = broker.resource_status(member.name)
            members.append(
                PoolMember(
                    name=member.name, state=str(status.state), reason=status.reason,
                    until=status.until, queue_length=member.queue_length,
                    sessions=member.sessions, eta_seconds=known(member.eta),
                )
            )  # fmt: skip
        views.append(PoolView(name=name, policy=spec.policy, members=members))
    return views


@resources.get("/{name}", summary="one resource: status, target and metadata")
def get_resource(broker: BrokerDep, principal: CurrentPrincipal, name: PathId) -> ResourceDetail:
    summary = _summary(broker, name)
    resource = broker.resources.get(name)
    # Adapters keep credential values out of metadata (only variable names).
    return ResourceDetail(
        **summary.model_dump(),
        target=json_safe(resource.target().to_dict()),
        metadata=json_safe(resource.metadata()),
    )


class _Owners:
    """Who owns each queued task's job, read once per job for one view (a queued task
    does not carry its centre; a user name is unique only within its centre)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._centres: dict[str, str | None] = {}

    def centre(self, job_id: str) -> str | None:
        if job_id not in self._centres:
            try:
                self._centres[job_id] = self._broker.get_job(job_id).centre
            except NotFoundError:  # gone between the queue's read and this one
                self._centres[job_id] = None
        return self._centres[job_id]


def _mine(principal: Principal, task: QueuedTask, owners: _Owners) -> bool:
    if principal.role is Role.SESSION:
        return task.session_id is not None and task.session_id == principal.session_id
    if principal.role is not Role.USER:
        return task.user == principal.subject and owners.centre(task.job_id) == principal.centre
    return principal.may_act_for(task.user, owners.centre(task.job_id))


def _sees_details(principal: Principal, task: QueuedTask, owners: _Owners) -> bool:
    if principal.role is Role.ADMIN:
        return True
    if principal.role is Role.CENTRE:
        return principal.may_act_for(task.user, owners.centre(task.job_id))
    return _mine(principal, task, owners)


@resources.get(
    "/{name}/queue",
    summary="pending tasks in the order they would run, with ETAs",
    description="Admin tokens see every entry, centre tokens their centre's; users (and "
    "session tokens) see their own entries in full and others only as anonymous positions.",
)
def get_queue(broker: BrokerDep, principal: CurrentPrincipal, name: PathId) -> QueueView:
    broker.resources.spec(name)
    owners = _Owners(broker)
    entries = []
    for position, (task, eta) in enumerate(broker.queue(name), start=1):
        if _sees_details(principal, task, owners):
            entries.append(
                QueueEntry(
                    position=position, eta_seconds=known(eta), mine=_mine(principal, task, owners),
                    task_id=task.task_id, job_id=task.job_id, user=task.user,
                    account=task.account, session_id=task.session_id,
                )
            )  # fmt: skip
        else:
            entries.append(QueueEntry(position=position, eta_seconds=known(eta), mine=False))
    return QueueView(resource=name, length=len(entries), entries=entries)


@resources.post(
    "/{name}/drain",
    summary="take a resource out of service (admin)",
    description="The resource shows state `maintenance` with the reason until the drain ends "
    "(`until`, `for_seconds`, or a resume). Queued work waits and its ETA counts the window; "
    "running work finishes, or with `now` is stopped and queued again. Draining a drained "
    "resource replaces its drain.",
)
def drain_resource(
    broker: BrokerDep, principal: CurrentPrincipal, name: PathId, body: DrainBody
) -> DrainView:
    principal.require(Role.ADMIN)
    now = broker.clock()
    until = body.until if body.for_seconds is None else now + body.for_seconds
    request = DrainRequest(reason=body.reason, until=until, now=body.now)
    return drain_view(broker.drain(name, request, by=principal.subject))


@resources.post(
    "/{name}/resume",
    summary="end a resource's drain (admin)",
    description="409 if the resource is not drained.",
)
def resume_resource(broker: BrokerDep, principal: CurrentPrincipal, name: PathId) -> DrainView:
    principal.require(Role.ADMIN)
    return drain_view(broker.resume(name, by=principal.subject))


Licences = Annotated[
    int | None,
    Query(
        ge=1, le=MAX_LICENCES,
        description="Slurm's licence total for this QPU (default: the broker's setting)",
    ),
]  # fmt: skip


@resources.get(
    "/{name}/admission",
    summary="how many sessions may hold the resource now, from their duty cycles (operators)",
    description="The admission controller's answer from the open sessions' measured duty "
    "cycles: `admitted` sessions keep the worst-off one's predicted iteration latency within "
    "`target` times alone; the Slurm feedback agent holds `hold` = `licences` − `admitted` "
    "licences back. Admin tokens see every session's id; centre tokens the figures of all "
    "and the ids of their centre's sessions; user and session tokens get 403 (other tenants' "
    "sessions are not theirs to see, and the count is Slurm's to act on).",
)
def get_admission(
    broker: BrokerDep, principal: CurrentPrincipal, name: PathId, licences: Licences = None
) -> ResourceAdmission:
    principal.require(Role.ADMIN, Role.CENTRE)
    admission = broker.admission(name, licences)
    if principal.role is Role.ADMIN:
        return admission_view(admission, lambda _: True)

    def own(session_id: str) -> bool:
        try:
            session = broker.records.session(session_id)
        except NotFoundError:  # closed and gone between the two reads
            return False
        return principal.may_act_for(session.user, session.centre)

    return admission_view(admission, own)
