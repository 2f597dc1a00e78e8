"""One executor per resource: its queue, the task it runs, and the loop that picks the next.

A :class:`ResourceExecutor` is the data plane of one resource. Its thread asks the
policy for the next task each time the resource frees up (a task is the
non-preemptible unit, so this is what lets session tasks jump the queue and batch
tasks fill every gap), runs it through :func:`~qhpc.broker.runner.run_task`, books
the outcome and learns the resource's typical task duration. A long batch task runs
as shot chunks (chunking.py); at each chunk boundary the executor runs the session
tasks the policy puts first, then resumes. A session task may also run *inline* on
its submitter's thread when the resource is idle (see :meth:`ResourceExecutor.claim`).

All executors share the broker's one condition (their queues, the sessions and the
policy inputs are read together in each decision); what each owns is listed on the
class. Methods marked "caller holds the lock" expect it held.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qhpc.broker.chunking import can_chunk, plan_chunks, run_chunked
from qhpc.broker.drains import Drains
from qhpc.broker.inputs import PolicyInputs
from qhpc.broker.runner import Outcome, resource_can_start, run_task
from qhpc.broker.scheduler import Policy, QueuedTask, SchedulingView, SessionMode, revisit_at
from qhpc.broker.sessions import Sessions
from qhpc.broker.telemetry import BATCH, SESSION, BusyClock, Telemetry
from qhpc.broker.usage import UsageTracker
from qhpc.logcontext import bind, fields
from qhpc.resources import (
    Payload,
    QuantumResource,
    TaskStatus,
    decode_payload,
    encode_result,
)
from qhpc.store import Store, TaskOutcome, TaskRecord

log = logging.getLogger(__name__)

#: longest an idle executor sleeps before it looks at its device's state again (s)
IDLE_RECHECK = 0.5


@dataclass
class Running:
    """A task on the resource, and how to stop it."""

    task: QueuedTask
    stop: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False  # stopped because a user cancelled (not because we shut down)
    #: stopped by an operator's drain: queued again, not ended
    requeue: bool = False
    #: a session task run on its submitter's thread (short by construction: a drain lets it end)
    inline: bool = False


@dataclass
class Shared:
    """What the broker and all its executors share: the lock, and whether it is stopping."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    stopping: bool = False
    #: closing sessions waiting for their running tasks (executors then notify at once)
    idle_waiters: int = 0


@dataclass(frozen=True)
class Context:
    """The broker's parts an executor uses."""

    shared: Shared
    store: Store
    sessions: Sessions
    inputs: PolicyInputs
    #: the broker's policy as it is now (a broker's policy may be swapped while it runs)
    current_policy: Callable[[], Policy]
    usage: UsageTracker
    clock: Callable[[], float]
    chunk_seconds: float | None
    drains: Drains
    telemetry: Telemetry
    #: told each batch task's job after the task is stored (the job may have ended)
    settled: Callable[[str], None] = lambda job_id: None

    @property
    def policy(self) -> Policy:
        return self.current_policy()


def queued(record: TaskRecord) -> QueuedTask:
    """What the policy sees of a task."""
    return QueuedTask(
        task_id=record.task_id, job_id=record.job_id, resource=record.resource,
        account=record.account, user=record.user, submitted_at=record.submitted_at,
        priority=record.priority, session_id=record.session_id,
        estimated_seconds=record.estimated_seconds,
    )  # fmt: skip


