"""The broker: admission, per-resource executors, sessions, cancellation, results.

Pure Python, no HTTP inside: ``qhpc.api`` puts REST and ZeroMQ in front of it.
State that must survive a crash lives in the store and is written before a
batch submission is acknowledged; the in-memory queues are rebuilt from it at
start (tasks that were running are queued again).
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from qhpc.broker.access import Access
from qhpc.broker.chunking import DEFAULT_CHUNK_SECONDS, can_chunk, plan_chunks, run_chunked
from qhpc.broker.executor import Outcome, resource_can_start, run_task
from qhpc.broker.idempotency import IDEMPOTENCY_TTL, Idempotency, Keys
from qhpc.broker.journal import COMMIT_INTERVAL, Journal
from qhpc.broker.output import DEFAULT_OUTPUT_LIMIT
from qhpc.broker.programs import ProgramManager
from qhpc.broker.scheduler import (
    Policy,
    QueuedTask,
    Reservation,
    SchedulingView,
    SessionLease,
    SessionMode,
    SessionRhythms,
    build_policy,
    revisit_at,
)
from qhpc.broker.usage import UsageTracker
from qhpc.errors import QhpcError
from qhpc.resources import (
    DEFAULT_LIMITS,
    MAX_PAYLOAD_BYTES,
    DecodeLimits,
    DecodePool,
    Payload,
    PayloadDecoder,
    PayloadError,
    QuantumResource,
    ResourceRegistry,
    TaskResult,
    TaskStatus,
    decode_payload,
    decode_result,
    encode_payload,
    encode_result,
    shared_pool,
    validate_payload,
)
from qhpc.runtime import Limits
from qhpc.security import Role
from qhpc.store import ConflictError, JobRecord, SessionRecord, Store, TaskOutcome, TaskRecord

log = logging.getLogger(__name__)

#: seconds a read of sessions, reservations and shares serves scheduling decisions;
#: the broker's own changes invalidate it at once, outside writes show up within this
INPUT_REFRESH = 0.5
#: longest an idle executor sleeps before it looks at its device's state again (s)
IDLE_RECHECK = 0.5
#: how often sessions past their deadline are looked for
REAP_SECONDS = 1.0
#: a closing session waits for its running task to stop, saying so this often (s)
CLOSE_WAIT_REPORT = 60.0


class BrokerError(QhpcError):
    """A request the broker refuses (bad state, limits); the message says why."""


@dataclass(frozen=True)
class BrokerConfig:
    policy: str = "fairshare"
    starvation_limit: float = 60.0
    #: batch tasks start only if they end before a session's next task is expected
    session_backfill: bool = True
    #: a batch task longer than this (estimated device seconds) runs as shot chunks,
    #: and waiting session tasks may run between them; None: tasks run whole
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS
    fairshare_half_life: float = 7 * 24 * 3600.0
    max_tasks_per_job: int = 10_000
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    #: budgets of decoding tenants' circuits (docs/security.md); the decoding happens
    #: in worker processes bounded by them (qhpc.resources.decoding)
    decode_limits: DecodeLimits = DEFAULT_LIMITS
    #: longest one task may run on a resource unless its config says otherwise
    #: (``max_task_seconds``); past it the task is stopped and fails. None: no limit
    max_task_seconds: float | None = 600.0
    #: warm spare processes of the runtime pool of hybrid programs (created on first use)
    runtime_pool_size: int = 2
    #: largest program source a hybrid job may carry
    max_program_bytes: int = 1 << 20
    program_default_timeout: float = 3600.0
    program_max_timeout: float = 7 * 24 * 3600.0
    program_limits: Limits = field(default_factory=Limits)
    #: bytes kept of each of a program's stdout and stderr, truncation marker included
    #: (written to the store while the program runs; see output.py)
    program_output_limit: int = DEFAULT_OUTPUT_LIMIT
    #: server-side programs offered besides the registered ones: name → "module:function"
    entry_points: dict[str, str] = field(default_factory=dict)
    #: where the journal logs finished session tasks before their results are released
    #: (see journal.py); default: ``<db file>.journal`` next to an SQLite store, a
    #: per-store directory in the user data directory for PostgreSQL, none in memory
    journal_dir: str | None = None
    #: how long the journal gathers finished session tasks into one commit (seconds)
    journal_commit_interval: float = COMMIT_INTERVAL
    #: how long an Idempotency-Key names its submission (see idempotency.py)
    idempotency_ttl: float = IDEMPOTENCY_TTL


@dataclass(frozen=True)
class SessionTaskOutcome:
    """How one task of :meth:`Broker.run_session_task` ended."""

    task_id: str
    state: str
    #: the codec-encoded result when completed
    result: bytes | None
    error: str | None
    qpu_seconds: float = 0.0


@dataclass
class _Running:
    task: QueuedTask
    stop: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False  # stopped because a user cancelled (not because we shut down)


class Broker:
    """Owns the queues and one executor thread per resource."""

    def __init__(
        self,
        store: Store,
        resources: ResourceRegistry,
        config: BrokerConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.resources = resources
        self.config = config or BrokerConfig()
        self.clock = clock
        self.policy: Policy = build_policy(
            self.config.policy, starvation_limit=self.config.starvation_limit,
            session_backfill=self.config.session_backfill,
        )  # fmt: skip
        self.usage = UsageTracker(self.config.fairshare_half_life)
        #: each session's think time, learnt from its submissions and released results
        self.rhythms = SessionRhythms()
        self.access = Access(store, clock)
        self.keys = Keys(store, clock, self.config.idempotency_ttl)
        self._session_counts: dict[str, int] = {}
        self.journal = Journal(
            store, self._journal_committed, log_dir=journal_dir(store, self.config.journal_dir),
            commit_interval=self.config.journal_commit_interval,
        )  # fmt: skip
        #: session tasks finished (result released) but not committed yet
        self._unstored: dict[str, TaskOutcome] = {}
        # Session task ids: 80 random bits per broker run + a counter (uuid4 per task
        # costs a getrandom call on the hot path); unique across runs like uuid4.
        self._task_id_prefix = uuid.uuid4().hex[:20]
        self._task_counter = itertools.count()
        self._idle_waiters = 0
        self._open_sessions: dict[str, SessionRecord] = {}
        self._in_flight: dict[str, TaskRecord] = {}
        self._outcomes: dict[str, tuple[str, bytes | None, str | None]] = {}
        self._outcome_seconds: dict[str, float] = {}
        self._inputs: (
            tuple[float, list[SessionLease], list[Reservation], dict[str, float]] | None
        ) = None
        self._cond = threading.Condition()
        self._queues: dict[str, dict[str, QueuedTask]] = {n: {} for n in resources.names()}
        self._running: dict[str, _Running] = {}
        #: a chunked batch task waiting at a chunk boundary while a session task runs
        self._suspended: dict[str, _Running] = {}
        #: estimated seconds of a chunked batch task's first chunk (what backfill judges)
        self._chunk_fit: dict[str, float] = {}
        self._payloads: dict[str, Payload] = {}
        self._task_done: dict[str, threading.Event] = {}
        self._on_done: dict[str, Callable[[str], None]] = {}
        self._durations: dict[str, float] = {}
        self._last_batch_start: dict[str, float] = {}
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stopping = False
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

    def _start_decoder(self) -> None:
        try:
            self.decoder.start()
        except Exception:  # the first request will try again, and report it
            log.exception("the decoding workers did not start")

    # -- lifecycle -----------------------------------------------------------
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
        with self._cond:
            for task in self.store.queued_tasks():
                self._enqueue(task)
            for open_session in self.store.list_sessions(open_only=True):
                self._open_sessions[open_session.session_id] = open_session
        self.journal.start()
        # The decoding workers start in the background: the first tenant circuit
        # should not wait for their interpreters (~0.5 s each).
        threading.Thread(target=self._start_decoder, daemon=True, name="qhpc-decoder").start()
        reaper = threading.Thread(target=self._reap_sessions, daemon=True, name="qhpc-reaper")
        reaper.start()
        self._threads.append(reaper)
        for name in self.resources.names():
            thread = threading.Thread(target=self._execute_loop, args=(name,), daemon=True,
                                      name=f"qhpc-executor-{name}")  # fmt: skip
            thread.start()
            self._threads.append(thread)
        self.programs.recover()
        # What exists now (qiskit, the broker, its caches) lives as long as the process:
        # keep it out of the collector's full passes (~50 ms each with qiskit loaded,
        # which would otherwise land in some iteration's round trip).
        gc.freeze()

    def _stop_orphans(self, task_ids: list[str]) -> None:
        """Stop runs a remote device may still be doing for tasks we will run again."""
        for task_id in task_ids:
            task = self.store.get_task(task_id)
            if task.resource_task_id is None or task.resource not in self._queues:
                continue
            try:
                self.resources.get(task.resource).task_stop(task.resource_task_id)
            except Exception as error:  # gone already, or the device is unreachable
                log.info("orphaned run %s of task %s: %s", task.resource_task_id, task_id, error)

    def stop(self) -> None:
        self.programs.close()
        with self._cond:
            self._stopping = True
            for running in [*self._running.values(), *self._suspended.values()]:
                running.stop.set()
            # Queued session tasks live only in memory: end them (their clients are
            # waiting), as cancel() does; batch tasks stay queued in the store.
            unstarted: list[TaskRecord] = []
            for queue in self._queues.values():
                for queued in [t for t in queue.values() if t.task_id in self._in_flight]:
                    del queue[queued.task_id]
                    self._payloads.pop(queued.task_id, None)
                    unstarted.append(self._in_flight[queued.task_id])
            self._cond.notify_all()
        never_ran = TaskOutcome(
            "cancelled", None, "the broker stopped before it started", 0.0, 0, 0, self.clock()
        )
        for task in unstarted:
            self._finished_in_memory(task, never_ran)
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        self.journal.stop()

    # -- admission -----------------------------------------------------------
    def submit(
        self,
        *,
        user: str,
        account: str,
        resource: str,
        payloads: Sequence[Payload],
        centre: str | None = None,
        priority: int = 0,
        name: str | None = None,
        session_id: str | None = None,
        idempotency: Idempotency | None = None,
    ) -> JobRecord:
        """Validate, persist (durable before return), queue; returns the job.

        With ``idempotency``, a submission that reuses a key returns the job of the
        first one instead (see idempotency.py).
        """
        prior = self.keys.prior(idempotency)
        if prior is not None:
            return prior
        qpu = self.resources.get(resource)
        target = qpu.target()
        if not payloads:
            raise PayloadError("a job needs at least one task")
        if len(payloads) > self.config.max_tasks_per_job:
            raise PayloadError(
                f"{len(payloads)} tasks exceed the limit of {self.config.max_tasks_per_job} per job"
            )
        now = self.clock()
        job_id = uuid.uuid4().hex
        tasks = []
        for index, payload in enumerate(payloads):
            try:
                validate_payload(payload, target)
            except PayloadError as exc:
                raise PayloadError(f"task {index}: {exc}") from None
            data = encode_payload(payload)
            if len(data) > self.config.max_payload_bytes:
                raise PayloadError(
                    f"task {index}: {len(data)} bytes exceed the limit of "
                    f"{self.config.max_payload_bytes} bytes"
                )
            tasks.append(
                TaskRecord(
                    # Job id + index: tasks of one job share a submission time, and the
                    # policies break ties by task id, so this keeps them in index order.
                    task_id=f"{job_id}{index:06x}", job_id=job_id, resource=resource, index=index,
                    state="queued", payload=data, payload_kind=payload.kind, submitted_at=now,
                    started_at=None, finished_at=None, resource_task_id=None, error=None,
                    attempts=0, session_id=session_id, account=account, user=user,
                    priority=priority,
                    estimated_seconds=qpu.estimate_seconds(payload) or self._estimate(resource),
                )
            )  # fmt: skip
        job = JobRecord(
            job_id=job_id, user=user, account=account, centre=centre, resource=resource,
            kind="session" if session_id else "batch", priority=priority, state="queued",
            created_at=now, finished_at=None, session_id=session_id, name=name,
            task_count=len(tasks),
        )  # fmt: skip
        winner = self.keys.store_once(
            idempotency, job_id, now, lambda key: self.store.create_job(job, tasks, key)
        )
        if winner is not None:
            return winner
        with self._cond:
            for task, payload in zip(tasks, payloads, strict=True):
                self._payloads[task.task_id] = payload
                self._enqueue(task)
                self._note_chunk_fit(task, payload, qpu)
            self._cond.notify_all()
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
        unstarted: list[TaskRecord] = []
        with self._cond:
            for queue in self._queues.values():
                for task_id in cancelled:
                    queue.pop(task_id, None)
                    self._chunk_fit.pop(task_id, None)
                in_memory = [t for t in queue.values() if t.job_id == job_id and t.task_id in
                             self._in_flight]  # fmt: skip
                for queued in in_memory:
                    del queue[queued.task_id]
                    self._payloads.pop(queued.task_id, None)
                    cancelled.append(queued.task_id)
                    unstarted.append(self._in_flight[queued.task_id])
            runs = [*self._running.values(), *self._suspended.values()]
            stopped = [r.task.task_id for r in runs if r.task.job_id == job_id]
            for running in runs:
                if running.task.job_id == job_id:
                    running.cancelled = True
                    running.stop.set()
            self._cond.notify_all()
        never_ran = TaskOutcome("cancelled", None, "cancelled before it started", 0.0, 0, 0, now)
        for task in unstarted:  # session tasks: not stored yet, the journal stores them
            self._finished_in_memory(task, never_ran)
        with self._cond:
            for task_id in cancelled:
                if task_id not in self._in_flight:
                    self._signal_done(task_id)
        return cancelled + stopped

    # -- sessions --------------------------------------------------------------
    def open_session(
        self,
        *,
        user: str,
        account: str,
        resource: str,
        deadline: float,
        mode: SessionMode = SessionMode.MULTIPLEX,
        centre: str | None = None,
        slurm_job_id: str | None = None,
    ) -> tuple[SessionRecord, str]:
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
        with self._cond:
            self._open_sessions[session.session_id] = session
        _, secret = self.access.issue(
            Role.SESSION, user, account=account, centre=centre,
            session_id=session.session_id, resource=resource, expires_at=deadline,
        )  # fmt: skip
        self.invalidate()
        return session, secret

    def submit_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> str:
        """Queue one task inside an open session (session priority); returns its id.

        Nothing is written yet: the task runs from memory and is stored, with its
        outcome, by the journal once it has finished (write-behind, see journal.py).
        """
        task, _ = self._session_task(session_id, payload, encoded)
        with self._cond:
            self._admit_session_task(session_id, task, payload)
            self._enqueue(task)
            self._cond.notify_all()
        return task.task_id

    def run_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> SessionTaskOutcome:
        """Run one session task to its end on the caller's thread and return its outcome.

        The direct path of co-located programs. When the resource is idle, nothing is
        queued for it and the policy would pick this task anyway, the task runs right
        here — no executor hand-off; otherwise it is queued like any session task and
        this waits for it. Either way the result is returned once the journal has
        logged the task, before its commit (see journal.py).
        """
        done = threading.Lock()  # released when a queued task has finished (cheaper than an Event)
        done.acquire()
        task_id, outcome = self.start_session_task(
            session_id, payload, encoded, on_done=lambda _: done.release()
        )
        if outcome is not None:
            return outcome
        done.acquire()
        with self._cond:
            qpu_seconds = self._outcome_seconds.get(task_id, 0.0)
        state, data, error = self.take_outcome(task_id)
        return SessionTaskOutcome(task_id, state, data, error, qpu_seconds)

    def start_session_task(
        self,
        session_id: str,
        payload: Payload,
        encoded: bytes | None = None,
        *,
        on_done: Callable[[str], None],
        inline_budget: float = math.inf,
    ) -> tuple[str, SessionTaskOutcome | None]:
        """Admit one session task; run it on the caller's thread if it may run now.

        It runs right here when the resource is idle, nothing is queued for it, the
        policy would pick it anyway and it is expected to take at most
        ``inline_budget`` seconds; then its outcome is returned. Otherwise it is queued
        (session priority), ``(task_id, None)`` is returned and ``on_done(task_id)`` is
        called once it has finished (under the broker's lock: hand the id over, never
        block); :meth:`take_outcome` then gives its outcome.
        """
        task, qpu = self._session_task(session_id, payload, encoded)
        with self._cond:
            self._admit_session_task(session_id, task, payload)
            queued = self._queued(task)
            running = None
            # A budget needs an estimate: until the resource has completed a task, its
            # tasks' duration is unknown (and could be long).
            short = inline_budget == math.inf or (
                task.resource in self._durations and task.estimated_seconds <= inline_budget
            )
            if short and self._may_run_now(queued, qpu):
                running = _Running(queued)
                self._running[task.resource] = running
            else:
                self._on_done[task.task_id] = on_done
                self._enqueue(task)
                self._cond.notify_all()
        if running is None:
            return task.task_id, None
        try:
            finished = self._run_one(qpu, queued, running, inline=True)
        finally:
            with self._cond:
                self._running.pop(task.resource, None)
                # Wake the executor only if work arrived meanwhile (not per iteration).
                if self._queues[task.resource] or self._idle_waiters or self._stopping:
                    self._cond.notify_all()
        if finished is None:  # interrupted by the broker's own shutdown
            outcome = SessionTaskOutcome(task.task_id, "cancelled", None, "the broker is stopping")
        else:
            outcome = SessionTaskOutcome(
                task.task_id, finished.state, finished.result, finished.error,
                finished.qpu_seconds,
            )  # fmt: skip
        return task.task_id, outcome

    def _next_task_id(self) -> str:
        return f"{self._task_id_prefix}{next(self._task_counter):012x}"

    def _session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None
    ) -> tuple[TaskRecord, QuantumResource]:
        with self._cond:
            session = self._open_sessions.get(session_id)
        now = self.clock()
        if session is None or session.deadline <= now:
            self.store.get_session(session_id)  # unknown → NotFoundError
            raise BrokerError(f"session {session_id} is closed")
        qpu = self.resources.get(session.resource)
        validate_payload(payload, qpu.target())
        data = encode_payload(payload) if encoded is None else encoded
        if len(data) > self.config.max_payload_bytes:
            raise PayloadError(
                f"{len(data)} bytes exceed the limit of {self.config.max_payload_bytes}"
            )
        with self._cond:
            index = self._session_counts.get(session_id)
            if index is None:  # first task since this broker started
                index = self.store.get_job(session_id).task_count
            self._session_counts[session_id] = index + 1
        task = TaskRecord(
            task_id=self._next_task_id(), job_id=session.session_id, resource=session.resource,
            index=index, state="queued", payload=data, payload_kind=payload.kind,
            submitted_at=now, started_at=None, finished_at=None, resource_task_id=None,
            error=None, attempts=0, session_id=session_id, account=session.account,
            user=session.user, priority=0,
            estimated_seconds=qpu.estimate_seconds(payload) or self._estimate(session.resource),
        )  # fmt: skip
        return task, qpu

    def _admit_session_task(self, session_id: str, task: TaskRecord, payload: Payload) -> None:
        """Take ``task`` in flight, if its session is still open (caller holds _cond)."""
        if session_id not in self._open_sessions:
            raise BrokerError(f"session {session_id} is closed")
        if self._stopping:
            raise BrokerError("the broker is stopping")
        self._in_flight[task.task_id] = task
        self._payloads[task.task_id] = payload
        self.rhythms.submitted(session_id, task.submitted_at)

    def _may_run_now(self, task: QueuedTask, resource: QuantumResource) -> bool:
        """Would the executor start ``task`` at once if it were queued? (caller holds _cond)"""
        name = task.resource
        if self._stopping or name in self._running or self._queues[name]:
            return False
        if not resource_can_start(resource):
            return False
        now = self.clock()
        sessions, reservations, _ = self._policy_inputs(now)
        constrained = any(r.resource == name for r in reservations) or any(
            s.resource == name
            and s.mode is SessionMode.EXCLUSIVE
            and s.session_id != task.session_id
            for s in sessions
        )
        if not constrained:  # with one task pending, every policy picks it
            return True
        return self.policy.next_task(self._view(name, now, [task])) is task

    def close_session(self, session_id: str) -> None:
        """Close a session: stop a program running in it, cancel its leftovers, revoke its
        tokens, end its job."""
        self.programs.session_closed(session_id)
        now = self.clock()
        self.store.close_session(session_id, now)
        with self._cond:
            self._open_sessions.pop(session_id, None)
            self.rhythms.forget(session_id)
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
        with self._cond:
            self._session_counts.pop(session_id, None)
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

    # -- results -------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRecord:
        """A job; a session job's task count includes its tasks still in flight."""
        job = self.store.get_job(job_id)
        with self._cond:
            extra = sum(1 for t in self._in_flight.values() if t.job_id == job_id)
        return replace(job, task_count=job.task_count + extra) if extra else job

    def tasks_of_job(self, job_id: str) -> list[TaskRecord]:
        """A job's tasks by index, including session tasks in flight (not stored yet)."""
        stored = self.store.tasks_of_job(job_id)
        with self._cond:
            pending = [self._visible(t) for t in self._in_flight.values() if t.job_id == job_id]
        if not pending:
            return stored
        known = {t.task_id for t in stored}
        merged = stored + [t for t in pending if t.task_id not in known]
        return sorted(merged, key=lambda t: t.index)

    def get_task(self, task_id: str) -> TaskRecord:
        """A task, also while it is a session task in flight (not stored yet)."""
        with self._cond:
            pending = self._in_flight.get(task_id)
            if pending is not None:
                return self._visible(pending)
        return self.store.get_task(task_id)

    def _visible(self, task: TaskRecord) -> TaskRecord:
        """An in-flight record as it stands: final once finished, before its commit.
        (Caller holds _cond.)"""
        finished = self._unstored.get(task.task_id)
        if finished is None:
            return task
        return replace(
            task, state=finished.state, error=finished.error, finished_at=finished.finished_at
        )

    def wait_task(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        with self._cond:
            event = self._task_done.setdefault(task_id, threading.Event())
            in_flight = task_id in self._in_flight
        if in_flight:
            event.wait(timeout)
            with self._cond:
                pending = self._in_flight.get(task_id)
                if pending is not None:  # still running: not stored yet
                    return self._visible(pending)
            return self.store.get_task(task_id)
        task = self.store.get_task(task_id)
        if task.state in ("queued", "running"):
            event.wait(timeout)
            task = self.store.get_task(task_id)
        return task

    def when_done(self, task_id: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(task_id)`` once the task is final (at once if it already is).

        The callback runs on an executor thread while the broker's lock is held:
        it must only hand the id over (e.g. to a queue), never block.
        """
        with self._cond:
            finished = self._unstored.get(task_id)
            if finished is not None:  # released already, not committed yet
                self._outcomes[task_id] = (finished.state, finished.result, finished.error)
                self._outcome_seconds[task_id] = finished.qpu_seconds
                callback(task_id)
                return
            self._on_done[task_id] = callback
            if task_id in self._in_flight:
                return  # signalled when it has finished
        if self.store.get_task(task_id).state not in ("queued", "running"):
            with self._cond:
                if self._on_done.pop(task_id, None) is not None:
                    callback(task_id)

    def take_outcome(self, task_id: str) -> tuple[str, bytes | None, str | None]:
        """State, encoded result and error of a final task, from memory when the journal
        has just committed it (the fast path's read), else from the store."""
        with self._cond:
            kept = self._outcomes.pop(task_id, None)
            self._outcome_seconds.pop(task_id, None)
        if kept is not None:
            return kept
        task = self.store.get_task(task_id)
        data = self.store.task_result(task_id) if task.state == "completed" else None
        return task.state, data, task.error

    def task_result(self, task_id: str) -> TaskResult | None:
        with self._cond:
            finished = self._unstored.get(task_id)
        data = finished.result if finished is not None else self.store.task_result(task_id)
        return None if data is None else decode_result(data)

    # -- queue insight -------------------------------------------------------
    def queue(self, resource: str) -> list[tuple[QueuedTask, float]]:
        """Pending tasks in the order the policy would run them now, with ETAs (s from now)."""
        now = self.clock()
        with self._cond:
            pending = dict(self._queues[resource])
            view_base = self._view(resource, now, list(pending.values()))
            running = self._running.get(resource)
        ahead = self._estimate(resource) / 2 if running else 0.0
        ordered: list[tuple[QueuedTask, float]] = []
        # The policy's order is the order of repeated next_task calls; capped so a
        # huge queue costs O(cap · n), the rest is shown in submission order.
        cap = 100
        remaining = dict(pending)
        while remaining and len(ordered) < cap:
            view = SchedulingView(
                now=now, resource=resource, queue=list(remaining.values()),
                sessions=view_base.sessions, reservations=view_base.reservations,
                usage=view_base.usage, shares=view_base.shares, rhythms=view_base.rhythms,
            )  # fmt: skip
            task = self.policy.next_task(view) or min(
                remaining.values(), key=lambda t: t.submitted_at
            )
            ordered.append((task, ahead))
            ahead += task.estimated_seconds or self._estimate(resource)
            del remaining[task.task_id]
        for task in sorted(remaining.values(), key=lambda t: t.submitted_at):
            ordered.append((task, ahead))
            ahead += task.estimated_seconds or self._estimate(resource)
        return ordered

    def queue_length(self, resource: str) -> int:
        with self._cond:
            return len(self._queues[resource])

    def is_busy(self, resource: str) -> bool:
        with self._cond:
            return resource in self._running

    # -- internals -----------------------------------------------------------
    def _reap_sessions(self) -> None:
        # Its own event, not the broker's condition: every submission notifies that.
        while not self._stopped.wait(REAP_SECONDS):
            try:
                self.close_expired_sessions()
            except Exception:
                log.exception("closing expired sessions failed")

    def _enqueue(self, record: TaskRecord) -> None:
        queue = self._queues.get(record.resource)
        if queue is None:
            log.error(
                "task %s targets unknown resource %s; left queued", record.task_id, record.resource
            )
            return
        queue[record.task_id] = self._queued(record)

    @staticmethod
    def _queued(record: TaskRecord) -> QueuedTask:
        return QueuedTask(
            task_id=record.task_id, job_id=record.job_id, resource=record.resource,
            account=record.account, user=record.user, submitted_at=record.submitted_at,
            priority=record.priority, session_id=record.session_id,
            estimated_seconds=record.estimated_seconds,
        )  # fmt: skip

    def invalidate(self) -> None:
        """Re-read sessions, reservations and shares at the next scheduling decision."""
        with self._cond:
            self._inputs = None
            self._cond.notify_all()

    def _policy_inputs(
        self, now: float
    ) -> tuple[list[SessionLease], list[Reservation], dict[str, float]]:
        # Caller holds self._cond. Re-read at most every INPUT_REFRESH seconds (and at
        # once after the broker's own changes): three queries per decision would cost
        # more than the decision itself on the hot path.
        cached = self._inputs
        if cached is not None and now - cached[0] < INPUT_REFRESH:
            return cached[1], cached[2], cached[3]
        sessions = [
            SessionLease(
                session_id=s.session_id, resource=s.resource, account=s.account, user=s.user,
                opened_at=s.opened_at, deadline=s.deadline, mode=SessionMode(s.mode),
            )
            for s in self.store.list_sessions(open_only=True)
        ]  # fmt: skip
        reservations = [
            Reservation(
                reservation_id=r.reservation_id, resource=r.resource, account=r.account,
                start=r.start, end=r.end, allow_backfill=r.allow_backfill,
            )
            for r in self.store.list_reservations(ending_after=now)
        ]  # fmt: skip
        shares = {a.name: a.shares for a in self.store.list_accounts()}
        self._inputs = (now, sessions, reservations, shares)
        return sessions, reservations, shares

    def _view(self, resource: str, now: float, queue: list[QueuedTask]) -> SchedulingView:
        sessions, reservations, all_shares = self._policy_inputs(now)
        usage = self.usage.snapshot(now)
        # Shares of every account that counts in the fair-share normalisation:
        # those with work queued and those with usage.
        accounts = {t.account for t in queue} | {a for a, u in usage.items() if u > 0}
        shares = {a: v for a, v in all_shares.items() if a in accounts}
        return SchedulingView(
            now=now, resource=resource, queue=queue,
            sessions=[x for x in sessions if x.resource == resource],
            reservations=[r for r in reservations if r.resource == resource],
            usage=usage, shares=shares,
            last_batch_start=self._last_batch_start.get(resource),
            rhythms=self.rhythms.snapshot(),
        )  # fmt: skip

    def _next(
        self, resource_name: str, resource: QuantumResource
    ) -> tuple[QueuedTask | None, float]:
        """The task to run now, or None and when to ask again (caller holds _cond)."""
        queue = self._queues[resource_name]
        now = self.clock()
        if not queue or resource_name in self._running or not resource_can_start(resource):
            return None, now + IDLE_RECHECK  # (running: a co-located task runs inline)
        view = self._view(resource_name, now, list(queue.values()))
        if not view.reservations:
            view = replace(view, queue=[self._fit_estimate(t) for t in view.queue])
        task = self.policy.next_task(view)
        if task is None:
            return None, min(now + IDLE_RECHECK, revisit_at(self.policy, view))
        del queue[task.task_id]
        self._running[resource_name] = _Running(task)
        if task.session_id is None:
            self._last_batch_start[resource_name] = self.clock()
        return task, now

    def _fit_estimate(self, task: QueuedTask) -> QueuedTask:
        """``task`` with the duration backfill judges it by (caller holds _cond).

        A chunked task can yield after its first chunk: its first chunk's estimate.
        A batch task with no estimate of its own: the resource's learnt duration, or
        inf while there is none — an unknown length must not pass for a short one.
        (Not beside reservations: there a window must not be overrun by the rest, and
        an unknown length keeps the old reading.)
        """
        fit = self._chunk_fit.get(task.task_id)
        if fit is not None:
            return replace(task, estimated_seconds=fit)
        if task.session_id is None and task.estimated_seconds <= 0:
            return replace(task, estimated_seconds=self._durations.get(task.resource, math.inf))
        return task

    def _execute_loop(self, resource_name: str) -> None:
        resource = self.resources.get(resource_name)
        while True:
            with self._cond:
                if self._stopping:
                    return
                try:
                    task, wake_at = self._next(resource_name, resource)
                except Exception:  # a bad decision must not end this resource's executor
                    log.exception("scheduling on %s failed; trying again", resource_name)
                    self._cond.wait(timeout=IDLE_RECHECK)
                    continue
                if task is None:
                    # Woken by submissions, cancellations and session changes; the
                    # timeout is when time alone may change the policy's answer (a
                    # session's patience ends...), at most IDLE_RECHECK for the device.
                    self._cond.wait(timeout=max(0.0, wake_at - self.clock()))
                    continue
                running = self._running[resource_name]
            try:
                self._run_one(resource, task, running)
            except Exception:
                log.exception("executor for %s failed on task %s", resource_name, task.task_id)
            finally:
                with self._cond:
                    self._running.pop(resource_name, None)
                    self._cond.notify_all()

    def _run_one(
        self, resource: QuantumResource, task: QueuedTask, running: _Running, inline: bool = False
    ) -> TaskOutcome | None:
        """Run a task and book it; its outcome, or ``None`` if our own shutdown stopped it.

        ``inline``: a session task run on its caller's thread, for microseconds to
        milliseconds; it is not shown ``running`` meanwhile (one record copy fewer).
        """
        with self._cond:
            in_memory = self._in_flight.get(task.task_id)
            payload = self._payloads.pop(task.task_id, None)
            self._chunk_fit.pop(task.task_id, None)
        if payload is None:
            payload = decode_payload(self.store.get_task(task.task_id).payload)
        started = self.clock()
        if in_memory is None:
            self.store.mark_task_running(task.task_id, None, started)
        elif not inline:
            with self._cond:
                if task.task_id in self._in_flight:
                    self._in_flight[task.task_id] = replace(
                        in_memory, state="running", started_at=started
                    )
        remember = None
        if in_memory is None and resource.remembers_tasks:

            def remember(resource_task: str) -> None:
                self.store.set_resource_task_id(task.task_id, resource_task)

        chunks = (
            [payload] if in_memory is not None or inline else self._chunks(task, resource, payload)
        )
        outcome: Outcome
        if len(chunks) > 1:
            outcome = run_chunked(
                resource, chunks, running.stop,
                lambda _, seconds: self._between_chunks(resource, task, running, seconds),
                self.clock, remember, self._max_task_seconds(task.resource),
            )  # fmt: skip
        else:
            limit = self._max_task_seconds(task.resource)
            outcome = run_task(resource, payload, running.stop, self.clock, remember, limit)
        state = "cancelled" if outcome.state is TaskStatus.CANCELLED else str(outcome.state)
        finished = TaskOutcome(
            state=state,
            result=None if outcome.result is None else encode_result(outcome.result),
            error=outcome.error,
            qpu_seconds=outcome.qpu_seconds,
            shots=outcome.shots,
            circuits=outcome.circuits,
            finished_at=outcome.finished_at,
        )
        with self._cond:  # the policy reads both under the lock (_view, _next)
            self.usage.record(task.account, outcome.qpu_seconds, outcome.finished_at)
            if outcome.state is TaskStatus.COMPLETED:
                previous = self._durations.get(resource.name)
                took = outcome.qpu_seconds
                self._durations[resource.name] = (
                    took if previous is None else 0.8 * previous + 0.2 * took
                )
        interrupted = (
            outcome.state is TaskStatus.CANCELLED and not running.cancelled and self._stopping
        )
        if interrupted and in_memory is None:
            # Interrupted by our own shutdown, not by its owner: leave it "running" in
            # the store, and the next start queues it again (as after a crash).
            return None
        if interrupted:
            # A session task exists only in memory: nothing would run it again, so it
            # ends cancelled, with the device time it used booked.
            finished = replace(finished, error="the broker stopped while it ran")
        if in_memory is not None:
            # Write-behind: logged now, committed by the journal later (journal.py).
            self._finished_in_memory(replace(in_memory, started_at=started, attempts=1), finished)
            return finished
        # Settles the job in the same transaction, so a waiter woken below sees it final.
        self.store.finish_task(task.task_id, finished)
        with self._cond:
            self._signal_done(task.task_id)
        return finished

    # -- shot chunks (chunking.py) ---------------------------------------------
    def _note_chunk_fit(self, task: TaskRecord, payload: Payload, qpu: QuantumResource) -> None:
        """Remember the first chunk's estimate of a batch task that will run chunked.
        (Caller holds _cond.)"""
        if task.session_id is not None or self.config.chunk_seconds is None:
            return
        chunks = self._chunks(self._queued(task), qpu, payload)
        if len(chunks) > 1:
            self._chunk_fit[task.task_id] = qpu.estimate_seconds(chunks[0]) or 0.0

    def _chunks(
        self, task: QueuedTask, resource: QuantumResource, payload: Payload
    ) -> list[Payload]:
        """``payload`` as the chunks a batch task runs as ([payload]: whole)."""
        if task.session_id is not None or not can_chunk(resource):
            return [payload]
        try:
            return plan_chunks(payload, resource.estimate_seconds, self.config.chunk_seconds)
        except Exception:  # a plan is an optimisation: never fail the task over it
            log.exception("planning shot chunks of task %s failed; running it whole", task.task_id)
            return [payload]

    def _between_chunks(
        self, resource: QuantumResource, task: QueuedTask, running: _Running, seconds: float
    ) -> None:
        """At a boundary of a chunked batch task: run the waiting session tasks that the
        policy puts before the task's next chunk (``seconds`` long), then return."""
        name = resource.name
        while True:
            with self._cond:
                if self._stopping or running.stop.is_set():
                    return
                now = self.clock()
                sessions, _, _ = self._policy_inputs(now)
                open_ids = {s.session_id for s in sessions if s.resource == name and s.is_open(now)}
                queue = self._queues[name]
                waiting = [t for t in queue.values() if t.session_id in open_ids]
                chosen = None
                if waiting:
                    resume = replace(task, estimated_seconds=seconds)
                    chosen = self.policy.next_task(self._view(name, now, [*waiting, resume]))
                if chosen is None or chosen.task_id == task.task_id:
                    self._last_batch_start[name] = now
                    return
                del queue[chosen.task_id]
                yielded = _Running(chosen)
                self._suspended[name] = running
                self._running[name] = yielded
            try:
                self._run_one(resource, chosen, yielded)
            except Exception:
                log.exception("executor for %s failed on task %s", name, chosen.task_id)
            finally:
                with self._cond:
                    self._running[name] = running
                    self._suspended.pop(name, None)
                    self._cond.notify_all()

    def _finished_in_memory(self, task: TaskRecord, outcome: TaskOutcome) -> None:
        """A session task ended: hand it to the journal and release its outcome.

        Released at once when the journal has logged it (a crash before the commit is
        replayed from the log, so its usage is never lost); otherwise only after the
        commit, as ``_journal_committed`` does.
        """
        if not self.journal.append(task, outcome):
            self.journal.flush()
            return
        task_id = task.task_id
        with self._cond:
            if task.session_id is not None:
                self.rhythms.released(task.session_id, self.clock())
            if task_id not in self._in_flight:
                return  # committed (and signalled) already
            self._unstored[task_id] = outcome  # shown final from memory (_visible)
            callback = self._on_done.pop(task_id, None)
            if callback is not None:
                self._outcomes[task_id] = (outcome.state, outcome.result, outcome.error)
                self._outcome_seconds[task_id] = outcome.qpu_seconds
                callback(task_id)  # waiters of wait_task() are woken by the commit

    def _journal_committed(self, batch: Sequence[tuple[TaskRecord, TaskOutcome]]) -> None:
        with self._cond:
            for task, outcome in batch:
                self._in_flight.pop(task.task_id, None)
                self._unstored.pop(task.task_id, None)
                if task.task_id in self._on_done:
                    self._outcomes[task.task_id] = (outcome.state, outcome.result, outcome.error)
                    self._outcome_seconds[task.task_id] = outcome.qpu_seconds
                self._signal_done(task.task_id)

    def _wait_idle(self, job_id: str) -> None:
        """Until no task of ``job_id`` runs (a closing session waits for its last task).

        No time limit: the run was asked to stop, and the job may end only after its
        task is stored — a final job refuses it, and the task and its usage would be
        lost. A device slow to stop is reported every ``CLOSE_WAIT_REPORT`` seconds.
        """

        def idle() -> bool:
            return all(r.task.job_id != job_id for r in self._running.values())

        with self._cond:
            self._idle_waiters += 1
            try:
                while not self._cond.wait_for(idle, CLOSE_WAIT_REPORT):
                    running = [r.task for r in self._running.values() if r.task.job_id == job_id]
                    for task in running:
                        log.warning("closing %s: still waiting for task %s to stop on %s",
                                    job_id, task.task_id, task.resource)  # fmt: skip
            finally:
                self._idle_waiters -= 1

    def _signal_done(self, task_id: str) -> None:
        # Caller holds self._cond.
        event = self._task_done.pop(task_id, None)
        if event is not None:
            event.set()
        callback = self._on_done.pop(task_id, None)
        if callback is not None:
            callback(task_id)

    def _estimate(self, resource: str) -> float:
        return self._durations.get(resource, 0.0)


def journal_dir(store: Store, configured: str | None) -> Path | None:
    """Where the journal's log lives (see :attr:`BrokerConfig.journal_dir`)."""
    if configured is not None:
        return Path(configured)
    url = store.url
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :] + ".journal")
    if store.backend == "sqlite":
        return None  # in memory: nothing survives a crash anyway
    from platformdirs import user_data_path

    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return user_data_path("qhpc") / "journal" / digest
