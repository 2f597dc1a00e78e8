"""Run the study over scenarios and strategies, and write it as one JSON report.

The report holds each scenario's definition (so a figure can be traced to its
inputs), the metrics of every strategy, the ratios the goals are stated in, a
sweep of the licence count on the VQE-heavy scenario, and each goal with its
value and whether it is reached.
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
from qhpc.study.metrics import Metrics, measure
from qhpc.study.modes import MODE_TITLES, STRATEGIES, Mode, Strategy
from qhpc.study.simulator import SimulationResult, simulate
from qhpc.study.workload import SCENARIOS, Scenario

#: the fraction of jobs and iterations a ``--quick`` run keeps
QUICK_SCALE = 0.25
QHPC = Strategy(Mode.MULTIPLEX, fairshare=True)
EXCLUSIVE = Strategy(Mode.EXCLUSIVE, fairshare=True)
SWEEP_SCENARIO = "vqe-heavy"
SWEEP_LICENCES = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class Goal:
    name: str
    scenario: str
    value: float
    target: float
    at_most: bool  # the value must be <= target (else >=)

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
        }


@dataclass
class ScenarioRun:
    scenario: Scenario
    scale: float
    results: dict[str, SimulationResult]
    metrics: dict[str, Metrics]


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
        result = simulate(scenario, strategy, workload)
        results[strategy.key] = result
        metrics[strategy.key] = measure(result)
    return ScenarioRun(scenario, scale, results, metrics)


def licence_sweep(scenario: Scenario, quick: bool = False) -> list[dict[str, float]]:
    """Multiplex (fair share) with 1..8 licences against exclusive reservation."""
    workload = scenario.materialise(scale=QUICK_SCALE if quick else 1.0)
    base = measure(simulate(scenario, EXCLUSIVE, workload))
    rows = []
    for licences in SWEEP_LICENCES:
        variant = replace(scenario, environment=replace(scenario.environment, licences=licences))
        m = measure(simulate(variant, QHPC, workload))
        rows.append(
            {
                "licences": licences,
                "makespan_ratio": m.makespan / base.makespan,
                "latency_ratio": m.iteration_latency_mean / base.iteration_latency_mean,
                "utilisation_waiting": m.utilisation_waiting,
                "utilisation": m.utilisation,
            }
        )
    return rows


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


def goals(runs: dict[str, ScenarioRun]) -> list[Goal]:
    out: list[Goal] = []
    for name, run in runs.items():
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
        if name == "vqe-heavy" and "makespan_multiplex_over_exclusive" in r:
            out.append(
                Goal(
                    "makespan / exclusive reservation's", name,
                    r["makespan_multiplex_over_exclusive"], 0.6, True,
                )
            )  # fmt: skip
        if name == "two-centres":
            out.append(Goal("Jain fairness, equal shares", name, qhpc.jain, 0.95, False))
    return out


def build_report(
    runs: dict[str, ScenarioRun],
    *,
    quick: bool,
    sweep: list[dict[str, float]] | None,
    seconds: float,
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
            }
            for name, run in runs.items()
        },
        "licence_sweep": {"scenario": SWEEP_SCENARIO, "rows": sweep} if sweep else None,
        "goals": [g.to_dict() for g in goals(runs)],
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
    sweep = None
    if SWEEP_SCENARIO in runs:
        if progress:
            progress(f"{SWEEP_SCENARIO}: licence sweep")
        sweep = licence_sweep(runs[SWEEP_SCENARIO].scenario, quick)
    report = build_report(runs, quick=quick, sweep=sweep, seconds=time.perf_counter() - started)
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
