"""Sessions: leases on a resource whose tasks jump the batch queue.

Slurm's prolog opens one (admin or centre token), the job's program submits
tasks with the session token it got, the epilog closes it. Over REST a task is
one request; the ZeroMQ fast path (``qhpc.api.fastpath``) serves the same
sessions without HTTP. The hooks' calls (an open naming a Slurm job, the close of
such a session) are counted by outcome for ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Query, Response

from qhpc.api import rules
from qhpc.api.deps import BrokerDep, CurrentPrincipal
from qhpc.api.models import (
    PathId,
    QueryName,
    SessionRequest,
    SessionTaskSubmission,
    SessionUpdate,
)
from qhpc.api.problems import status_of
from qhpc.api.views import SessionCreated, SessionTaskCreated, SessionView, known, session_view
from qhpc.api.wire import payloads_of
from qhpc.broker import (
    EPILOG_SLURMCTLD,
    HOOK_ERROR,
    HOOK_OK,
    HOOK_REFUSED,
    PROLOG_SLURMCTLD,
    Broker,
    SessionMode,
)
from qhpc.errors import QhpcError
from qhpc.security import PermissionDenied, Principal, Role

sessions = APIRouter(prefix="/sessions", tags=["sessions"])


@contextmanager
def _slurm_hook(broker: Broker, hook: str | None) -> Iterator[None]:
    """Count a Slurm hook's call (``hook``; None: not a hook's) by how it ended."""
    if hook is None:
        yield
        return
    try:
        yield
    except QhpcError as exc:
        broker.telemetry.slurm_hook(hook, HOOK_ERROR if status_of(exc) >= 500 else HOOK_REFUSED)
        raise
    except Exception:
        broker.telemetry.slurm_hook(hook, HOOK_ERROR)
        raise
    broker.telemetry.slurm_hook(hook, HOOK_OK)


@sessions.post(
    "",
    status_code=201,
    summary="open a session; the response carries its token, shown only here",
    description="Admin and centre tokens open sessions for their users, user tokens for "
    "themselves. Give either deadline (UNIX seconds) or duration_seconds.",
)
def open_session(
    broker: BrokerDep, principal: CurrentPrincipal, body: SessionRequest
) -> SessionCreated:
    with _slurm_hook(broker, PROLOG_SLURMCTLD if body.slurm_job_id is not None else None):
        return _open_session(broker, principal, body)


def _open_session(broker: Broker, principal: Principal, body: SessionRequest) -> SessionCreated:
    rules.check_slurm_job_id(principal, body.slurm_job_id)
    owner = rules.resolve_owner(
        broker, principal, resource=body.resource, user=body.user, account=body.account,
        centre=body.centre,
    )  # fmt: skip
    if body.deadline is not None:
        deadline = body.deadline
    else:
        assert body.duration_seconds is not None  # the model guarantees one of the two
        deadline = broker.clock() + body.duration_seconds
    session, secret = broker.open_session(
        user=owner.user, account=owner.account, resource=body.resource, deadline=deadline,
        mode=SessionMode(body.mode), centre=owner.centre, slurm_job_id=body.slurm_job_id,
    )  # fmt: skip
    eta = known(broker.pools.eta(session.resource))
    return SessionCreated(**session_view(session).model_dump(), token=secret, eta_seconds=eta)


@sessions.get("", summary="sessions visible to the token, oldest first")
def list_sessions(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    resource: QueryName = None,
    include_closed: Annotated[bool, Query()] = False,
    slurm_job_id: QueryName = None,
) -> list[SessionView]:
    found = broker.records.sessions(open_only=not include_closed, resource=resource)
    return [
        session_view(s)
        for s in found
        if rules.session_visible(principal, s)
        and (slurm_job_id is None or s.slurm_job_id == slurm_job_id)
    ]


@sessions.get("/{session_id}", summary="one session")
def get_session(broker: BrokerDep, principal: CurrentPrincipal, session_id: PathId) -> SessionView:
    return session_view(rules.visible_session(broker, principal, session_id))


@sessions.patch(
    "/{session_id}",
    summary="tie an open session to the Slurm job that will use it (admin, centre)",
    description="A federated centre opens its session before it submits the job (the job "
    "carries the session's token), holds the job, ties the session to the job id here, then "
    "releases it: the site's Slurm hooks then adopt this session instead of opening their "
    "own, and book its usage into the job's AdminComment. Once per session (409 after).",
)
def tag_session(
    broker: BrokerDep, principal: CurrentPrincipal, session_id: PathId, body: SessionUpdate
) -> SessionView:
    session = rules.visible_session(broker, principal, session_id)
    rules.check_slurm_job_id(principal, body.slurm_job_id)
    return session_view(broker.records.tag_session(session.session_id, body.slurm_job_id))


@sessions.delete(
    "/{session_id}",
    summary="close a session: cancel its leftover tasks, revoke its token",
)
def close_session(
    broker: BrokerDep, principal: CurrentPrincipal, session_id: PathId
) -> SessionView:
    session = rules.visible_session(broker, principal, session_id)
    with _slurm_hook(broker, EPILOG_SLURMCTLD if session.slurm_job_id is not None else None):
        broker.close_session(session_id)  # already closed → 409
    return session_view(broker.records.session(session_id))


@sessions.post(
    "/{session_id}/tasks",
    status_code=201,
    summary="queue one task in the session (session token of this session only)",
)
def submit_session_task(
    broker: BrokerDep,
    principal: CurrentPrincipal,
    session_id: PathId,
    body: SessionTaskSubmission,
    response: Response,
) -> SessionTaskCreated:
    if principal.role is not Role.SESSION:
        raise PermissionDenied("session tasks are submitted with the session's own token")
    if principal.session_id != session_id:
        raise PermissionDenied("this session token belongs to another session")
    (payload,) = payloads_of(body, broker.decoder)  # the model admits exactly one payload
    task_id = broker.submit_session_task(session_id, payload)
    response.headers["Location"] = f"/v1/tasks/{task_id}"
    return SessionTaskCreated(task_id=task_id, session_id=session_id)
