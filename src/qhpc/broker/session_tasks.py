"""Session tasks in: the one way a task of an open session is admitted, and run.

The hot path of a hybrid loop. :meth:`SessionTasks.start` checks the payload against
the session's resource, takes the task in flight (nothing is written: the journal
stores it with its outcome, see journal.py) and either runs it right here, on the
submitter's thread — the resource idle, nothing queued for it, the policy would pick
it anyway, and it is expected to be short — or queues it with session priority and
calls back when it has finished. :meth:`run` (the direct channel of co-located
programs) and :meth:`submit` (REST) are that one path with a waiting or no callback.

Each task's step — admission to end, on the broker's clock — is timed by channel for
``/metrics``: here for a task run inline (the submitter knows its channel and its
end), by :class:`~qhpc.broker.sessions.Sessions` for a queued one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping

from qhpc.broker import admission
from qhpc.broker.errors import BrokerError, SessionClosed
from qhpc.broker.executor import ResourceExecutor, Shared, queued
from qhpc.broker.sessions import Sessions, SessionTaskOutcome
from qhpc.broker.telemetry import DIRECT, FASTPATH, REST
from qhpc.resources import Payload
from qhpc.states import TaskStatus
from qhpc.store import Store


class SessionTasks:
    """Admission and inline runs of session tasks (see the module docstring)."""

    def __init__(
        self,
        *,
        shared: Shared,
        sessions: Sessions,
        executors: Mapping[str, ResourceExecutor],
        store: Store,
        clock: Callable[[], float],
        max_payload_bytes: int,
    ) -> None:
        self.shared = shared
        self.sessions = sessions
        self.executors = executors
        self.store = store
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes

    def submit(self, session_id: str, payload: Payload, encoded: bytes | None = None) -> str:
        """Queue one task (never inline); returns its id."""
        task_id, _ = self.start(
            session_id, payload, encoded, on_done=None, inline_budget=-1.0, channel=REST
        )
        return task_id

    def run(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> SessionTaskOutcome:
        """Run one task to its end on the caller's thread and return its outcome: inline
        when it may run now, else queued while this waits. Either way the result is
        returned once the journal has logged the task, before its commit."""
        done = threading.Lock()  # released when a queued task has finished (cheaper than an Event)
        done.acquire()
        task_id, outcome = self.start(
            session_id, payload, encoded, on_done=lambda _: done.release(), channel=DIRECT
        )
        if outcome is not None:
            return outcome
        done.acquire()
        return self.sessions.take_outcome(task_id)

    def start(
        self, session_id: str, payload: Payload, encoded: bytes | None = None, *,
        on_done: Callable[[str], None] | None, inline_budget: float = math.inf,
        channel: str = FASTPATH,
    ) -> tuple[str, SessionTaskOutcome | None]:  # fmt: skip
        """Admit one task that came on ``channel``; run it on the caller's thread if it
        may run now.

        It runs right here when the resource is idle, nothing is queued for it, the
        policy would pick it anyway and it is expected to take at most
        ``inline_budget`` seconds (negative: never); then its outcome is returned.
        Otherwise it is queued (session priority), ``(task_id, None)`` is returned and
        ``on_done(task_id)`` (if given) is called once it has finished (under the
        broker's lock: hand the id over, never block); ``take_outcome`` then gives its
        outcome.
        """
        with self.shared.cond:
            session = self.sessions.open.get(session_id)
        now = self.clock()
        if session is None or session.deadline <= now:
            self.store.get_session(session_id)  # unknown → NotFoundError
            raise SessionClosed(f"session {session_id} is closed")
        executor = self.executors[session.resource]
        data = admission.encoded(payload, executor.resource, self.max_payload_bytes, data=encoded)
        with self.shared.cond:
            if session_id not in self.sessions.open:
                raise SessionClosed(f"session {session_id} is closed")
            if self.shared.stopping:
                raise BrokerError("the broker is stopping")
            task = admission.session_task(
                session=session, resource=executor.resource, payload=payload, data=data,
                task_id=self.sessions.next_task_id(), index=self.sessions.next_index(session_id),
                now=now, learnt_seconds=executor.estimate(),
            )  # fmt: skip
            self.sessions.in_flight[task.task_id] = task
            executor.payloads[task.task_id] = payload
            self.sessions.rhythms.submitted(session_id, now)
            ready = queued(task)
            # A budget needs an estimate: until the resource has completed a task, its
            # tasks' duration is unknown (and could be long).
            short = inline_budget == math.inf or (
                inline_budget >= 0
                and executor.knows_durations()
                and task.estimated_seconds <= inline_budget
            )
            running = executor.claim(ready) if short and executor.may_run_now(ready) else None
            if running is None:
                if on_done is not None:
                    self.sessions.call_when_done(task.task_id, on_done)
                self.sessions.queued_on(task.task_id, channel)
                executor.enqueue(task)
                self.shared.cond.notify_all()
        if running is None:
            return task.task_id, None
        try:
            finished = executor.run_one(ready, running, inline=True)
        finally:
            with self.shared.cond:
                executor.release()
        if finished is None:  # interrupted by the broker's own shutdown
            return task.task_id, SessionTaskOutcome(
                task.task_id, TaskStatus.CANCELLED, None, "the broker is stopping"
            )
        executor.instruments.step(channel, finished.finished_at - now)
        return task.task_id, SessionTaskOutcome.of(task.task_id, finished)
