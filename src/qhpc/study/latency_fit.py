"""The admission controller's latency model, fitted on the simulator.

:class:`qhpc.broker.LatencyModel` predicts a session's iteration latency over its
latency alone on the QPU from D, the summed duty cycle of the *other* sessions
holding it: ``1 + linear·D + quadratic·D²``. This module measures that relation
and fits the two coefficients, so the figures the controller runs with are
traceable to a run anyone can repeat (the report's ``latency_fit``,
docs/benchmarks.md).

How: every hybrid class of the study's scenarios, alone on the QPU (no batch work,
no calibration: only sessions slowing sessions), with its think time scaled by
``THINK_SCALES`` (duty cycles from a few per cent to over a half) and run in
``multiplex`` at each licence count of ``LICENCES``. For every iteration, D is the
summed duty cycle — QPU seconds over QPU plus think seconds, the quantity the broker
measures — of the other jobs whose sessions were open when it asked, and its latency
alone is its tasks' device time plus the client's round trip. Iterations are binned
by D (``BIN`` wide); a bin's ratio is its summed latency over its summed latency
alone. The fit is weighted least squares over the bins up to ``MAX_LOAD`` (the range
admission decides in; past it sessions mostly wait for each other and no target
near 1 is met), weights the bins' iteration counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from qhpc.broker import LatencyModel
from qhpc.study.modes import Mode, Strategy
from qhpc.study.simulator import SimulationResult, simulate
from qhpc.study.workload import Arrivals, Dist, HybridJob, QpuModel, Scenario

THINK_SCALES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
LICENCES: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
#: jobs per hybrid class in a fitting run (arrivals 10 s apart on average)
JOBS = 8
BIN = 0.1
MAX_LOAD = 0.8
#: a bin with fewer iterations is shown but not fitted
MIN_ITERATIONS = 20
STRATEGY = Strategy(Mode.MULTIPLEX, fairshare=True)


@dataclass(frozen=True)
class Sample:
    """One iteration: the others' summed duty cycle, its latency and its latency alone."""

    load: float
    latency: float
    alone: float


def fitting_scenarios(scenarios: Iterable[Scenario]) -> list[Scenario]:
    """Each distinct hybrid class, alone on a QPU without calibration, at each think scale."""
    out: list[Scenario] = []
    seen: set[str] = set()
    for scenario in scenarios:
        for cls in scenario.hybrid:
            if cls.name in seen:
                continue
            seen.add(cls.name)
            for scale in THINK_SCALES:
                think = _scaled(cls.think, scale)
                arrivals = Arrivals(JOBS, 0.0, Dist.of("exponential", mean=10.0))
                out.append(
                    replace(
                        scenario, name=f"fit-{cls.name}-x{scale:g}", batch=(),
                        hybrid=(replace(cls, think=think, arrivals=arrivals),),
                        qpu=QpuModel(timing=scenario.qpu.timing),
                    )
                )  # fmt: skip
    return out


def _scaled(dist: Dist, factor: float) -> Dist:
    """``dist`` with its location scaled by ``factor`` (its shape kept)."""
    params = dict(dist.params)
    for key in ("value", "low", "high", "mean", "median"):
        if key in params:
            params[key] *= factor
    return Dist.of(dist.kind, **params)


def duty_cycle(job: HybridJob, qpu: QpuModel, round_trip: float) -> float:
    """A hybrid job's duty cycle as the broker measures it: QPU over QPU plus think."""
    busy = math.fsum(qpu.duration(step.circuits, step.shots) for step in job.iterations)
    think = math.fsum(step.think + round_trip for step in job.iterations)
    return busy / (busy + think) if busy + think > 0 else 0.0