class ExecutorQueue:
    """The queue half of an executor: queued tasks, their payloads, what the policy and
    the ETAs read (the learnt duration, first-chunk estimates). Caller holds the lock
    unless a method says otherwise; :class:`ResourceExecutor` adds the running half."""

    running: Running | None

    def __init__(self, resource: QuantumResource, context: Context) -> None:
        self.resource = resource
        self.name = resource.name
        self.context = context
        self.queue: dict[str, QueuedTask] = {}
        self.payloads: dict[str, Payload] = {}
        self._chunk_fit: dict[str, float] = {}
        self._duration: float | None = None
        self._last_batch_start: float | None = None
        self.instruments = context.telemetry.resource(self.name)

    def enqueue(self, record: TaskRecord, payload: Payload | None = None) -> None:
        self.queue[record.task_id] = queued(record)
        if payload is not None:
            self.payloads[record.task_id] = payload
            self._note_chunk_fit(record, payload)

    def drop(self, task_id: str) -> None:
        """Take a task out of the queue: it ends cancelled without running."""
        task = self.queue.pop(task_id, None)
        if task is not None:
            self.instruments.never_ran(task)
        self.payloads.pop(task_id, None)
        self._chunk_fit.pop(task_id, None)

    def estimate(self) -> float:
        """The learnt duration of a task here (0 until one has completed)."""
        return self._duration or 0.0

    def knows_durations(self) -> bool:
        return self._duration is not None

    def view(self, now: float, tasks: list[QueuedTask]) -> SchedulingView:
        return self.context.inputs.view(self.name, now, tasks, self._last_batch_start)

    def order(self, now: float, cap: int = 100) -> list[tuple[QueuedTask, float]]:
        """Queued tasks in the order the policy would run them now, with ETAs (s from now).

        The policy's order is the order of repeated ``next_task`` calls; capped so a
        huge queue costs O(cap · n), the rest is shown in submission order.
        """
        with self.context.shared.cond:
            pending = dict(self.queue)
            base = self.view(now, list(pending.values()))
            busy = self.running is not None
        ahead = self._ahead(now, busy)
        ordered: list[tuple[QueuedTask, float]] = []
        remaining = dict(pending)
        while remaining and len(ordered) < cap:
            task = self.context.policy.next_task(replace(base, queue=list(remaining.values())))
            task = task or min(remaining.values(), key=lambda t: t.submitted_at)
            ordered.append((task, ahead))
            ahead += task.estimated_seconds or self.estimate()
            del remaining[task.task_id]
        for task in sorted(remaining.values(), key=lambda t: t.submitted_at):
            ordered.append((task, ahead))
            ahead += task.estimated_seconds or self.estimate()
        return ordered

    def eta_of_new(self, now: float, not_before: float = 0.0) -> float:
        """When a task queued now behind all pending work would start (s from now; inf:
        not known), the device taking work no sooner than ``not_before`` s from now.

        The end of the queue, whatever the policy's order (a sum does not depend on
        it); a session task may start sooner. What a pool compares its members by.
        """
        with self.context.shared.cond:
            busy = self.running is not None
            learnt = self.estimate()
            pending = math.fsum(t.estimated_seconds or learnt for t in self.queue.values())
        return max(self._ahead(now, busy), not_before) + pending

    def _ahead(self, now: float, busy: bool) -> float:
        """Seconds until the first queued task may start: half a task for the one running
        (``busy``), or until the drain ends (inf: drained until resumed)."""
        ahead = self.estimate() / 2 if busy else 0.0
        drain = self.context.drains.active(self.name, now)
        if drain is not None:  # nothing starts before it ends (inf: not known when)
            ahead = math.inf if drain.until is None else max(ahead, drain.until - now)
        return ahead

    def _fit_estimate(self, task: QueuedTask) -> QueuedTask:
        """``task`` with the duration backfill judges it by (caller holds the lock).

        A chunked task can yield after its first chunk: its first chunk's estimate.
        A batch task with no estimate of its own: the learnt duration, or inf while
        there is none — an unknown length must not pass for a short one. (Not beside
        reservations: there a window must not be overrun by the rest, and an unknown
        length keeps the old reading.)
        """
        fit = self._chunk_fit.get(task.task_id)
        if fit is not None:
            return replace(task, estimated_seconds=fit)
        if task.session_id is None and task.estimated_seconds <= 0:
            known = self._duration
            return replace(task, estimated_seconds=math.inf if known is None else known)
        return task

    def _note_chunk_fit(self, task: TaskRecord, payload: Payload) -> None:
        """Remember the first chunk's estimate of a batch task that will run chunked."""
        if task.session_id is not None or self.context.chunk_seconds is None:
            return
        chunks = self._chunks(queued(task), payload)
        if len(chunks) > 1:
            self._chunk_fit[task.task_id] = self.resource.estimate_seconds(chunks[0]) or 0.0

    def _chunks(self, task: QueuedTask, payload: Payload) -> list[Payload]:
        """``payload`` as the chunks a batch task runs as ([payload]: whole)."""
        if task.session_id is not None or not can_chunk(self.resource):
            return [payload]
        try:
            return plan_chunks(payload, self.resource.estimate_seconds, self.context.chunk_seconds)
        except Exception:  # a plan is an optimisation: never fail the task over it
            log.exception("planning shot chunks of task %s failed; running it whole", task.task_id)
            return [payload]


