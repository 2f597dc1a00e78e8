"""A discrete-event simulator of one QPU behind the broker, for the scheduling study.

The broker's own policy objects decide (``qhpc.broker.build_policy``, the same
call the live broker makes), from :class:`~qhpc.broker.SchedulingView`\\ s built
the way the broker builds them: pending :class:`~qhpc.broker.QueuedTask`\\ s,
open :class:`~qhpc.broker.SessionLease`\\ s, decayed usage from the broker's
:class:`~qhpc.broker.UsageTracker`, the accounts' shares, the last batch
start and the sessions' rhythms (:class:`~qhpc.broker.SessionRhythms`, fed as
the broker feeds it: a session task submitted, its result released). Like the
broker's executor, the simulator asks the policy whenever the QPU is free and
online, and again every ``RECHECK`` seconds while the policy leaves it idle
with work queued, runs one task at a time (not preemptible), charges the
task's device time to its account when it ends, and starts nothing while the
QPU calibrates (a running task is not interrupted: the emulator's rule).

With ``chunk_seconds`` a batch task runs as shot chunks of at most that many
estimated seconds (:func:`qhpc.broker.chunking.shot_chunks`, the broker's own
arithmetic): the policy judges it by its first chunk, and at every boundary
between chunks, if session tasks wait, the policy is asked over those and the
task's next chunk — a session task it picks runs first, then the batch task
resumes (the broker's cooperative pre-emption). Each chunk is a
:class:`TaskRun` of its own (device time, overhead included); the task's
usage is charged when its last chunk ends.

Above the broker sits a stand-in for Slurm: a queue of job-level *grants*
(a reservation of the QPU, a licence for a session), ordered by the broker's
base policy (``fifo`` or ``fairshare``: Slurm's fair-share factor is the same
formula), with ``job_start_latency`` between a grant and the program running.
With an :class:`~qhpc.broker.AdmissionController` (the ``admission`` mode) the
number of licences Slurm may grant at a time is the controller's answer, asked
before every grant from the held sessions' duty cycles — measured by the
broker's :class:`~qhpc.broker.DutyCycles`, fed as the broker feeds it (each
session task's submission, start, end and device time) — the way the feedback
agent holds the rest of the licences back in a live cluster.

Time is modelled seconds; events are ordered by (time, sequence), so a run is
a pure function of the workload and the strategy.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from qhpc.broker import (
    AdmissionController,
    AdmissionView,
    DutyCycles,
    FairSharePolicy,
    FifoPolicy,
    Policy,
    QueuedTask,
    SchedulingView,
    SessionLease,
    SessionMode,
    SessionRhythms,
    UsageTracker,
    build_policy,
    shot_chunks,
)
from qhpc.resources import Window
from qhpc.study.modes import Mode, Strategy, grant_capacity, start_batch, start_hybrid
from qhpc.study.workload import Environment, QpuModel, Scenario, Workload

RESOURCE = "qpu"
#: while the policy leaves the QPU idle with work queued, the broker's executor
#: asks again this often (its wait timeout): time-based rules may change the answer
RECHECK = 0.5


@dataclass
class TaskRun:
    """One task's life: ready (its program had it) → submitted → started → finished."""

    task_id: str
    job_id: str
    account: str
    session: bool
    iteration: int | None
    circuits: int
    shots: int
    duration: float
    ready_at: float
    submitted_at: float
    started_at: float = math.nan
    finished_at: float = math.nan
    #: position of this run among its task's shot chunks (0 and 1: not chunked)
    chunk: int = 0
    chunks: int = 1


@dataclass
class IterationRun:
    job_id: str
    account: str
    index: int
    requested_at: float
    done_at: float = math.nan

    @property
    def latency(self) -> float:
        return self.done_at - self.requested_at


@dataclass
class JobRun:
    job_id: str
    account: str
    kind: str  # "hybrid" or "batch"
    arrival: float
    started_at: float = math.nan
    finished_at: float = math.nan

    @property
    def turnaround(self) -> float:
        return self.finished_at - self.arrival


@dataclass
class SimulationResult:
    scenario: str
    strategy: Strategy
    tasks: list[TaskRun]
    iterations: list[IterationRun]
    jobs: list[JobRun]
    calibrations: list[Window]
    shares: dict[str, float]
    decisions: int = 0
    #: (time, admitted, held) at each change of the admission controller's answer
    admissions: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def start(self) -> float:
        return min(j.arrival for j in self.jobs)

    @property
    def end(self) -> float:
        return max(j.finished_at for j in self.jobs)


class SimulationError(RuntimeError):
    """The simulation could not finish (work left that can never run)."""


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    action: Callable[[], None] = field(compare=False)


@dataclass
class _Grant:
    job_id: str
    account: str
    requested_at: float
    then: Callable[[], None]
    seq: int


