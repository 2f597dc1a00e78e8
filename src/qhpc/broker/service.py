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
* :mod:`~qhpc.broker.inputs` caches what the policies read besides the queue;
* :mod:`~qhpc.broker.pools` turns a pool's name into the member work goes to;
* :mod:`~qhpc.broker.steering` answers :meth:`Broker.admission`: how many sessions a
  resource admits, from their duty cycles as :class:`Sessions` measures them;
* :mod:`~qhpc.broker.vendor` books the vendor jobs sessions submit through the vendor
  proxy (``qhpc.proxy``) and owns their ids;
* :mod:`~qhpc.broker.telemetry` counts what happens for ``/metrics`` (every room gets
  the broker's one :class:`Telemetry`), :mod:`~qhpc.broker.gauges` reads the rest
  when Prometheus scrapes.

One condition (``self.shared.cond``) guards them all, as one decision reads them
together; this class takes it, the rooms document where they expect it held.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from qhpc.broker import admission
from qhpc.broker.access import Access
from qhpc.broker.admission_control import Admission
from qhpc.broker.cancels import Cancels
from qhpc.broker.config import BrokerConfig, journal_dir
from qhpc.broker.drains import DrainRequest, Drains
from qhpc.broker.executor import Context, ResourceExecutor, Shared
from qhpc.broker.gauges import BrokerCollector
from qhpc.broker.idempotency import Idempotency, Keys
from qhpc.broker.inputs import PolicyInputs
from qhpc.broker.journal import writer_for
from qhpc.broker.leases import Leases
from qhpc.broker.lifecycle import JobLog, ResourceWatch
from qhpc.broker.memory import MemoryReturn
from qhpc.broker.operators import Operators
from qhpc.broker.pools import PoolRouter
from qhpc.broker.programs import ProgramManager
from qhpc.broker.queries import TaskQueries
from qhpc.broker.records import Records
from qhpc.broker.recovery import Recovery
from qhpc.broker.retention import Purger
from qhpc.broker.scheduler import Policy, QueuedTask, SessionMode, SessionRhythms, build_policy
from qhpc.broker.session_tasks import SessionTasks
from qhpc.broker.sessions import Sessions, SessionTaskOutcome
from qhpc.broker.steering import Steering
from qhpc.broker.telemetry import Telemetry
from qhpc.broker.usage import UsageTracker
from qhpc.broker.vendor import VendorJobs
from qhpc.resources import (
    DecodePool,
    Payload,
    PayloadDecoder,
    ResourceRegistry,
    ResourceStatus,
    TaskResult,
    shared_pool,
)
from qhpc.store import DrainRecord, JobRecord, SessionRecord, Store, TaskRecord

log = logging.getLogger(__name__)

#: how often sessions past their deadline are looked for
REAP_SECONDS = 1.0


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
        #: what /metrics shows (its registry is this broker's own)
        self.telemetry = Telemetry(resources.names())
        self.inputs = PolicyInputs(store, self.usage, self.rhythms)
        self.inputs.on_change = self.shared.cond.notify_all
        self.sessions = Sessions(
            self.shared.cond, store, self.rhythms, clock,
            journal_dir(store, config.journal_dir), config.journal_commit_interval,
            self.telemetry, config.admission.duty_cycles(),
            writer_for(store, in_process=config.commit_in_process),
        )  # fmt: skip
        self.journal = self.sessions.journal
        #: gives the heap's free pages back once a burst of work has drained (memory.py)
        self.memory = MemoryReturn()
        self.tasks = TaskQueries(store, self.sessions, self.shared.cond)
        #: what the API reads and changes besides jobs and sessions (records.py)
        self.records = Records(store, self.invalidate)
        #: operators' drains (drains.py)
        self.drains = Drains(store)
        #: each job's submission and end, once, in the operator's log (lifecycle.py)
        self.job_log = JobLog(store)
        self.watch = ResourceWatch()
        #: jobs sessions submitted through the vendor proxy, and their usage (vendor.py)
        self.vendor_jobs = VendorJobs(store, self.usage, self.telemetry, clock)
        context = Context(
            self.shared, store, self.sessions, self.inputs, lambda: self.policy, self.usage,
            clock, config.chunk_seconds, self.drains, self.telemetry, self.job_log.settled,
        )  # fmt: skip
        self.executors = {
            name: ResourceExecutor(resources.get(name), context, self._max_task_seconds(name))
            for name in resources.names()
        }
        self.session_tasks = SessionTasks(
            shared=self.shared, sessions=self.sessions, executors=self.executors,
            store=store, clock=clock, max_payload_bytes=config.max_payload_bytes,
        )  # fmt: skip
        self.leases = Leases(
            store=store, resources=resources, access=self.access, sessions=self.sessions,
            shared=self.shared, executors=self.executors, clock=clock, cancel=self.cancel,
            invalidate=self.invalidate,
        )  # fmt: skip
        self.operators = Operators(resources, self.drains, self.executors, self.shared, clock)
        #: pool names to members at admission (pools.py)
        self.pools = PoolRouter(resources, self.executors, self.resource_status,
                                self.leases.held, self.leases.open_on, clock)  # fmt: skip
        self.steering = Steering(config.admission, self.sessions, self.shared, resources, clock)
        self.cancels = Cancels(
            store, self.shared, self.executors, self.sessions, clock, self.job_log.settled
        )
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        #: the retention schedule (retention.py); it runs only if results expire
        self.purger = Purger(store, config.retention, clock, self._stopped)
        self.programs = ProgramManager(self)
        self.leases.on_close = self.programs.session_closed
        self.telemetry.watch(
            BrokerCollector(
                shared=self.shared, executors=self.executors, sessions=self.sessions,
                journal=self.journal, status=self.resource_status,
                pool_stats=self.programs.pool_stats, clock=clock, store_size=store.size_bytes,
            )
        )  # fmt: skip

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
        self.drains.load()
        Recovery(
            self.store, self.resources, self.executors, self.sessions, self.journal,
            self.usage, self.shared,
        ).run(self.clock(), self.config.fairshare_half_life)  # fmt: skip
        self.journal.start()
        # The decoding workers start in the background: the first tenant circuit
        # should not wait for their interpreters (~0.5 s each).
        self._thread(self._start_decoder, "qhpc-decoder", keep=False)
        self._thread(self._reap_sessions, "qhpc-reaper")
        if self.config.retention.keep_days is not None:
            self._thread(self.purger.run, "qhpc-purge")
        for name, executor in self.executors.items():
            self._thread(executor.loop, f"qhpc-executor-{name}")
        watch = self.watch  # the operator's log reads the broker's view (drains included)
        self._thread(
            lambda: watch.run(self.executors, self.resource_status, self._stopped), "qhpc-watch"
        )
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

    def stop(self) -> None:
        self.programs.close()
        self.cancels.stopping()
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
        routed = self.pools.route(resource, payloads)  # a pool's name → its member
        resource, now = routed.resource, self.clock()
        job, tasks = admission.batch_job(
            resource=self.resources.get(resource), payloads=payloads, user=user,
            account=account, centre=centre, priority=priority, name=name,
            session_id=session_id, now=now, max_tasks=self.config.max_tasks_per_job,
            max_bytes=self.config.max_payload_bytes,
            learnt_seconds=self.executors[resource].estimate(), pool=routed.pool,
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
        self.job_log.submitted(job)
        return job

    def cancel(self, job_id: str) -> list[str]:
        """Cancel queued tasks now and stop running ones; returns affected task ids.

        A hybrid job's program is stopped (status ``cancelled``); its session closes
        when it has ended, which cancels the session's leftover tasks.
        """
        return [] if self.programs.cancel(job_id) else self.cancels.job(job_id)

    # -- sessions --------------------------------------------------------------------------
    def open_session(
        self, *, user: str, account: str, resource: str, deadline: float,
        mode: SessionMode = SessionMode.MULTIPLEX, centre: str | None = None,
        slurm_job_id: str | None = None,
    ) -> tuple[SessionRecord, str]:  # fmt: skip
        """Open a lease on ``resource`` (a pool: on its member with the lowest ETA); returns
        it and a session token valid until the deadline."""
        routed = self.pools.route(resource, exclusive=mode is SessionMode.EXCLUSIVE)
        return self.leases.open(
            user=user, account=account, resource=routed.resource, deadline=deadline, mode=mode,
            centre=centre, slurm_job_id=slurm_job_id, pool=routed.pool,
        )  # fmt: skip

    def close_session(self, session_id: str) -> None:
        """Close a session: stop a program running in it, cancel its leftovers, revoke its
        tokens, end its job."""
        self.leases.close(session_id)

    def close_expired_sessions(self) -> list[str]:
        """Close every open session past its deadline; returns their ids."""
        return self.leases.close_expired()

    def submit_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> str:
        """Queue one task inside an open session (session priority); returns its id."""
        return self.session_tasks.submit(session_id, payload, encoded)

    def run_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None
    ) -> SessionTaskOutcome:
        """Run one session task to its end on the caller's thread; its outcome."""
        return self.session_tasks.run(session_id, payload, encoded)

    def start_session_task(
        self, session_id: str, payload: Payload, encoded: bytes | None = None, *,
        on_done: Callable[[str], None] | None, inline_budget: float = math.inf,
    ) -> tuple[str, SessionTaskOutcome | None]:  # fmt: skip
        """Admit one session task, running it here if it may run now (see session_tasks.py)."""
        return self.session_tasks.start(
            session_id, payload, encoded, on_done=on_done, inline_budget=inline_budget
        )

    # -- queries (queries.py) ----------------------------------------------------------------
    def get_job(self, job_id: str) -> JobRecord:
        """A job; a session job's task count includes its tasks still in flight."""
        return self.tasks.job(job_id)

    def tasks_of_job(self, job_id: str) -> list[TaskRecord]:
        """A job's tasks by index, including session tasks in flight (not stored yet)."""
        return self.tasks.of_job(job_id)

    def get_task(self, task_id: str) -> TaskRecord:
        """A task, also while it is a session task in flight (not stored yet)."""
        return self.tasks.get(task_id)

    def wait_task(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        """A task once it is final, or as it stands after ``timeout`` seconds."""
        return self.tasks.wait(task_id, timeout)

    def task_result(self, task_id: str) -> TaskResult | None:
        return self.tasks.result(task_id)

    def when_done(self, task_id: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(task_id)`` once the task is final (at once if it already is);
        it runs under the broker's lock: hand the id over, never block."""
        self.sessions.when_done(task_id, callback)

    def take_outcome(self, task_id: str) -> SessionTaskOutcome:
        """How a final task ended (see :meth:`Sessions.take_outcome`)."""
        return self.sessions.take_outcome(task_id)

    def queue(self, resource: str) -> list[tuple[QueuedTask, float]]:
        """Pending tasks in the order the policy would run them now, with ETAs (s from now)."""
        return self.executors[resource].order(self.clock())

    def queue_length(self, resource: str) -> int:
        with self.shared.cond:
            return len(self.executors[resource].queue)

    def is_busy(self, resource: str) -> bool:
        with self.shared.cond:
            return self.executors[resource].running is not None

    # -- operators (operators.py) ----------------------------------------------------------
    def drain(self, resource: str, request: DrainRequest, by: str) -> DrainRecord:
        """Take ``resource`` out of service (see :meth:`Operators.drain`)."""
        return self.operators.drain(resource, request, by)

    def resume(self, resource: str, by: str) -> DrainRecord:
        """End the drain of ``resource`` (NotDrained if it has none); the drain ended."""
        return self.operators.resume(resource, by)

    def resource_status(self, name: str) -> ResourceStatus:
        """The broker's view of a resource: a drain wins over what the device says."""
        return self.operators.status(name)

    def admission(self, resource: str, licences: int | None = None) -> Admission:
        """How many sessions may hold ``resource`` now (see :meth:`Steering.admission`)."""
        return self.steering.admission(resource, licences)

    def invalidate(self) -> None:
        """Re-read sessions, reservations and shares at the next scheduling decision."""
        with self.shared.cond:
            self.inputs.invalidate()

    def _reap_sessions(self) -> None:
        # Its own event, not the broker's condition: every submission notifies that.
        while not self._stopped.wait(REAP_SECONDS):
            try:
                self.leases.close_expired()
                self.operators.lapse()
            except Exception:
                log.exception("closing expired sessions or drains failed")
            with self.shared.cond:
                busy = bool(self.sessions.in_flight) or any(
                    e.queue or e.running is not None for e in self.executors.values()
                )
            self.memory.observe(busy)