class ResourceExecutor(ExecutorQueue):
    """The running half of an executor: the task on the resource and the thread that
    picks the next one (the queue half is :class:`ExecutorQueue`).

    Owns, besides the queue: ``running`` and ``suspended`` (a chunked batch task
    waiting at a boundary while a session task runs), and its instruments (how long
    tasks waited and ran, how they ended, how long the resource has been busy).
    """

    def __init__(
        self, resource: QuantumResource, context: Context, max_task_seconds: float | None
    ) -> None:
        super().__init__(resource, context)
        #: past this a task is stopped and fails (runner.py); None: no limit
        self.max_task_seconds = max_task_seconds
        self.running: Running | None = None
        self.suspended: Running | None = None
        #: runs while ``running`` is set (started and stopped where it changes)
        self.busy = BusyClock()

    # -- queue (caller holds the lock) ----------------------------------------------------
    def runs(self) -> list[Running]:
        return [r for r in (self.running, self.suspended) if r is not None]

    def may_run_now(self, task: QueuedTask) -> bool:
        """Would this executor start ``task`` at once if it were queued?"""
        if self.context.shared.stopping or self.running is not None or self.queue:
            return False
        now = self.context.clock()
        if self.drained(now) or not resource_can_start(self.resource):
            return False
        sessions, reservations, _ = self.context.inputs.read(now)
        constrained = any(r.resource == self.name for r in reservations) or any(
            s.resource == self.name
            and s.mode is SessionMode.EXCLUSIVE
            and s.session_id != task.session_id
            for s in sessions
        )
        if not constrained:  # with one task pending, every policy picks it
            return True
        return self.context.policy.next_task(self.view(now, [task])) is task

    def claim(self, task: QueuedTask) -> Running:
        """Mark ``task`` running on the caller's thread (after :meth:`may_run_now`)."""
        self.running = Running(task, inline=True)
        self.busy.start()
        return self.running

    def drained(self, now: float) -> bool:
        return self.context.drains.active(self.name, now) is not None

    def stop_for_drain(self) -> list[str]:
        """Stop the runs a drain may stop (caller holds the lock); their task ids.

        Inline session runs are left to end: they are short, and their submitter is
        waiting on its own thread for exactly that run.
        """
        stopped = []
        for running in self.runs():
            if not running.inline:
                running.requeue = True
                running.stop.set()
                stopped.append(running.task.task_id)
        return stopped

    def release(self) -> None:
        """The caller's inline run is over: wake the executor only if it has reason."""
        self.running = None
        self.busy.stop()
        shared = self.context.shared
        if self.queue or shared.idle_waiters or shared.stopping:
            shared.cond.notify_all()

    # -- the loop ----------------------------------------------------------------------------
    def loop(self) -> None:
        bind(resource=self.name)  # this thread's records name its resource
        cond = self.context.shared.cond
        while True:
            with cond:
                if self.context.shared.stopping:
                    return
                try:
                    task, wake_at = self._next()
                except Exception:  # a bad decision must not end this resource's executor
                    log.exception("scheduling on %s failed; trying again", self.name)
                    cond.wait(timeout=IDLE_RECHECK)
                    continue
                if task is None:
                    # Woken by submissions, cancellations and session changes; the
                    # timeout is when time alone may change the policy's answer (a
                    # session's patience ends...), at most IDLE_RECHECK for the device.
                    cond.wait(timeout=max(0.0, wake_at - self.context.clock()))
                    continue
                running = self.running
                assert running is not None
            try:
                self.run_one(task, running)
            except Exception:
                log.exception("executor for %s failed on task %s", self.name, task.task_id)
            finally:
                with cond:
                    self.running = None
                    self.busy.stop()
                    cond.notify_all()

    def _next(self) -> tuple[QueuedTask | None, float]:
        """The task to run now, or None and when to ask again (caller holds the lock)."""
        now = self.context.clock()
        if not self.queue or self.running is not None:
            return None, now + IDLE_RECHECK  # (running: a co-located task runs inline)
        drain = self.context.drains.active(self.name, now)
        if drain is not None:
            ends = now + IDLE_RECHECK if drain.until is None else drain.until
            return None, min(ends, now + IDLE_RECHECK)
        if not resource_can_start(self.resource):
            return None, now + IDLE_RECHECK
        view = self.view(now, list(self.queue.values()))
        if not view.reservations:
            view = replace(view, queue=[self._fit_estimate(t) for t in view.queue])
        task = self.context.policy.next_task(view)
        if task is None:
            return None, min(now + IDLE_RECHECK, revisit_at(self.context.policy, view))
        del self.queue[task.task_id]
        self.running = Running(task)
        self.busy.start()
        if task.session_id is None:
            self._last_batch_start = self.context.clock()
        return task, now

    # -- running one task ----------------------------------------------------------------------
    def run_one(
        self, task: QueuedTask, running: Running, inline: bool = False
    ) -> TaskOutcome | None:
        """Run a task and book it; its outcome, or ``None`` if our own shutdown stopped it.

        ``inline``: a session task run on its caller's thread, for microseconds to
        milliseconds; it is not shown ``running`` meanwhile (one record copy fewer).
        """
        context, sessions = self.context, self.context.sessions
        with context.shared.cond:
            in_memory = sessions.in_flight.get(task.task_id)
            payload = self.payloads.pop(task.task_id, None)
            self._chunk_fit.pop(task.task_id, None)
        if payload is None:
            payload = decode_payload(context.store.get_task(task.task_id).payload)
        started = context.clock()
        if in_memory is None:
            context.store.mark_task_running(task.task_id, None, started)
        elif not inline:
            with context.shared.cond:
                if task.task_id in sessions.in_flight:
                    sessions.in_flight[task.task_id] = replace(
                        in_memory, state=TaskStatus.RUNNING, started_at=started
                    )
        outcome = self._run(task, running, payload, in_memory is not None or inline)
        finished = TaskOutcome(
            state=str(outcome.state),
            result=None if outcome.result is None else encode_result(outcome.result),
            error=outcome.error, qpu_seconds=outcome.qpu_seconds, shots=outcome.shots,
            circuits=outcome.circuits, finished_at=outcome.finished_at,
        )  # fmt: skip
        if log.isEnabledFor(logging.DEBUG):  # per task: nothing unless asked for
            log.debug(
                "task %s", outcome.state,
                extra=fields(event="task_finished", task_id=task.task_id, job_id=task.job_id,
                             session_id=task.session_id, resource=self.name,
                             qpu_seconds=outcome.qpu_seconds, inline=inline),
            )  # fmt: skip
        with context.shared.cond:  # the policy reads both under the lock
            context.usage.record(task.account, outcome.qpu_seconds, outcome.finished_at)
            if outcome.state is TaskStatus.COMPLETED:
                took, before = outcome.qpu_seconds, self._duration
                self._duration = took if before is None else 0.8 * before + 0.2 * took
        if outcome.state is TaskStatus.CANCELLED and running.requeue and not running.cancelled:
            self._requeue(task, payload, in_memory)
            return None
        interrupted = (
            outcome.state is TaskStatus.CANCELLED
            and not running.cancelled
            and context.shared.stopping
        )
        if interrupted and in_memory is None:
            # Interrupted by our own shutdown, not by its owner: leave it "running" in
            # the store, and the next start queues it again (as after a crash).
            return None
        self.instruments.ran(
            BATCH if in_memory is None else SESSION, started - task.submitted_at,
            outcome.finished_at - started, outcome.state,
        )  # fmt: skip
        if interrupted:
            # A session task exists only in memory: nothing would run it again, so it
            # ends cancelled, with the device time it used booked.
            finished = replace(finished, error="the broker stopped while it ran")
        if in_memory is not None:
            # Write-behind: logged now, committed by the journal later (journal.py).
            sessions.finished(replace(in_memory, started_at=started, attempts=1), finished)
            return finished
        # Settles the job in the same transaction, so a waiter woken below sees it final.
        booked = context.store.finish_task(task.task_id, finished)
        if booked is not None:
            context.telemetry.booked((booked,))
        with context.shared.cond:
            sessions.signal(task.task_id)
        context.settled(task.job_id)
        return finished

    def _requeue(self, task: QueuedTask, payload: Payload, in_memory: TaskRecord | None) -> None:
        """Queue a task a drain stopped again, as it was before it started."""
        context = self.context
        if in_memory is None:
            context.store.requeue_running_tasks(task_id=task.task_id)
        with context.shared.cond:
            if in_memory is not None:
                if task.task_id not in context.sessions.in_flight:
                    return  # its session closed meanwhile
                context.sessions.in_flight[task.task_id] = in_memory
            self.queue[task.task_id] = task
            self.payloads[task.task_id] = payload
            context.shared.cond.notify_all()
        log.info("task %s on %s stopped by a drain; queued again", task.task_id, self.name)

    def _run(self, task: QueuedTask, running: Running, payload: Payload, whole: bool) -> Outcome:
        limit = self.max_task_seconds
        remember = None
        if not whole and self.resource.remembers_tasks:
            store = self.context.store

            def remember(resource_task: str) -> None:
                store.set_resource_task_id(task.task_id, resource_task)

        chunks = [payload] if whole else self._chunks(task, payload)
        if len(chunks) > 1:
            return run_chunked(
                self.resource, chunks, running.stop,
                lambda _, seconds: self._between_chunks(task, running, seconds),
                self.context.clock, remember, limit,
            )  # fmt: skip
        return run_task(self.resource, payload, running.stop, self.context.clock, remember, limit)

    # -- shot chunks (chunking.py) ---------------------------------------------------------------
    def _between_chunks(self, task: QueuedTask, running: Running, seconds: float) -> None:
        """At a boundary of a chunked batch task: run the waiting session tasks that the
        policy puts before the task's next chunk (``seconds`` long), then return."""
        context = self.context
        cond = context.shared.cond
        while True:
            with cond:
                if context.shared.stopping or running.stop.is_set():
                    return
                now = context.clock()
                sessions, _, _ = context.inputs.read(now)
                open_ids = {
                    s.session_id for s in sessions if s.resource == self.name and s.is_open(now)
                }
                waiting = [t for t in self.queue.values() if t.session_id in open_ids]
                chosen = None
                if waiting:
                    resume = replace(task, estimated_seconds=seconds)
                    chosen = context.policy.next_task(self.view(now, [*waiting, resume]))
                if chosen is None or chosen.task_id == task.task_id:
                    self._last_batch_start = now
                    return
                del self.queue[chosen.task_id]
                yielded = Running(chosen)
                self.suspended, self.running = running, yielded
            try:
                self.run_one(chosen, yielded)
            except Exception:
                log.exception("executor for %s failed on task %s", self.name, chosen.task_id)
            finally:
                with cond:
                    self.running, self.suspended = running, None
                    cond.notify_all()