class Engine:
    """Events, the broker's queue and policy, the QPU, and Slurm's grants."""

    def __init__(
        self,
        policy: Policy,
        grant_policy: Policy,
        qpu: QpuModel,
        environment: Environment,
        shares: dict[str, float],
        grant_capacity: int,
        chunk_seconds: float | None = None,
        admission: AdmissionController | None = None,
    ) -> None:
        self.policy = policy
        self.grant_policy = grant_policy
        self.qpu = qpu
        self.environment = environment
        self.shares = shares
        self.capacity = grant_capacity
        self.chunk_seconds = chunk_seconds
        self.now = 0.0
        self.usage = UsageTracker(environment.fairshare_half_life)
        self.rhythms = SessionRhythms()
        #: each session's duty cycle, as the broker measures it (for ``admission``)
        self.duties = DutyCycles()
        self.admission = admission
        #: (time, admitted, held) each time the controller's answer changed
        self.admissions: list[tuple[float, int, int]] = []
        self.decisions = 0
        self.tasks: list[TaskRun] = []
        self.iterations: list[IterationRun] = []
        self.jobs: dict[str, JobRun] = {}
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._queue: dict[str, QueuedTask] = {}
        self._runs: dict[str, TaskRun] = {}
        self._sessions: dict[str, SessionLease] = {}
        self._busy = False
        self._wake_at: float | None = None
        self._recheck_at: float | None = None
        self._last_batch_start: float | None = None
        self._grants_waiting: list[_Grant] = []
        #: jobs holding a grant, in the order they got it
        self._grants_held: dict[str, None] = {}
        #: each job's latest session
        self._session_of: dict[str, str] = {}
        self._ids = itertools.count()
        self._callbacks: dict[str, Callable[[], None]] = {}
        #: shots of the chunks still to run, per chunked batch task
        self._chunks: dict[str, list[int]] = {}
        #: the chunked batch task between two of its chunks, and its latest run
        self._current: tuple[QueuedTask, TaskRun] | None = None
        #: device seconds of the chunks run so far, charged when the task ends
        self._chunk_used: dict[str, float] = {}

    # -- events ----------------------------------------------------------------
    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, _Event(when, next(self._seq), action))

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def run(self) -> None:
        while self._events:
            event = heapq.heappop(self._events)
            self.now = event.time
            event.action()
            self._dispatch()
            self._grant()

    # -- programs' side --------------------------------------------------------
    def job_arrives(self, job_id: str, account: str, kind: str, arrival: float) -> None:
        self.jobs[job_id] = JobRun(job_id, account, kind, arrival)

    def job_started(self, job_id: str) -> None:
        if math.isnan(self.jobs[job_id].started_at):
            self.jobs[job_id].started_at = self.now

    def job_finished(self, job_id: str) -> None:
        self.jobs[job_id].finished_at = self.now

    def open_session(self, job_id: str, account: str, mode: SessionMode) -> str:
        session_id = f"s{next(self._ids)}-{job_id}"
        self._sessions[session_id] = SessionLease(
            session_id=session_id, resource=RESOURCE, account=account, user=account,
            opened_at=self.now, deadline=math.inf, mode=mode,
        )  # fmt: skip
        self._session_of[job_id] = session_id
        return session_id

    def close_session(self, session_id: str) -> None:
        del self._sessions[session_id]
        self.rhythms.forget(session_id)
        self.duties.forget(session_id, self.now)

    def submit(
        self,
        job_id: str,
        account: str,
        circuits_per_task: Sequence[int],
        shots: int,
        session: str | None,
        ready_at: float,
        done: Callable[[], None],
        *,
        iteration: int | None = None,
        requested_at: float | None = None,
    ) -> None:
        """Queue tasks at the broker; ``done`` runs when the client has every result."""
        record = None
        if iteration is not None:
            asked = self.now if requested_at is None else requested_at
            record = IterationRun(job_id, account, iteration, asked)
            self.iterations.append(record)
        pending = len(circuits_per_task)

        def one_done() -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                if record is not None:
                    record.done_at = self.now
                done()

        if session is not None:
            self.rhythms.submitted(session, self.now)
        for circuits in circuits_per_task:
            task_id = f"t{next(self._ids):08d}"
            sizes = [shots] if session is not None else self._chunk_sizes(circuits, shots)
            duration = self.qpu.duration(circuits, sizes[0])
            run = TaskRun(
                task_id, job_id, account, session is not None, iteration, circuits, sizes[0],
                duration, ready_at, self.now, chunks=len(sizes),
            )  # fmt: skip
            if len(sizes) > 1:
                self._chunks[task_id] = sizes[1:]
            self.tasks.append(run)
            self._runs[task_id] = run
            self._callbacks[task_id] = one_done
            self._queue[task_id] = QueuedTask(
                task_id=task_id, job_id=job_id, resource=RESOURCE, account=account,
                user=account, submitted_at=self.now, session_id=session,
                estimated_seconds=duration,
            )  # fmt: skip

    def _chunk_sizes(self, circuits: int, shots: int) -> list[int]:
        timing = self.qpu.timing
        fixed = timing.task_overhead + circuits * timing.circuit_overhead
        return shot_chunks(shots, fixed, circuits * timing.shot_time, self.chunk_seconds)

    def request_grant(
        self, job_id: str, account: str, ready_at: float, then: Callable[[], None]
    ) -> None:
        """Ask Slurm for the QPU (or a licence); ``then`` runs when the program starts."""
        if self.capacity == 0:
            self.after(self.environment.job_start_latency, then)
            return
        self._grants_waiting.append(_Grant(job_id, account, self.now, then, next(self._seq)))

    def release_grant(self, job_id: str) -> None:
        self._grants_held.pop(job_id, None)

    # -- Slurm's side ----------------------------------------------------------
    def _admitted(self) -> int:
        """How many grants may be held now: the licences, or the controller's answer
        from the held sessions' duty cycles (one granted but not started yet, or not
        measured yet, counts at the prior)."""
        if self.admission is None:
            return self.capacity
        now = self.now
        duties: list[float | None] = []
        for job_id in self._grants_held:
            session = self._session_of.get(job_id)
            if session is None or session not in self._sessions:
                duties.append(None)
            else:
                duties.append(self.duties.duty(session, now).duty)
        answer = self.admission.admit(
            AdmissionView(now, self.capacity, duties, self.duties.prior(now), resource=RESOURCE)
        )
        change = (answer.admitted, len(duties))
        if not self.admissions or self.admissions[-1][1:] != change:
            self.admissions.append((now, *change))
        return answer.admitted

    def _grant(self) -> None:
        if not self._grants_waiting:
            return
        admitted = self._admitted()
        while self._grants_waiting and len(self._grants_held) < admitted:
            by_id = {f"g{g.seq:08d}": g for g in self._grants_waiting}
            view = SchedulingView(
                now=self.now, resource=RESOURCE,
                queue=[
                    QueuedTask(
                        task_id=key, job_id=g.job_id, resource=RESOURCE, account=g.account,
                        user=g.account, submitted_at=g.requested_at,
                    )
                    for key, g in by_id.items()
                ],
                usage=self.usage.snapshot(self.now), shares=self.shares,
            )  # fmt: skip
            chosen = self.grant_policy.next_task(view)
            if chosen is None:
                return
            grant = by_id[chosen.task_id]
            self._grants_waiting.remove(grant)
            self._grants_held[grant.job_id] = None
            self.after(self.environment.job_start_latency, grant.then)

    # -- the broker's executor -------------------------------------------------
    def _dispatch(self) -> None:
        if self._busy or (not self._queue and self._current is None):
            return
        calibration = self.qpu.calibration
        window = calibration.window_at(self.now) if calibration is not None else None
        if window is not None:
            # The broker waits while the resource is not online; look again at its end.
            if self._wake_at != window.end:
                self._wake_at = window.end
                self.at(window.end, lambda: None)
            return
        if self._current is not None:
            self._at_boundary(*self._current)
            return
        task = self._decide(list(self._queue.values()))
        if task is None:
            if self._recheck_at is None or self._recheck_at <= self.now:
                self._recheck_at = self.now + RECHECK
                self.at(self._recheck_at, lambda: None)
            return
        del self._queue[task.task_id]
        self._start(task, self._runs.pop(task.task_id))

    def _decide(self, queue: list[QueuedTask]) -> QueuedTask | None:
        view = SchedulingView(
            now=self.now, resource=RESOURCE, queue=queue,
            sessions=list(self._sessions.values()), usage=self.usage.snapshot(self.now),
            shares=self.shares, last_batch_start=self._last_batch_start,
            rhythms=self.rhythms.snapshot(),
        )  # fmt: skip
        self.decisions += 1
        return self.policy.next_task(view)

    def _at_boundary(self, task: QueuedTask, last: TaskRun) -> None:
        """Between two chunks of ``task``: a waiting session task the policy puts first
        runs now; otherwise the task's next chunk starts (the broker's rule)."""
        sizes = self._chunks[task.task_id]
        open_ids = {s for s, lease in self._sessions.items() if lease.is_open(self.now)}
        waiting = [t for t in self._queue.values() if t.session_id in open_ids]
        if waiting:
            duration = self.qpu.duration(last.circuits, sizes[0])
            resume = replace(task, estimated_seconds=duration)
            chosen = self._decide([*waiting, resume])
            if chosen is not None and chosen.task_id != task.task_id:
                del self._queue[chosen.task_id]
                self._start(chosen, self._runs.pop(chosen.task_id))
                return
        shots = sizes.pop(0)
        if not sizes:
            del self._chunks[task.task_id]
        run = replace(
            last, shots=shots, duration=self.qpu.duration(last.circuits, shots),
            started_at=math.nan, finished_at=math.nan, chunk=last.chunk + 1,
        )  # fmt: skip
        self.tasks.append(run)
        self._current = None
        self._start(task, run)

    def _start(self, task: QueuedTask, run: TaskRun) -> None:
        if task.session_id is None:
            self._last_batch_start = self.now
        run.started_at = self.now
        self._busy = True
        self.at(self.now + run.duration, lambda: self._finish(task, run))

    def _finish(self, task: QueuedTask, run: TaskRun) -> None:
        run.finished_at = self.now
        self._busy = False
        used = self._chunk_used.pop(task.task_id, 0.0) + run.duration
        if task.task_id in self._chunks:
            self._chunk_used[task.task_id] = used
            self._current = (task, run)  # more chunks to run: resumes at the next decision
            return
        self.usage.record(task.account, used, self.now)
        if task.session_id is not None:
            self.rhythms.released(task.session_id, self.now)
            self.duties.finished(
                task.session_id, submitted_at=run.submitted_at, started_at=run.started_at,
                finished_at=self.now, qpu_seconds=used,
            )  # fmt: skip
        callback = self._callbacks.pop(task.task_id)
        if run.session or run.iteration is not None:
            # A live client receives the result one round trip later.
            self.after(self.environment.round_trip, callback)
        else:
            callback()

    def calibrations(self, until: float) -> list[Window]:
        schedule = self.qpu.calibration
        if schedule is None:
            return []
        first = schedule.every if schedule.first is None else schedule.first
        starts = itertools.count(first, schedule.every)
        within = itertools.takewhile(lambda s: s < until, starts)
        return [Window(s, s + schedule.duration) for s in within]


