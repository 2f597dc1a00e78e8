"""The operator's log of the broker: each job, session and resource state change, once.

An operator reads the broker's log to learn what happened to a job, a session or a
device, so each change is one record, at the level it deserves, with the ids to
follow it (``event`` names the change; docs/logging.md lists them):

* ``job_submitted`` and ``job_finished`` (INFO; a failed job WARNING), with the job's
  user, account, resource, kind and task count; the end record carries the id of the
  request that submitted the job when this broker process saw it, so one grep of a
  request id shows the job's whole life;
* ``session_opened`` and ``session_closed`` / ``session_expired`` (INFO), with the
  session's user, account, resource and Slurm job;
* ``program_started`` (INFO); a hybrid job's end is its ``job_finished``, with the
  program's own status;
* ``resource_state`` (INFO; offline and error WARNING): a resource's state as the
  broker sees it, logged when it changes. Busy and idle count as one state here:
  they flip with every task, which is the per-task noise the log must not carry.

Tasks are not logged above DEBUG (the hot path pays nothing for a log).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from qhpc.logcontext import current_ids, fields, utc_timestamp
from qhpc.resources import ResourceState, ResourceStatus
from qhpc.states import FINAL_STATES, TaskStatus
from qhpc.store import JobRecord, SessionRecord, Store

log = logging.getLogger(__name__)

#: how often each resource's state is read for the log (s)
WATCH_SECONDS = 1.0
#: jobs remembered (submitting request, end logged); beyond it the oldest are forgotten
REMEMBERED_JOBS = 100_000
#: states an operator is warned of
_ALARMING = frozenset({ResourceState.OFFLINE, ResourceState.ERROR})


def _job_fields(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.job_id, "user": job.user, "account": job.account,
        "resource": job.resource, "kind": job.kind, "tasks": job.task_count,
        "centre": job.centre,
    }  # fmt: skip


class JobLog:
    """Logs each job's submission and its end, the end once however often it is seen."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._origin: OrderedDict[str, str | None] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()

    def submitted(self, job: JobRecord) -> None:
        with self._lock:
            _remember(self._origin, job.job_id, current_ids().get("request_id"))
        log.info(
            "job submitted",
            extra=fields(event="job_submitted", name=job.name, priority=job.priority,
                         **_job_fields(job)),
        )  # fmt: skip

    def settled(self, job_id: str, **more: object) -> None:
        """After a change that may have ended a job: its end, if it has ended (a session's
        job ends with its session, which has its own record).

        Never raises: a log must not fail the work it reports on.
        """
        try:
            job = self._store.get_job(job_id)
            if job.kind != "session" and job.state in FINAL_STATES:
                self.ended(job, **more)
        except Exception:
            log.exception("reading job %s for the log failed", job_id)

    def ended(self, job: JobRecord, **more: object) -> None:
        """Log ``job``'s end (a final job), unless it has been logged already."""
        with self._lock:
            if job.job_id in self._ended:
                return
            _remember(self._ended, job.job_id, None)
            origin = self._origin.pop(job.job_id, None)
        level = logging.WARNING if job.state == TaskStatus.FAILED else logging.INFO
        log.log(
            level, "job %s", job.state,
            extra=fields(event="job_finished", state=job.state, request_id=origin,
                         **_job_fields(job), **more),
        )  # fmt: skip


def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
    memory[key] = value
    if len(memory) > REMEMBERED_JOBS:
        memory.popitem(last=False)


def _session_fields(session: SessionRecord) -> dict[str, Any]:
    return {
        "session_id": session.session_id, "job_id": session.session_id,
        "user": session.user, "account": session.account, "resource": session.resource,
        "centre": session.centre, "slurm_job_id": session.slurm_job_id,
    }  # fmt: skip


def session_opened(session: SessionRecord) -> None:
    log.info(
        "session opened",
        extra=fields(event="session_opened", mode=session.mode,
                     deadline=utc_timestamp(session.deadline), **_session_fields(session)),
    )  # fmt: skip


def session_ended(store: Store, session_id: str, expired: bool) -> None:
    """A session has closed (by its owner, Slurm, an admin) or expired; never raises."""
    try:
        session, job = store.get_session(session_id), store.get_job(session_id)
    except Exception:
        log.exception("reading session %s for the log failed", session_id)
        return
    log.info(
        "session %s", "expired" if expired else "closed",
        extra=fields(event="session_expired" if expired else "session_closed",
                     state=job.state, tasks=job.task_count, **_session_fields(session)),
    )  # fmt: skip


def program_started(job: JobRecord, session_id: str) -> None:
    log.info(
        "program started",
        extra=fields(event="program_started", session_id=session_id, name=job.name,
                     **_job_fields(job)),
    )  # fmt: skip


class ResourceWatch:
    """Logs each resource's state when it changes (see the module doc)."""

    def __init__(self) -> None:
        self._seen: dict[str, ResourceState] = {}

    def run(
        self, names: Iterable[str], read: Callable[[str], ResourceStatus],
        stopped: threading.Event, every: float = WATCH_SECONDS,
    ) -> None:  # fmt: skip
        """Observe every resource each ``every`` seconds until ``stopped`` is set.

        Its own thread, not an executor's loop: an executor reads its device only while
        it has work, and an idle device going into calibration is news too.
        """
        names = list(names)
        while True:
            for name in names:
                self.observe(name, partial(read, name))
            if stopped.wait(every):
                return

    def observe(self, name: str, read: Callable[[], ResourceStatus]) -> None:
        """Read the resource's state now; log it if it is not the one seen last."""
        failure: Exception | None = None
        try:
            status = read()
            state, reason = status.state, status.reason
        except Exception as exc:  # an adapter that cannot say is an adapter in error
            state, reason, failure = ResourceState.ERROR, f"status() failed: {exc!r}", exc
        kind = ResourceState.IDLE if state is ResourceState.BUSY else state
        before = self._seen.get(name)
        if kind is before:
            return
        self._seen[name] = kind
        level = logging.WARNING if kind in _ALARMING else logging.INFO
        log.log(
            level, "resource %s is %s", name, state, exc_info=failure,
            extra=fields(event="resource_state", resource=name, state=str(state),
                         previous=None if before is None else str(before), reason=reason or None),
        )  # fmt: skip
