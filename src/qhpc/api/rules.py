"""Who may see and do what over REST, on top of :meth:`Principal.may_act_for`.

Rules (the reply to a caller that may not see an object is the same 404 as for
a missing one, so ids of other people's work cannot be probed):

- admin: everything;
- centre: work whose ``centre`` is the token's centre; submits and opens
  sessions only for its centre, never charging an account of another centre;
- user: own work only; submits as itself, charging its token's account (a token
  without an account may name one); positive priorities are for admins;
- session: only tasks of its own session (submit, read, close the session);
- ``slurm_job_id`` on a new session: admin and centre tokens only (Slurm's hooks).

Plus small read helpers over ``broker.records`` (the api never holds the store).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qhpc.api.problems import InvalidRequest
from qhpc.broker import Broker
from qhpc.security import PermissionDenied, Principal, Role
from qhpc.store import (
    JobRecord,
    NotFoundError,
    PurgedError,
    SessionRecord,
    TaskRecord,
    UsageRecord,
)

SESSION_ONLY = "session tokens may only submit and read tasks of their session"


def no_session_tokens(principal: Principal) -> None:
    if principal.role is Role.SESSION:
        raise PermissionDenied(SESSION_ONLY)


@dataclass(frozen=True)
class Owner:
    user: str
    account: str
    centre: str | None


def resolve_owner(
    broker: Broker,
    principal: Principal,
    *,
    resource: str,
    user: str | None,
    account: str | None,
    centre: str | None,
) -> Owner:
    """Who new work (a job or a session) belongs to and who pays, or why not."""
    no_session_tokens(principal)
    if principal.resource is not None and resource != principal.resource:
        raise PermissionDenied(f"this token is limited to resource {principal.resource!r}")
    if principal.role is Role.ADMIN:
        owner_user, owner_centre = user or principal.subject, centre
    elif principal.role is Role.CENTRE:
        if principal.centre is None:
            raise PermissionDenied("this centre token names no centre")
        if centre not in (None, principal.centre):
            raise PermissionDenied(f"a token of centre {principal.centre!r} acts for it alone")
        owner_user, owner_centre = user or principal.subject, principal.centre
    else:
        if user not in (None, principal.subject):
            raise PermissionDenied("a user token acts for its own user only")
        if centre not in (None, principal.centre):
            raise PermissionDenied("a user token cannot choose a centre")
        if account is not None and principal.account not in (None, account):
            raise PermissionDenied(f"this token charges account {principal.account!r} only")
        owner_user, owner_centre = principal.subject, principal.centre
    owner_account = account or principal.account
    if owner_account is None:
        raise InvalidRequest("no account to charge: name one, or use a token that has one")
    if principal.role is Role.CENTRE:
        try:
            record = broker.records.account(owner_account)
        except NotFoundError:
            record = None
        if record is not None and record.centre not in (None, principal.centre):
            raise PermissionDenied(f"account {owner_account!r} belongs to another centre")
    return Owner(owner_user, owner_account, owner_centre)


def check_slurm_job_id(principal: Principal, slurm_job_id: str | None) -> None:
    """Only the Slurm hooks' tokens (admin, or a centre for its own users) tie a session
    to a Slurm job: EpilogSlurmctld books every session of a job into its AdminComment,
    so a user who could name any job id could charge QPU usage to someone else's job."""
    if slurm_job_id is not None and principal.role not in (Role.ADMIN, Role.CENTRE):
        raise PermissionDenied(
            "slurm_job_id is set by Slurm's hooks only: it needs an admin or centre token"
        )


def check_priority(principal: Principal, priority: int) -> None:
    if priority > 0 and not principal.is_admin:
        raise PermissionDenied("only admins may raise a job's priority above 0")


def visible_job(broker: Broker, principal: Principal, job_id: str) -> JobRecord:
    no_session_tokens(principal)
    job = broker.get_job(job_id)
    if not principal.may_act_for(job.user, job.centre):
        raise NotFoundError(f"no job {job_id!r}")
    return job


def kept(job: JobRecord) -> JobRecord:
    """The job, if what it carried (results, output, sources) is still kept; a read of
    what was purged is told so (410 Gone) rather than 404."""
    if job.purged_at is not None:
        raise PurgedError(job.job_id, job.purged_at)
    return job


def visible_task(broker: Broker, principal: Principal, task_id: str) -> TaskRecord:
    task = broker.get_task(task_id)
    if principal.role is Role.SESSION:
        if task.session_id is None or task.session_id != principal.session_id:
            raise NotFoundError(f"no task {task_id!r}")
        return task
    job = broker.get_job(task.job_id)
    if not principal.may_act_for(job.user, job.centre):
        raise NotFoundError(f"no task {task_id!r}")
    return task


def session_visible(principal: Principal, session: SessionRecord) -> bool:
    if principal.role is Role.SESSION:
        return principal.session_id == session.session_id
    return principal.may_act_for(session.user, session.centre)


def visible_session(broker: Broker, principal: Principal, session_id: str) -> SessionRecord:
    session = broker.records.session(session_id)
    if not session_visible(principal, session):
        raise NotFoundError(f"no session {session_id!r}")
    return session


def list_visible_jobs(
    broker: Broker,
    principal: Principal,
    *,
    state: str | None,
    resource: str | None,
    limit: int,
    offset: int,
) -> list[JobRecord]:
    no_session_tokens(principal)
    user = centre = None
    if principal.role is Role.CENTRE:
        if principal.centre is None:
            return []
        centre = principal.centre
    elif principal.role is Role.USER:
        # A user name is unique within its centre only: the local "alice" must not list
        # the jobs a federated centre submitted for its own "alice".
        user, centre = principal.subject, principal.centre
    local = principal.role is Role.USER and principal.centre is None
    return broker.records.jobs(
        user=user, centre=centre, state=state, resource=resource, limit=limit, offset=offset,
        local=local,
    )  # fmt: skip


def queue_places(broker: Broker, resource: str) -> dict[str, tuple[int, float]]:
    """task id → (1-based queue position, ETA seconds) for one resource's pending tasks."""
    if resource not in broker.resources.names():
        return {}
    return {
        task.task_id: (position, eta)
        for position, (task, eta) in enumerate(broker.queue(resource), start=1)
    }


_USAGE_KEYS = {
    "job": "job_id",
    "user": "user",
    "account": "account",
    "centre": "centre",
    "resource": "resource",
}


def rollup(records: Iterable[UsageRecord], group_by: str) -> list[dict[str, Any]]:
    """The shape of ``Store.usage_rollup`` over already filtered usage rows.

    The store's rollup cannot filter by user or centre; this sums the filtered
    rows instead (a user's own usage is small).
    """
    attribute = _USAGE_KEYS[group_by]
    groups: dict[str | None, dict[str, Any]] = {}
    for record in records:
        key = getattr(record, attribute)
        row = groups.setdefault(
            key, {"group": key, "tasks": 0, "qpu_seconds": 0.0, "shots": 0, "circuits": 0}
        )
        row["tasks"] += 1
        row["qpu_seconds"] += record.qpu_seconds
        row["shots"] += record.shots
        row["circuits"] += record.circuits
    return sorted(groups.values(), key=lambda r: (r["group"] is None, r["group"] or ""))
