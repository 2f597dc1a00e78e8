"""Run one task on a resource to a final state: the only caller of ``task_*``.

:func:`run_task` drives a resource through one payload — inline on the caller's
thread when an idle local resource allows it, else started and polled — and
returns an :class:`Outcome` (never raises for a task's failure). The executors
(:mod:`qhpc.broker.executor`) decide *which* task runs; this module only runs it.

Every task has a longest run time (the resource's ``max_task_seconds``, or the
broker's default): past it, one watchdog thread per process sets the task's stop
request, and the task ends *failed* with a message naming the limit, so one
tenant's accepted task cannot hold a device for everyone else. A resource stops at
its next stop check (the local simulators check between circuits and shot
chunks; vendor adapters cancel the remote job).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qhpc.resources import (
    EstimatorResult,
    LocalResource,
    Payload,
    QuantumResource,
    SamplerResult,
    SamplerTask,
    TaskResult,
    TaskStatus,
)

log = logging.getLogger(__name__)

#: how often a running task is polled for completion or a stop request
POLL_SECONDS = 0.05


@dataclass
class _Deadline:
    stop: threading.Event
    passed: bool = False
    done: bool = False


#: how long the watchdog's thread sleeps when no task is running (tasks whose limit
#: ends sooner wake it; see _Watchdog.watch)
IDLE_WAKE_SECONDS = 30.0
#: the watchdog's heap is compacted at twice the entries left after the last compaction,
#: but never below this
COMPACT_MIN = 1024


@dataclass
class _Watchdog:
    """Sets the stop request of every task that runs past its deadline (one thread,
    started on first use; registering a task costs a heap push, not a thread)."""

    _heap: list[tuple[float, int, _Deadline]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _thread: threading.Thread | None = None
    #: when the watchdog's thread wakes next on its own (inf: before it first sleeps)
    _wakes_at: float = math.inf
    #: heap size at which finished entries below the top are dropped
    _compact_at: int = 1024

    def watch(self, seconds: float, stop: threading.Event) -> _Deadline:
        deadline = _Deadline(stop)
        due = time.monotonic() + seconds
        with self._cond:
            heap = self._heap
            # Tasks mostly finish in the order they started: dropping finished ones from
            # the top here keeps the heap small without waking the watchdog.
            while heap and heap[0][2].done:
                heapq.heappop(heap)
            if len(heap) >= self._compact_at:
                # A long task at the top keeps finished ones below it: drop them all.
                # Amortised O(1) a task, as the threshold doubles with what remains.
                heap[:] = [entry for entry in heap if not entry[2].done]
                heapq.heapify(heap)
                self._compact_at = max(COMPACT_MIN, 2 * len(heap))
            heapq.heappush(heap, (due, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="qhpc-limit")
                self._thread.start()
            # Wake the thread only if it would otherwise sleep past this deadline: waking it
            # per task cost a thread switch per session step (a third of a fast-path step's
            # interpreter time in a profile).
            if due < self._wakes_at:
                self._cond.notify()
        return deadline

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    # Not an indefinite wait: inline tasks finish before this thread gets
                    # to look, so it often finds the heap empty, and a thread that slept
                    # "until notified" would have to be woken by the very next task.
                    self._wakes_at = time.monotonic() + IDLE_WAKE_SECONDS
                    self._cond.wait(IDLE_WAKE_SECONDS)
                    continue
                due, _, deadline = self._heap[0]
                left = due - time.monotonic()
                if left > 0:
                    self._wakes_at = due
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
                deadline.passed = True
                deadline.stop.set()


_watchdog = _Watchdog()


@dataclass(frozen=True)
class Outcome:
    """What happened to one task on the resource."""

    state: TaskStatus
    result: TaskResult | None
    error: str | None
    qpu_seconds: float
    shots: int
    circuits: int
    started_at: float
    finished_at: float


def usage_of(
    payload: Payload, result: TaskResult | None, wall_seconds: float
) -> tuple[float, int, int]:
    """QPU seconds (the resource's own figure when it reports one), shots and circuits."""
    qpu = wall_seconds
    if result is not None and "qpu_seconds" in result.metadata:
        qpu = float(result.metadata["qpu_seconds"])
    if isinstance(payload, SamplerTask):
        circuits = len(payload.circuits)
        shots = payload.shots * circuits
    else:
        circuits = len(payload.parameter_values)
        shots = (payload.shots or 0) * circuits
    if isinstance(result, SamplerResult):
        shots = sum(c.shots for c in result.circuits)
    elif isinstance(result, EstimatorResult):
        # What the device ran: shots per measurement group and parameter set (a sampled
        # estimator measures each commuting group separately); exact values ran none.
        groups = int(result.metadata.get("measurement_groups", 1) or 1)
        shots = 0 if result.metadata.get("exact") else (result.shots or 0) * groups * circuits
    return qpu, shots, circuits


def run_task(
    resource: QuantumResource,
    payload: Payload,
    stop_requested: threading.Event,
    clock: Callable[[], float] = time.time,
    on_started: Callable[[str], None] | None = None,
    max_seconds: float | None = None,
) -> Outcome:
    """Run ``payload`` on ``resource`` to a final state; never raises for task failures.

    An idle local resource runs it right here, on the calling thread (no hand-off to
    its worker); otherwise it is started and polled. ``on_started`` receives the
    resource's own task id as soon as it exists (never for an inline run, which has
    none). Past ``max_seconds`` the task is stopped and ends failed, naming the limit.
    """
    if max_seconds is None:
        return _run_task(resource, payload, stop_requested, clock, on_started)
    deadline = watch_deadline(max_seconds, stop_requested)
    try:
        outcome = _run_task(resource, payload, stop_requested, clock, on_started)
    finally:
        deadline.done = True
    return past_deadline(outcome, deadline, max_seconds)


def watch_deadline(seconds: float, stop_requested: threading.Event) -> _Deadline:
    """Set ``stop_requested`` once ``seconds`` have passed (unless ``done`` is set first)."""
    return _watchdog.watch(seconds, stop_requested)


def past_deadline(outcome: Outcome, deadline: _Deadline, max_seconds: float) -> Outcome:
    """``outcome``, or a failure naming the limit when the deadline stopped the task."""
    if not deadline.passed or outcome.state is TaskStatus.COMPLETED:
        return outcome
    why = f"stopped: ran longer than the resource's limit (max_task_seconds = {max_seconds})"
    return Outcome(
        TaskStatus.FAILED, None, why, outcome.qpu_seconds, outcome.shots, outcome.circuits,
        outcome.started_at, outcome.finished_at,
    )  # fmt: skip


def _run_task(
    resource: QuantumResource,
    payload: Payload,
    stop_requested: threading.Event,
    clock: Callable[[], float],
    on_started: Callable[[str], None] | None,
) -> Outcome:
    started = clock()
    wall = time.monotonic()
    if isinstance(resource, LocalResource):
        try:
            done = resource.run_now(payload, stop_requested)
        except Exception as exc:  # admission failed at the resource: the task failed
            return Outcome(
                TaskStatus.FAILED, None, f"{type(exc).__name__}: {exc}", 0.0, 0, 0, started,
                clock(),
            )  # fmt: skip
        if done is not None:
            inline_status, inline_result, inline_error = done
            qpu, shots, circuits = usage_of(payload, inline_result, time.monotonic() - wall)
            if inline_status is not TaskStatus.COMPLETED:
                shots = 0
            return Outcome(
                inline_status, inline_result, inline_error, qpu, shots, circuits, started,
                clock(),
            )  # fmt: skip
    try:
        resource_task = resource.task_start(payload)
    except Exception as exc:  # admission failed at the resource: the task failed
        return Outcome(
            TaskStatus.FAILED, None, f"{type(exc).__name__}: {exc}", 0.0, 0, 0, started, clock()
        )
    if on_started is not None:
        try:
            on_started(resource_task)
        except Exception:
            log.exception("recording the resource task id %s failed", resource_task)
    stopped = False
    while True:
        status = resource.task_wait(resource_task, timeout=POLL_SECONDS)
        if status.is_final:
            break
        if stop_requested.is_set() and not stopped:
            resource.task_stop(resource_task)
            stopped = True
    elapsed = time.monotonic() - wall
    result: TaskResult | None = None
    error: str | None = None
    if status is TaskStatus.COMPLETED:
        try:
            result = resource.task_result(resource_task)
        except Exception as exc:
            status, error = TaskStatus.FAILED, f"{type(exc).__name__}: {exc}"
    else:
        error = _last_line(resource.task_logs(resource_task)) or str(status)
    qpu, shots, circuits = usage_of(payload, result, elapsed)
    if status is not TaskStatus.COMPLETED:
        shots = 0
    return Outcome(status, result, error, qpu, shots, circuits, started, clock())


def resource_can_start(resource: QuantumResource) -> bool:
    """False while the device cannot start work (tasks then wait in the broker's queue)."""
    try:
        return resource.status().state.takes_work
    except Exception:
        log.exception("status() of %s failed", resource.name)
        return False


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
