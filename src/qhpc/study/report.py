"""Run the study over scenarios and strategies, and write it as one JSON report.

The report holds each scenario's definition (so a figure can be traced to its
inputs), the metrics of every strategy, the ratios the goals are stated in,
multiplex with the broker's session policy before session-aware backfill (batch
fills every gap) for comparison, a sweep of the licence count on every scenario
(both policies), the hybrid jobs' duty cycle, duty-cycle admission per scenario
(:mod:`qhpc.study.admission`), the admission controller's latency model fitted on
the simulator (:mod:`qhpc.study.latency_fit`), and each goal with its value and
whether it is reached — at the scenario's licence count, where the latency goal
needs another at the largest count that reaches it, and with admission.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qhpc import __version__
from qhpc.broker import DEFAULT_CHUNK_SECONDS
from qhpc.study.admission import admission_summary
from qhpc.study.latency_fit import latency_fit
from qhpc.study.metrics import Metrics, measure
from qhpc.study.modes import MODE_TITLES, MULTIPLEXED, STRATEGIES, Mode, Strategy
from qhpc.study.runs import ScenarioRun
from qhpc.study.simulator import SimulationResult, simulate
from qhpc.study.workload import SCENARIOS, Scenario

#: the fraction of jobs and iterations a ``--quick`` run keeps
QUICK_SCALE = 0.25
QHPC = Strategy(Mode.MULTIPLEX, fairshare=True)
EXCLUSIVE = Strategy(Mode.EXCLUSIVE, fairshare=True)
SWEEP_LICENCES = (1, 2, 3, 4, 6, 8)
LATENCY_TARGET = 1.1


@dataclass(frozen=True)
class Goal:
    name: str
    scenario: str
    value: float
    target: float
    at_most: bool  # the value must be <= target (else >=)
    licences: int | None = None  # None: the scenario's own licence count
    #: "multiplex", or the duty-cycle admission mode (licences: its total) and its variant
    mode: str = "multiplex"

    @property
    def reached(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value <= self.target if self.at_most else self.value >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "scenario": self.scenario,
            "value": self.value,
            "target": self.target,
            "comparison": "<=" if self.at_most else ">=",
            "reached": self.reached,
            "licences": self.licences,
            "mode": self.mode,
        }


Progress = Callable[[str], None]


def run_scenario(
    scenario: Scenario,
    *,
    quick: bool = False,
    strategies: Sequence[Strategy] = STRATEGIES,
    progress: Progress | None = None,
) -> ScenarioRun:
    scale = QUICK_SCALE if quick else 1.0
    workload = scenario.materialise(scale=scale)
    results: dict[str, SimulationResult] = {}
    metrics: dict[str, Metrics] = {}
    for strategy in strategies:
        if progress:
            progress(f"{scenario.name}: {strategy.key}")
        result = simulate(scenario, strategy, workload, chunk_seconds=chunking(strategy))
        results[strategy.key] = result
        metrics[strategy.key] = measure(result)
    greedy = whole = None
    if QHPC in strategies:
        greedy = measure(simulate(scenario, QHPC, workload, backfill=False))
        whole = measure(simulate(scenario, QHPC, workload))
    return ScenarioRun(scenario, scale, results, metrics, greedy, whole)


def chunking(strategy: Strategy) -> float | None:
    """The broker's shot chunks where the broker orders batch tasks (multiplex)."""
    return DEFAULT_CHUNK_SECONDS if strategy.mode in MULTIPLEXED else None


def duty_cycle(result: SimulationResult) -> float:
    """Mean over hybrid jobs of QPU seconds / run time (from grant to last result)."""
    qpu: dict[str, float] = {}
    for task in result.tasks:
        qpu[task.job_id] = qpu.get(task.job_id, 0.0) + task.duration
    cycles = [
        qpu.get(j.job_id, 0.0) / (j.finished_at - j.started_at)
        for j in result.jobs
        if j.kind == "hybrid" and j.finished_at > j.started_at
    ]
    return sum(cycles) / len(cycles) if cycles else math.nan


def _ratios(m: Metrics, base: Metrics) -> dict[str, float]:
    return {
        "makespan_ratio": m.makespan / base.makespan,
        "latency_ratio": m.iteration_latency_mean / base.iteration_latency_mean,
        "utilisation_waiting": m.utilisation_waiting,
        "utilisation": m.utilisation,
        "jain": m.jain,
    }