def samples(scenario: Scenario, result: SimulationResult, duties: dict[str, float]) -> list[Sample]:
    """Every iteration of ``result`` with the load of the other open sessions."""
    spans = {j.job_id: (j.started_at, j.finished_at) for j in result.jobs if j.kind == "hybrid"}
    device: dict[tuple[str, int], float] = {}
    for task in result.tasks:
        if task.iteration is not None:
            key = (task.job_id, task.iteration)
            device[key] = device.get(key, 0.0) + task.duration
    round_trip = scenario.environment.round_trip
    out = []
    for it in result.iterations:
        load = math.fsum(
            duties[job] for job, (start, end) in spans.items()
            if job != it.job_id and start <= it.requested_at < end
        )  # fmt: skip
        out.append(Sample(load, it.latency, device[(it.job_id, it.index)] + round_trip))
    return out


def binned(points: Iterable[Sample]) -> list[dict[str, float]]:
    """Bins of width ``BIN`` by load: mean load, iterations, summed latency over alone."""
    bins: dict[int, list[float]] = {}
    for p in points:
        acc = bins.setdefault(round(p.load / BIN), [0.0, 0.0, 0.0, 0.0])
        acc[0] += p.load
        acc[1] += 1
        acc[2] += p.latency
        acc[3] += p.alone
    return [
        {"load": acc[0] / acc[1], "iterations": acc[1], "ratio": acc[2] / acc[3]}
        for _, acc in sorted(bins.items())
    ]


def fit(bins: Sequence[dict[str, float]]) -> LatencyModel:
    """Weighted least squares of ratio − 1 = a·D + b·D² (through 1 at D = 0) over the
    bins up to ``MAX_LOAD`` with at least ``MIN_ITERATIONS``; a, b clipped at 0."""
    used = [b for b in bins if b["load"] <= MAX_LOAD and b["iterations"] >= MIN_ITERATIONS]
    s2 = s3 = s4 = t1 = t2 = 0.0
    for b in used:
        w, d, y = b["iterations"], b["load"], b["ratio"] - 1
        s2, s3, s4 = s2 + w * d**2, s3 + w * d**3, s4 + w * d**4
        t1, t2 = t1 + w * d * y, t2 + w * d * d * y
    det = s2 * s4 - s3 * s3
    if det <= 0:
        return LatencyModel()  # not enough spread in the data to fit two coefficients
    linear = (t1 * s4 - t2 * s3) / det
    quadratic = (s2 * t2 - s3 * t1) / det
    if quadratic < 0:  # refit the linear term alone
        linear, quadratic = t1 / s2, 0.0
    elif linear < 0:
        linear, quadratic = 0.0, t2 / s4
    return LatencyModel(linear=linear, quadratic=quadratic)


def latency_fit(scenarios: Iterable[Scenario], scale: float = 1.0) -> dict[str, Any]:
    """Simulate, bin, fit; the report's ``latency_fit`` section (see the module docstring)."""
    points: list[Sample] = []
    runs = 0
    for scenario in fitting_scenarios(scenarios):
        workload = scenario.materialise(scale=scale)
        round_trip = scenario.environment.round_trip
        duties = {j.job_id: duty_cycle(j, scenario.qpu, round_trip) for j in workload.hybrid}
        for licences in LICENCES:
            variant = replace(
                scenario, environment=replace(scenario.environment, licences=licences)
            )
            points += samples(variant, simulate(variant, STRATEGY, workload), duties)
            runs += 1
    bins = binned(points)
    fitted, default = fit(bins), LatencyModel()
    for b in bins:
        b["fitted"] = fitted.ratio(b["load"])
        b["controller"] = default.ratio(b["load"])

    def rms(model: LatencyModel) -> float:
        used = [b for b in bins if b["load"] <= MAX_LOAD and b["iterations"] >= MIN_ITERATIONS]
        weight = math.fsum(b["iterations"] for b in used)
        if weight <= 0:
            return math.nan
        error = math.fsum(
            b["iterations"] * (model.ratio(b["load"]) - b["ratio"]) ** 2 for b in used
        )
        return math.sqrt(error / weight)

    return {
        "linear": fitted.linear,
        "quadratic": fitted.quadratic,
        "controller": {"linear": default.linear, "quadratic": default.quadratic},
        "rms": rms(fitted),
        "controller_rms": rms(default),
        "max_load": MAX_LOAD,
        "runs": runs,
        "iterations": len(points),
        "bins": bins,
    }
