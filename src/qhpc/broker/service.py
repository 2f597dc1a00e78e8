"""The broker: a facade over its rooms — admission, sessions, executors, policy inputs.

Pure Python, no HTTP inside: ``qhpc.api`` puts REST and ZeroMQ in front of it.
State that must survive a crash lives in the store and is written before a batch
submission is acknowledged; the in-memory queues are rebuilt from it at start (tasks
that were running are queued again). The rooms:

* :mod:`~qhpc.broker.admission` checks submissions and builds their records;
* :mod:`~qhpc.broker.executor` runs one :class:`ResourceExecutor` per resource
  (queue, running task, chunks, learnt durations);
* :mod:`~qhpc.broker.sessions` holds open sessions, their tasks in flight, their
  outcomes and the waiters (and the journal that commits them);
* :mod:`~qhpc.broker.inputs` caches what the policies read besides the queue.

One condition (``self.shared.cond``) guards them all, as one decision reads them
together; this class takes it, the rooms document where they expect it held.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

from qhpc.broker import admission
from qhpc.broker.access import Access
from qhpc.broker.config import BrokerConfig, journal_dir
from qhpc.broker.executor import Context, ResourceExecutor, Shared, queued
from qhpc.broker.idempotency import Idempotency, Keys
from qhpc.broker.inputs import PolicyInputs
from qhpc.broker.programs import ProgramManager
from qhpc.broker.scheduler import Policy, QueuedTask, SessionMode, SessionRhythms, build_policy
from qhpc.broker.sessions import Sessions, SessionTaskOutcome
from qhpc.broker.usage import UsageTracker
from qhpc.errors import QhpcError
from qhpc.resources import (
    DecodePool,
    Payload,
    PayloadDecoder,
    ResourceRegistry,
    TaskResult,
    decode_result,
    shared_pool,
)
from qhpc.security import Role
from qhpc.store import ConflictError, JobRecord, SessionRecord, Store, TaskOutcome, TaskRecord

log = logging.getLogger(__name__)

#: how often sessions past their deadline are looked for
REAP_SECONDS = 1.0
#: a closing session waits for its running task to stop, saying so this often (s)
CLOSE_WAIT_REPORT = 60.0


class BrokerError(QhpcError):
    """A request the broker refuses (bad state, limits); the message says why."""


class Broker:
    """Admission, sessions and queries over one executor per resource."""

    def __init__(
        self,
        store: Store,
        resources: ResourceRegistry,
        config: BrokerConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.resources = resources
        self.config = config = config or BrokerConfig()
        self.clock = clock
        self.policy: Policy = build_policy(
            config.policy, starvation_limit=config.starvation_limit,
            session_backfill=config.session_backfill,
        )  # fmt: skip
        self.usage = UsageTracker(config.fairshare_half_life)
        #: each session's think time, learnt from its submissions and released results
        self.rhythms = SessionRhythms()
        self.access = Access(store, clock)
        self.keys = Keys(store, clock, config.idempotency_ttl)
        self.shared = Shared()
        self.inputs = PolicyInputs(store, self.usage, self.rhythms)
        self.inputs.on_change = self.shared.cond.notify_all
        self.sessions = Sessions(
            self.shared.cond, store, self.rhythms, clock,
            journal_dir(store, config.journal_dir), config.journal_commit_interval,
        )  # fmt: skip
        self.journal = self.sessions.journal
        context = Context(
            self.shared, store, self.sessions, self.inputs, lambda: self.policy, self.usage,
            clock, config.chunk_seconds,
        )  # fmt: skip
        self.executors = {
            name: ResourceExecutor(resources.get(name), context, self._max_task_seconds(name))
            for name in resources.names()
        }
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.programs = ProgramManager(self)

    def _max_task_seconds(self, resource: str) -> float | None:
        own = self.resources.spec(resource).max_task_seconds
        return own if own is not None else self.config.max_task_seconds

    @property
    def decoder(self) -> DecodePool:
        """The worker processes that decode tenants' circuits (shared by the process)."""
        return shared_pool(self.config.decode_limits)

    def payload_decoder(self) -> PayloadDecoder:
        """A decoder for one stream of a tenant's payloads: every circuit it has not seen
        before is decoded by a worker first, then here within the same budget."""
        return PayloadDecoder(limits=self.config.decode_limits, screen=self.decoder.check_qpy)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.journal.recover()  # session tasks released before a crash, before usage is read
        requeued = self.store.requeue_running_tasks()
        if requeued:
            log.warning(
                "requeued %d task(s) that were running when the broker stopped", len(requeued)
            )
            self._stop_orphans(requeued)
        now = self.clock()
        for record in self.store.usage(since=now - 10 * self.config.fairshare_half_life):
            self.usage.record(record.account, record.qpu_seconds, record.finished_at)
        with self.shared.cond:
            for task in self.store.queued_tasks():
                self._enqueue(task)
            for open_session in self.store.list_sessions(open_only=True):
                self.sessions.open[open_session.session_id] = open_session
        self.journal.start()
        # The decoding workers start in the background: the first tenant circuit
        # should not wait for their interpreters (~0.5 s each).
        self._thread(self._start_decoder, "qhpc-decoder", keep=False)
        self._thread(self._reap_sessions, "qhpc-reaper")
        for name, executor in self.executors.items():
            self._thread(executor.loop, f"qhpc-executor-{name}")
        self.programs.recover()
        # What exists now (qiskit, the broker, its caches) lives as long as the process:
        # keep it out of the collector's full passes (~50 ms each with qiskit loaded,
        # which would otherwise land in some iteration's round trip).
        gc.freeze()

    def _thread(self, target: Callable[[], None], name: str, keep: bool = True) -> None:
        thread = threading.Thread(target=target, daemon=True, name=name)
        thread.start()
        if keep:
            self._threads.append(thread)

    def _start_decoder(self) -> None:
        try:
            self.decoder.start()
        except Exception:  # the first request will try again, and report it
            log.exception("the decoding workers did not start")

    def _stop_orphans(self, task_ids: list[str]) -> None:
        """Stop runs a remote device may still be doing for tasks we will run again."""
        for task_id in task_ids:
            task = self.store.get_task(task_id)
            if task.resource_task_id is None or task.resource not in self.executors:
                continue
            try:
                self.resources.get(task.resource).task_stop(task.resource_task_id)
            except Exception as error:  # gone already, or the device is unreachable
                log.info("orphaned run %s of task %s: %s", task.resource_task_id, task_id, error)

    def stop(self) -> None:
        self.programs.close()
        with self.shared.cond:
            self.shared.stopping = True
            for executor in self.executors.values():
                for running in executor.runs():
                    running.stop.set()
            # Queued session tasks live only in memory: end them (their clients are
            # waiting), as cancel() does; batch tasks stay queued in the store.
            unstarted = self._take_queued(lambda t: t.task_id in self.sessions.in_flight)
            self.shared.cond.notify_all()
        never_ran = TaskOutcome(
            "cancelled", None, "the broker stopped before it started", 0.0, 0, 0, self.clock()
        )
        for task in unstarted:
            self.sessions.finished(task, never_ran)
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        self.journal.stop()

    # -- admission -------------------------------------------------------------------------
    def submit(
        self, *, user: str, account: str, resource: str, payloads: Sequence[Payload],
        centre: str | None = None, priority: int = 0, name: str | None = None,
        session_id: str | None = None, idempotency: Idempotency | None = None,
    ) -> JobRecord:  # fmt: skip
        """Validate, persist (durable before return), queue; returns the job.

        With ``idempotency``, a submission that reuses a key returns the job of the
        first one instead (see idempotency.py).
        """
        prior = self.keys.prior(idempotency)
        if prior is not None:
            return prior
        now = self.clock()
        job, tasks = admission.batch_job(
            resource=self.resources.get(resource), payloads=payloads, user=user,
            account=account, centre=centre, priority=priority, name=name,
            session_id=session_id, now=now, max_tasks=self.config.max_tasks_per_job,
            max_bytes=self.config.max_payload_bytes, learnt_seconds=self._estimate(resource),
        )  # fmt: skip
        winner = self.keys.store_once(
            idempotency, job.job_id, now, lambda key: self.store.create_job(job, tasks, key)
        )
        if winner is not None:
            return winner
        with self.shared.cond:
            for task, payload in zip(tasks, payloads, strict=True):
                self.executors[resource].enqueue(task, payload)
            self.shared.cond.notify_all()
        return job

    def cancel(self, job_id: str) -> list[str]:
        """Cancel queued tasks now and stop running ones; returns affected task ids.

        A hybrid job's program is stopped (status ``cancelled``); its session closes
        when it has ended, which cancels the session's leftover tasks.
        """
        if self.programs.cancel(job_id):
            return []
        now = self.clock()
        cancelled = self.store.cancel_queued_tasks(job_id, now)
        with self.shared.cond:
            for executor in self.executors.values():
                for task_id in cancelled:
                    executor.drop(task_id)
            unstarted = self._take_queued(
                lambda t: t.job_id == job_id and t.task_id in self.sessions.in_flight
            )
            cancelled += [t.task_id for t in unstarted]
            runs = [r for e in self.executors.values() for r in e.runs()]
            stopped = [r.task.task_id for r in runs if r.task.job_id == job_id]
            for running in runs:
                if running.task.job_id == job_id:
                    running.cancelled = True
                    running.stop.set()
            self.shared.cond.notify_all()
        never_ran = TaskOutcome("cancelled", None, "cancelled before it started", 0.0, 0, 0, now)
        for task in unstarted:  # session tasks: not stored yet, the journal stores them
            self.sessions.finished(task, never_ran)
        with self.shared.cond:
            for task_id in cancelled:
                if task_id not in self.sessions.in_flight:
                    self.sessions.signal(task_id)
        return cancelled + stopped

    def _take_queued(self, which: Callable[[QueuedTask], bool]) -> list[TaskRecord]:
        """Take the queued session tasks ``which`` picks out of every queue (lock held)."""
        taken = []
        for executor in self.executors.values():
            for task in [t for t in executor.queue.values() if which(t)]:
                executor.drop(task.task_id)
                taken.append(self.sessions.in_flight[task.task_id])
        return taken

    # -- sessions --------------------------------------------------------------------------
    def open_session(
        self, *, user: str, account: str, resource: str, deadline: float,
        mode: SessionMode = SessionMode.MULTIPLEX, centre: str | None = None,
        slurm_job_id: str | None = None,
    ) -> tuple[SessionRecord, str]:  # fmt: skip
        """Open a lease on ``resource``; returns it and a session token valid until the deadline."""
        self.resources.spec(resource)  # unknown resource → UnknownResourceError
        now = self.clock()
        if deadline <= now:
            raise BrokerError(f"session deadline {deadline:.0f} is not in the future")
        if mode is SessionMode.EXCLUSIVE and any(
            s.mode == SessionMode.EXCLUSIVE
            for s in self.store.list_sessions(open_only=True, resource=resource)
        ):
            raise BrokerError(f"{resource} is already held by an exclusive session")
        session = SessionRecord(
            session_id=uuid.uuid4().hex, resource=resource, user=user, account=account,
            centre=centre, mode=str(mode), opened_at=now, deadline=deadline, closed_at=None,
            slurm_job_id=slurm_job_id,
        )  # fmt: skip
        self.store.create_session(session)
        label = f"session of Slurm job {slurm_job_id}" if slurm_job_id else "session"
        job = JobRecord(
            job_id=session.session_id, user=user, account=account, centre=centre,
            resource=resource, kind="session", priority=0, state="running", created_at=now,
            finished_at=None, session_id=session.session_id, name=label, task_count=0,
        )  # fmt: skip
        self.store.create_job(job, [])
        with self.shared.cond:
            self.sessions.open[session.session_id] = session
        _, secret = self.access.issue(
            Role.SESSION, user, account=account, centre=centre,
            session_id=session.session_id, resource=resource, expires_at=deadline,
        )  # fmt: skip
        self.invalidate()
        return session, secret

    def submit_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> str:
        """Queue one task inside an open session (session priority); returns its id."""
        task_id, _ = self.start_session_task(session_id, payload, encoded, on_done=None,
                                             inline_budget=-1.0)  # fmt: skip
        return task_id

    def run_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> SessionTaskOutcome:
        """Run one session task to its end on the caller's thread and return its outcome
        (the direct path of co-located programs; see :meth:`start_session_task`)."""
        done = threading.Lock()  # released when a queued task has finished (cheaper than an Event)
        done.acquire()
        task_id, outcome = self.start_session_task(
            session_id, payload, encoded, on_done=lambda _: done.release()
        )
        if outcome is not None:
            return outcome
        done.acquire()
        return self.sessions.take_outcome(task_id)

    def start_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None, *,
        on_done: Callable[[str], None] | None, inline_budget: float = math.inf,
    ) -> tuple[str, SessionTaskOutcome | None]:  # fmt: skip
        """Admit one session task — the one way in — and run it on the caller's thread if
        it may run now.

        Nothing is written yet: the task runs from memory and is stored, with its
        outcome, by the journal once it has finished (write-behind, see journal.py).
        It runs right here when the resource is idle, nothing is queued for it, the
        policy would pick it anyway and it is expected to take at most
        ``inline_budget`` seconds (a negative budget: never); then its outcome is
        returned, once the journal has logged it. Otherwise it is queued (session
        priority), ``(task_id, None)`` is returned and ``on_done(task_id)`` (if given) is
        called once it has finished (under the broker's lock: hand the id over, never
        block); :meth:`take_outcome` then gives its outcome.
        """
        with self.shared.cond:
            session = self.sessions.open.get(session_id)
        now = self.clock()
        if session is None or session.deadline <= now:
            self.store.get_session(session_id)  # unknown → NotFoundError
            raise BrokerError(f"session {session_id} is closed")
        executor = self.executors[session.resource]
        data = admission.encoded(
            payload, executor.resource, self.config.max_payload_bytes, data=encoded
        )
        with self.shared.cond:
            if session_id not in self.sessions.open:
                raise BrokerError(f"session {session_id} is closed")
            if self.shared.stopping:
                raise BrokerError("the broker is stopping")
            task = admission.session_task(
                session=session, resource=executor.resource, payload=payload, data=data,
                task_id=self.sessions.next_task_id(), index=self.sessions.next_index(session_id),
                now=now, learnt_seconds=executor.estimate(),
            )  # fmt: skip
            self.sessions.in_flight[task.task_id] = task
            executor.payloads[task.task_id] = payload
            self.rhythms.submitted(session_id, now)
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
                task.task_id, "cancelled", None, "the broker is stopping"
            )
        return task.task_id, SessionTaskOutcome.of(task.task_id, finished)

    def close_session(self, session_id: str) -> None:
        """Close a session: stop a program running in it, cancel its leftovers, revoke its
        tokens, end its job."""
        self.programs.session_closed(session_id)
        now = self.clock()
        self.store.close_session(session_id, now)
        with self.shared.cond:
            self.sessions.close(session_id)
        self.store.revoke_session_tokens(session_id, now)
        self.cancel(session_id)
        self._wait_idle(session_id)
        self.journal.flush()
        job = self.store.get_job(session_id)
        states = {t.state for t in self.store.tasks_of_job(session_id)}
        if job.state not in ("completed", "failed", "cancelled"):
            final = "completed" if states <= {"completed", "cancelled"} else "failed"
            try:
                self.store.set_job_state(session_id, final, finished_at=now)
            except ConflictError:
                pass
        with self.shared.cond:
            self.sessions.forget(session_id)
        self.invalidate()

    def close_expired_sessions(self) -> list[str]:
        """Close every open session past its deadline; returns their ids."""
        now = self.clock()
        expired = [
            s.session_id for s in self.store.list_sessions(open_only=True) if s.deadline <= now
        ]
        for session_id in expired:
            try:
                self.close_session(session_id)
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

    def _reap_sessions(self) -> None:
        # Its own event, not the broker's condition: every submission notifies that.
        while not self._stopped.wait(REAP_SECONDS):
            try:
                self.close_expired_sessions()
            except Exception:
                log.exception("closing expired sessions failed")

    # -- queries ---------------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRecord:
        """A job; a session job's task count includes its tasks still in flight."""
        job = self.store.get_job(job_id)
        with self.shared.cond:
            extra = sum(1 for t in self.sessions.in_flight.values() if t.job_id == job_id)
        return replace(job, task_count=job.task_count + extra) if extra else job

    def tasks_of_job(self, job_id: str) -> list[TaskRecord]:
        """A job's tasks by index, including session tasks in flight (not stored yet)."""
        stored = self.store.tasks_of_job(job_id)
        with self.shared.cond:
            pending = self.sessions.of_job(job_id)
        if not pending:
            return stored
        known = {t.task_id for t in stored}
        merged = stored + [t for t in pending if t.task_id not in known]
        return sorted(merged, key=lambda t: t.index)

    def get_task(self, task_id: str) -> TaskRecord:
        """A task, also while it is a session task in flight (not stored yet)."""
        with self.shared.cond:
            pending = self.sessions.in_flight.get(task_id)
            if pending is not None:
                return self.sessions.visible(pending)
        return self.store.get_task(task_id)

    def wait_task(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        with self.shared.cond:
            event = self.sessions.done_event(task_id)
            in_flight = task_id in self.sessions.in_flight
        if in_flight:
            event.wait(timeout)
            with self.shared.cond:
                pending = self.sessions.in_flight.get(task_id)
                if pending is not None:  # still running: not stored yet
                    return self.sessions.visible(pending)
            return self.store.get_task(task_id)
        task = self.store.get_task(task_id)
        if task.state in ("queued", "running"):
            event.wait(timeout)
            task = self.store.get_task(task_id)
        return task

    def when_done(self, task_id: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(task_id)`` once the task is final (at once if it already is);
        it runs under the broker's lock: hand the id over, never block."""
        self.sessions.when_done(task_id, callback)

    def take_outcome(self, task_id: str) -> SessionTaskOutcome:
        """How a final task ended (see :meth:`Sessions.take_outcome`)."""
        return self.sessions.take_outcome(task_id)

    def task_result(self, task_id: str) -> TaskResult | None:
        with self.shared.cond:
            finished = self.sessions.unstored(task_id)
        data = finished.result if finished is not None else self.store.task_result(task_id)
        return None if data is None else decode_result(data)

    def queue(self, resource: str) -> list[tuple[QueuedTask, float]]:
        """Pending tasks in the order the policy would run them now, with ETAs (s from now)."""
        return self.executors[resource].order(self.clock())

    def queue_length(self, resource: str) -> int:
        with self.shared.cond:
            return len(self.executors[resource].queue)

    def is_busy(self, resource: str) -> bool:
        with self.shared.cond:
            return self.executors[resource].running is not None

    def invalidate(self) -> None:
        """Re-read sessions, reservations and shares at the next scheduling decision."""
        with self.shared.cond:
            self.inputs.invalidate()

    # -- internals -------------------------------------------------------------------------
    def _enqueue(self, record: TaskRecord) -> None:
        executor = self.executors.get(record.resource)
        if executor is None:
            log.error(
                "task %s targets unknown resource %s; left queued", record.task_id, record.resource
            )
            return
        executor.enqueue(record)

    def _estimate(self, resource: str) -> float:
        return self.executors[resource].estimate()