def licence_sweep(run: ScenarioRun) -> dict[str, Any]:
    """Multiplex (fair share) with 1..8 licences against exclusive reservation, with the
    session policy as built and before session-aware backfill (``greedy``).

    Counts above the number of hybrid jobs change nothing and are left out, except
    the scenario's own count.
    """
    scenario = run.scenario
    workload = scenario.materialise(scale=run.scale)
    base = run.metrics.get(EXCLUSIVE.key) or measure(simulate(scenario, EXCLUSIVE, workload))
    exclusive = run.results.get(EXCLUSIVE.key) or simulate(scenario, EXCLUSIVE, workload)
    own = scenario.environment.licences
    counts = sorted({k for k in SWEEP_LICENCES if k <= len(workload.hybrid)} | {own})
    rows: list[dict[str, Any]] = []
    for licences in counts:
        variant = replace(scenario, environment=replace(scenario.environment, licences=licences))
        aware = measure(simulate(variant, QHPC, workload, chunk_seconds=DEFAULT_CHUNK_SECONDS))
        whole = measure(simulate(variant, QHPC, workload))
        greedy = measure(simulate(variant, QHPC, workload, backfill=False))
        rows.append(
            {
                "licences": licences,
                **_ratios(aware, base),
                "whole": _ratios(whole, base),
                "greedy": _ratios(greedy, base),
            }
        )
    best = recommended_licences({"rows": rows}) or 1
    return {
        "licences": own,
        "duty_cycle": duty_cycle(exclusive),
        "rows": rows,
        "settings": {"licences": best, "rows": backfill_settings(run, best)},
    }


#: session-policy settings compared at one licence count: (label, simulate options)
BACKFILL_SETTINGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("before session-aware backfill", {"backfill": False}),
    ("utilisation first (margin 0, patience 0)", {"arrival_margin": 0.0, "arrival_patience": 0.0}),
    ("balanced (the default: margin 0.5, patience 1)", {}),
    ("latency first (margin 1, patience 2)", {"arrival_margin": 1.0, "arrival_patience": 2.0}),
)
#: chunk sizes compared (estimated device seconds per chunk; None: whole tasks)
CHUNK_CHOICES: tuple[float | None, ...] = (None, 0.25, DEFAULT_CHUNK_SECONDS)


def backfill_settings(run: ScenarioRun, licences: int) -> list[dict[str, Any]]:
    """Multiplex (fair share) at ``licences`` with each of ``BACKFILL_SETTINGS``, batch
    tasks whole and as shot chunks of each of ``CHUNK_CHOICES`` (cooperative
    pre-emption at chunk boundaries, every chunk paying the task overhead)."""
    scenario = run.scenario
    variant = replace(scenario, environment=replace(scenario.environment, licences=licences))
    workload = scenario.materialise(scale=run.scale)
    base = run.metrics.get(EXCLUSIVE.key) or measure(simulate(scenario, EXCLUSIVE, workload))
    rows = []
    for chunk in CHUNK_CHOICES:
        for label, options in BACKFILL_SETTINGS:
            m = measure(simulate(variant, QHPC, workload, chunk_seconds=chunk, **options))
            rows.append({"setting": label, "chunk_seconds": chunk, **_ratios(m, base)})
    return rows


def recommended_licences(sweep: dict[str, Any]) -> int | None:
    """The largest licence count whose latency ratio meets the target (None: none does)."""
    meeting = [r["licences"] for r in sweep["rows"] if r["latency_ratio"] <= LATENCY_TARGET]
    return max(meeting) if meeting else None


def ratios(run: ScenarioRun) -> dict[str, float]:
    qhpc, exclusive = run.metrics.get(QHPC.key), run.metrics.get(EXCLUSIVE.key)
    if qhpc is None or exclusive is None:
        return {}
    return {
        "makespan_multiplex_over_exclusive": qhpc.makespan / exclusive.makespan,
        "latency_multiplex_over_exclusive": (
            qhpc.iteration_latency_mean / exclusive.iteration_latency_mean
        ),
        "turnaround_multiplex_over_exclusive": qhpc.turnaround_mean / exclusive.turnaround_mean,
    }


#: scenarios whose makespan goal (<= 0.6 x exclusive) is stated: the hybrid-heavy ones
MAKESPAN_GOAL = ("vqe-heavy", "mixed-duty")


def admission_goals(name: str, summary: dict[str, Any]) -> list[Goal]:
    """The goals for the duty-cycle admission mode of one scenario, as built and with
    utilisation-first backfill."""
    licences, out = summary["licences"], []
    for mode, figures in (
        ("admission", summary),
        ("admission, utilisation-first backfill", summary["variants"]["utilisation_first"]),
    ):
        out += [
            Goal("utilisation while work waits", name, figures["utilisation_waiting"], 0.95,
                 False, licences, mode),
            Goal("session iteration latency / exclusive reservation's", name,
                 figures["latency_ratio"], LATENCY_TARGET, True, licences, mode),
        ]  # fmt: skip
        if name in MAKESPAN_GOAL:
            out.append(
                Goal("makespan / exclusive reservation's", name, figures["makespan_ratio"],
                     0.6, True, licences, mode)
            )  # fmt: skip
    return out