def simulate(
    scenario: Scenario,
    strategy: Strategy,
    workload: Workload | None = None,
    *,
    backfill: bool = True,
    chunk_seconds: float | None = None,
    admission: AdmissionController | None = None,
    **policy_options: float,
) -> SimulationResult:
    """Run ``workload`` (default: the scenario's own draw) under ``strategy``.

    ``backfill=False`` runs the broker's session policy without session-aware
    backfill (the policy before it); ``chunk_seconds`` runs batch tasks as shot
    chunks of at most that many seconds with cooperative pre-emption (None: whole);
    ``admission``: the controller of the ``admission`` mode (default: the broker's
    default controller; ignored in the other modes); ``policy_options`` go to
    ``build_policy``.
    """
    workload = workload or scenario.materialise()
    env = scenario.environment
    options = {"starvation_limit": env.starvation_limit, **policy_options}
    policy = build_policy(
        strategy.base_policy, sessions=True, reservations=True, session_backfill=backfill,
        **options,
    )  # fmt: skip
    grant_policy: Policy = FairSharePolicy() if strategy.fairshare else FifoPolicy()
    shares = {a: float(scenario.shares.get(a, 1.0)) for a in workload.accounts()}
    if strategy.mode is not Mode.ADMISSION:
        admission = None
    elif admission is None:
        admission = AdmissionController()
    engine = Engine(
        policy, grant_policy, scenario.qpu, env, shares,
        grant_capacity(strategy.mode, env.licences), chunk_seconds, admission,
    )  # fmt: skip
    for hybrid in workload.hybrid:
        engine.job_arrives(hybrid.job_id, hybrid.account, "hybrid", hybrid.arrival)
        engine.at(hybrid.arrival, partial(start_hybrid, engine, hybrid, strategy.mode))
    for batch in workload.batch:
        engine.job_arrives(batch.job_id, batch.account, "batch", batch.arrival)
        engine.at(batch.arrival, partial(start_batch, engine, batch, strategy.mode))
    engine.run()
    unfinished = [j.job_id for j in engine.jobs.values() if math.isnan(j.finished_at)]
    if unfinished:
        raise SimulationError(
            f"{strategy.key} on {scenario.name}: job(s) never finished: {', '.join(unfinished[:5])}"
        )
    end = max(j.finished_at for j in engine.jobs.values())
    return SimulationResult(
        scenario=scenario.name,
        strategy=strategy,
        tasks=engine.tasks,
        iterations=engine.iterations,
        jobs=sorted(engine.jobs.values(), key=lambda j: (j.arrival, j.job_id)),
        calibrations=engine.calibrations(end),
        shares=shares,
        decisions=engine.decisions,
        admissions=engine.admissions,
    )


__all__ = ["Engine", "Mode", "SimulationError", "SimulationResult", "TaskRun", "simulate"]
