"""Opening and closing sessions: the lease, its job, its token, and what closing ends.

A session is a lease on one resource held by a running hybrid job (normally a Slurm
job). Opening stores the lease and a ``session`` job (its tasks' home), issues a
session token valid until the deadline and tells the policies at once. Closing —
by its owner, by Slurm's epilog, or by the reaper at the deadline — stops a program
running in it, revokes its tokens, cancels its leftovers, waits for its running task
to be stored, and ends its job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from qhpc.broker.access import Access
from qhpc.broker.errors import BrokerError
from qhpc.broker.executor import ResourceExecutor, Shared
from qhpc.broker.lifecycle import session_ended, session_opened
from qhpc.broker.scheduler import QueuedTask, SessionMode
from qhpc.broker.sessions import Sessions
from qhpc.resources import ResourceRegistry
from qhpc.security import Role
from qhpc.states import FINAL_STATES, TaskStatus
from qhpc.store import ConflictError, JobRecord, SessionRecord, Store

log = logging.getLogger(__name__)

#: a closing session waits for its running task to stop, saying so this often (s)
CLOSE_WAIT_REPORT = 60.0


class Leases:
    """Opens and closes sessions (the broker's ``open_session`` / ``close_session``)."""

    def __init__(
        self,
        *,
        store: Store,
        resources: ResourceRegistry,
        access: Access,
        sessions: Sessions,
        shared: Shared,
        executors: Mapping[str, ResourceExecutor],
        clock: Callable[[], float],
        cancel: Callable[[str], object],
        invalidate: Callable[[], None],
    ) -> None:
        self.store = store
        self.resources = resources
        self.access = access
        self.sessions = sessions
        self.shared = shared
        self.executors = executors
        self.clock = clock
        self.cancel = cancel
        self.invalidate = invalidate
        #: told first when a session closes (the broker's hybrid-job manager)
        self.on_close: Callable[[str], None] = lambda _: None

    def open_on(self, resource: str) -> int:
        """How many sessions are open on ``resource`` now."""
        with self.shared.cond:
            return sum(1 for s in self.sessions.open.values() if s.resource == resource)

    def held(self, resource: str) -> str | None:
        """Why ``resource`` takes no new exclusive session (None: it may)."""
        if any(
            s.mode == SessionMode.EXCLUSIVE
            for s in self.store.list_sessions(open_only=True, resource=resource)
        ):
            return "already held by an exclusive session"
        return None

    def open(
        self, *, user: str, account: str, resource: str, deadline: float, mode: SessionMode,
        centre: str | None, slurm_job_id: str | None, pool: str | None = None,
    ) -> tuple[SessionRecord, str]:  # fmt: skip
        """Open a session on ``resource`` (``pool``: the pool it was routed from)."""
        self.resources.spec(resource)  # unknown resource → UnknownResourceError
        now = self.clock()
        if deadline <= now:
            raise BrokerError(f"session deadline {deadline:.0f} is not in the future")
        if mode is SessionMode.EXCLUSIVE:
            held = self.held(resource)
            if held is not None:
                raise BrokerError(f"{resource} is {held}")
        session = SessionRecord(
            session_id=uuid.uuid4().hex, resource=resource, user=user, account=account,
            centre=centre, mode=str(mode), opened_at=now, deadline=deadline, closed_at=None,
            slurm_job_id=slurm_job_id, pool=pool,
        )  # fmt: skip
        self.store.create_session(session)
        label = f"session of Slurm job {slurm_job_id}" if slurm_job_id else "session"
        job = JobRecord(
            job_id=session.session_id, user=user, account=account, centre=centre,
            resource=resource, kind="session", priority=0, state=TaskStatus.RUNNING, created_at=now,
            finished_at=None, session_id=session.session_id, name=label, task_count=0, pool=pool,
        )  # fmt: skip
        self.store.create_job(job, [])
        with self.shared.cond:
            self.sessions.open[session.session_id] = session
        _, secret = self.access.issue(
            Role.SESSION, user, account=account, centre=centre,
            session_id=session.session_id, resource=resource, expires_at=deadline,
        )  # fmt: skip
        self.invalidate()
        session_opened(session)
        return session, secret

    def close(self, session_id: str, *, expired: bool = False) -> None:
        self.on_close(session_id)
        now = self.clock()
        self.store.close_session(session_id, now)
        with self.shared.cond:
            self.sessions.close(session_id)
        self.store.revoke_session_tokens(session_id, now)
        self.cancel(session_id)
        self._wait_idle(session_id)
        self.sessions.journal.flush()
        job = self.store.get_job(session_id)
        states = {t.state for t in self.store.tasks_of_job(session_id)}
        if job.state not in FINAL_STATES:
            ended_well = states <= {TaskStatus.COMPLETED, TaskStatus.CANCELLED}
            final = TaskStatus.COMPLETED if ended_well else TaskStatus.FAILED
            try:
                self.store.set_job_state(session_id, final, finished_at=now)
            except ConflictError:
                pass
        with self.shared.cond:
            self.sessions.forget(session_id)
        self.invalidate()
        session_ended(self.store, session_id, expired)

    def close_expired(self) -> list[str]:
        """Close every open session past its deadline; returns their ids."""
        now = self.clock()
        expired = [
            s.session_id for s in self.store.list_sessions(open_only=True) if s.deadline <= now
        ]
        for session_id in expired:
            try:
                self.close(session_id, expired=True)
            except ConflictError:
                pass  # closed meanwhile
        return expired

    def _wait_idle(self, job_id: str) -> None:
        """Until no task of ``job_id`` runs (a closing session waits for its last task).

        No time limit: the run was asked to stop, and the job may end only after its
        task is stored — a final job refuses it, and the task and its usage would be
        lost. A device slow to stop is reported every ``CLOSE_WAIT_REPORT`` seconds.
        """

        def running() -> list[QueuedTask]:
            return [
                e.running.task
                for e in self.executors.values()
                if e.running is not None and e.running.task.job_id == job_id
            ]

        with self.shared.cond:
            self.shared.idle_waiters += 1
            try:
                while not self.shared.cond.wait_for(lambda: not running(), CLOSE_WAIT_REPORT):
                    for task in running():
                        log.warning("closing %s: still waiting for task %s to stop on %s",
                                    job_id, task.task_id, task.resource)  # fmt: skip
            finally:
                self.shared.idle_waiters -= 1