def goals(
    runs: dict[str, ScenarioRun],
    sweeps: dict[str, dict[str, Any]] | None = None,
    admissions: dict[str, dict[str, Any] | None] | None = None,
) -> list[Goal]:
    out: list[Goal] = []
    for name, run in runs.items():
        summary = (admissions or {}).get(name)
        if summary is not None:
            out += admission_goals(name, summary)
        qhpc = run.metrics.get(QHPC.key)
        if qhpc is None:
            continue
        waiting = qhpc.utilisation_waiting
        out.append(Goal("multiplex utilisation while work waits", name, waiting, 0.95, False))
        r = ratios(run)
        if "latency_multiplex_over_exclusive" in r:
            out.append(
                Goal(
                    "session iteration latency / exclusive reservation's", name,
                    r["latency_multiplex_over_exclusive"], 1.1, True,
                )
            )  # fmt: skip
        if name in MAKESPAN_GOAL and "makespan_multiplex_over_exclusive" in r:
            out.append(
                Goal(
                    "makespan / exclusive reservation's", name,
                    r["makespan_multiplex_over_exclusive"], 0.6, True,
                )
            )  # fmt: skip
        if name == "two-centres":
            out.append(Goal("Jain fairness, equal shares", name, qhpc.jain, 0.95, False))
        sweep = (sweeps or {}).get(name)
        best = recommended_licences(sweep) if sweep else None
        if sweep and best is not None and best != sweep["licences"]:
            row = next(r for r in sweep["rows"] if r["licences"] == best)
            out += [
                Goal("multiplex utilisation while work waits", name,
                     row["utilisation_waiting"], 0.95, False, best),
                Goal("session iteration latency / exclusive reservation's", name,
                     row["latency_ratio"], LATENCY_TARGET, True, best),
            ]  # fmt: skip
            if name in MAKESPAN_GOAL:
                out.append(
                    Goal("makespan / exclusive reservation's", name, row["makespan_ratio"],
                         0.6, True, best)
                )  # fmt: skip
            if name == "two-centres":
                out.append(
                    Goal("Jain fairness, equal shares", name, row["jain"], 0.95, False, best)
                )
    return out


def build_report(
    runs: dict[str, ScenarioRun],
    *,
    quick: bool,
    sweeps: dict[str, dict[str, Any]] | None,
    seconds: float,
    admissions: dict[str, dict[str, Any] | None] | None = None,
    fit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "suite": "qhpc scheduling study",
        "qhpc_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "quick": quick,
        "wall_seconds": seconds,
        "modes": {m.value: MODE_TITLES[m] for m in Mode},
        "scenarios": {
            name: {
                "definition": run.scenario.to_dict(),
                "scale": run.scale,
                "runs": {key: m.to_dict() for key, m in run.metrics.items()},
                "ratios": ratios(run),
                "greedy_multiplex": run.greedy.to_dict() if run.greedy else None,
                "whole_multiplex": run.whole.to_dict() if run.whole else None,
            }
            for name, run in runs.items()
        },
        "licence_sweep": sweeps or None,
        "admission": admissions or None,
        "latency_fit": fit,
        "chunk_seconds": DEFAULT_CHUNK_SECONDS,
        "goals": [g.to_dict() for g in goals(runs, sweeps, admissions)],
    }


def run_study(
    names: Sequence[str] | None = None,
    *,
    quick: bool = False,
    out: Path | None = None,
    plots: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Simulate every strategy on each named scenario; write ``study.json`` (and PNGs)
    into ``out`` when given. Returns the report."""
    started = time.perf_counter()
    chosen = [SCENARIOS[n] if n in SCENARIOS else _load(n) for n in (names or list(SCENARIOS))]
    runs = {s.name: run_scenario(s, quick=quick, progress=progress) for s in chosen}
    sweeps: dict[str, dict[str, Any]] = {}
    for name, run in runs.items():
        if run.scenario.hybrid:
            if progress:
                progress(f"{name}: licence sweep")
            sweeps[name] = licence_sweep(run)
    admissions = {name: admission_summary(run, sweeps.get(name)) for name, run in runs.items()}
    if progress:
        progress("latency model fit")
    fit = latency_fit(chosen, scale=QUICK_SCALE if quick else 1.0)
    report = build_report(
        runs, quick=quick, sweeps=sweeps, seconds=time.perf_counter() - started,
        admissions=admissions, fit=fit,
    )  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            from qhpc.study.plots import write_plots

            if progress:
                progress("plots")
            report["plots"] = [str(p.name) for p in write_plots(runs, out)]
        report["wall_seconds"] = time.perf_counter() - started
        (out / "study.json").write_text(json.dumps(finite(report), indent=2) + "\n")
    return report


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _load(name: str) -> Scenario:
    from qhpc.study.workload import scenario

    return scenario(name)
