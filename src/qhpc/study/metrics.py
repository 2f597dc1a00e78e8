"""What the study measures in one run, from task, iteration and job records.

Definitions (the docs quote them):

- *busy*: QPU seconds spent on tasks. *makespan*: first arrival → last job done.
- *work waiting*: some task is ready (its program has it, even if Slurm has not
  started the job yet) or running. *idle while work waits*: work waiting, QPU
  idle and not calibrating. *utilisation while work waits*: busy / (busy + idle
  while work waits).
- *iteration latency*: a hybrid program asks for an iteration's results → it has
  them (for split jobs from the sub-job's submission, so Slurm's wait counts).
- *Jain fairness* over accounts of QPU seconds / share, counted while every account
  still has work to come: from the first arrival until the first account is done.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from qhpc.study.simulator import SimulationResult

Interval = tuple[float, float]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Disjoint, sorted union of half-open intervals (empty ones dropped)."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def total(intervals: Iterable[Interval]) -> float:
    return math.fsum(end - start for start, end in intervals)


def subtract(minuend: Sequence[Interval], subtrahend: Sequence[Interval]) -> list[Interval]:
    """``minuend`` minus ``subtrahend``; both disjoint and sorted (as from :func:`merge`)."""
    out: list[Interval] = []
    j = 0
    for start, end in minuend:
        cursor = start
        while j < len(subtrahend) and subtrahend[j][1] <= cursor:
            j += 1
        k = j
        while k < len(subtrahend) and subtrahend[k][0] < end:
            if subtrahend[k][0] > cursor:
                out.append((cursor, subtrahend[k][0]))
            cursor = max(cursor, subtrahend[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def clip(intervals: Iterable[Interval], low: float, high: float) -> list[Interval]:
    return [(max(s, low), min(e, high)) for s, e in intervals if min(e, high) > max(s, low)]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def jain_index(values: Sequence[float]) -> float:
    """(Σx)² / (n·Σx²): 1 when all equal, 1/n when one takes everything."""
    if not values:
        return math.nan
    squares = math.fsum(v * v for v in values)
    if squares == 0:
        return 1.0
    return math.fsum(values) ** 2 / (len(values) * squares)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


@dataclass(frozen=True)
class Metrics:
    strategy: str
    makespan: float
    busy: float
    utilisation: float
    utilisation_waiting: float
    idle_while_waiting: float
    time_with_work: float
    calibrating: float
    turnaround_mean: float
    turnaround_p95: float
    hybrid_turnaround_mean: float
    batch_turnaround_mean: float
    iteration_latency_mean: float
    iteration_latency_median: float
    iteration_latency_p95: float
    iteration_qpu_mean: float
    jain: float
    contention_seconds: float
    qpu_seconds: dict[str, float]
    contended_qpu_seconds: dict[str, float]
    tasks: int
    jobs: int
    decisions: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def measure(result: SimulationResult) -> Metrics:
    start, end = result.start, result.end
    busy_intervals = merge((t.started_at, t.finished_at) for t in result.tasks)
    busy = total(busy_intervals)
    work = merge((t.ready_at, t.finished_at) for t in result.tasks)
    calibrating = merge((w.start, w.end) for w in result.calibrations)
    idle = subtract(subtract(work, busy_intervals), calibrating)
    idle_waiting = total(idle)
    makespan = end - start

    turnarounds = [j.turnaround for j in result.jobs]
    hybrid = [j.turnaround for j in result.jobs if j.kind == "hybrid"]
    batch = [j.turnaround for j in result.jobs if j.kind == "batch"]
    latencies = [i.latency for i in result.iterations]
    iteration_qpu: dict[tuple[str, int], float] = {}
    for task in result.tasks:
        if task.iteration is not None:
            key = (task.job_id, task.iteration)
            iteration_qpu[key] = iteration_qpu.get(key, 0.0) + task.duration

    accounts = sorted({j.account for j in result.jobs})
    done_by = {a: max(j.finished_at for j in result.jobs if j.account == a) for a in accounts}
    contention_end = min(done_by.values())
    used: dict[str, float] = dict.fromkeys(accounts, 0.0)
    contended: dict[str, float] = dict.fromkeys(accounts, 0.0)
    for task in result.tasks:
        used[task.account] += task.duration
        contended[task.account] += total(
            clip([(task.started_at, task.finished_at)], start, contention_end)
        )
    shares = {a: result.shares.get(a, 1.0) for a in accounts}
    jain = jain_index([contended[a] / shares[a] for a in accounts if shares[a] > 0])

    return Metrics(
        strategy=result.strategy.key,
        makespan=makespan,
        busy=busy,
        utilisation=busy / makespan if makespan > 0 else math.nan,
        utilisation_waiting=busy / (busy + idle_waiting) if busy + idle_waiting > 0 else math.nan,
        idle_while_waiting=idle_waiting,
        time_with_work=total(work),
        calibrating=total(clip(calibrating, start, end)),
        turnaround_mean=_mean(turnarounds),
        turnaround_p95=percentile(turnarounds, 95),
        hybrid_turnaround_mean=_mean(hybrid),
        batch_turnaround_mean=_mean(batch),
        iteration_latency_mean=_mean(latencies),
        iteration_latency_median=statistics.median(latencies) if latencies else math.nan,
        iteration_latency_p95=percentile(latencies, 95),
        iteration_qpu_mean=_mean(list(iteration_qpu.values())),
        jain=jain,
        contention_seconds=contention_end - start,
        qpu_seconds=used,
        contended_qpu_seconds=contended,
        tasks=len(result.tasks),
        jobs=len(result.jobs),
        decisions=result.decisions,
    )
