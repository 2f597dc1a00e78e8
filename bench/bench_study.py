"""Scheduling study: the five ways of scheduling hybrid work, simulated with the broker's policies.

Simulates exclusive reservation per job, FIFO per circuit, split jobs, qhpc's
multiplex and multiplex with duty-cycle admission (each with fair share off and
on) on the named scenarios, fits the admission controller's latency model, prints
the metrics and the goals, and writes ``study.json`` plus PNG plots to ``--out``.
Same as ``qhpc bench study``. ``--publish`` rewrites ``bench/scenarios/*.json``
from the scenario definitions in ``qhpc.study.workload``.

Run: ``.venv/bin/python bench/bench_study.py [--scenario NAME|all] [--quick] [--out results]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qhpc.study import SCENARIOS
from qhpc.study.report import run_study

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


def publish() -> None:
    SCENARIO_DIR.mkdir(exist_ok=True)
    for name, scenario in SCENARIOS.items():
        path = SCENARIO_DIR / f"{name}.json"
        path.write_text(scenario.to_json())
        print(f"wrote {path}")


def print_report(report: dict[str, object]) -> None:
    scenarios = report["scenarios"]
    assert isinstance(scenarios, dict)
    for name, data in scenarios.items():
        print(f"\n{name} (scale {data['scale']:g})")
        print(
            f"  {'strategy':24s} {'makespan':>9s} {'util':>6s} {'util|wait':>9s} "
            f"{'turnaround':>10s} {'p95':>8s} {'iter lat':>8s} {'p95':>7s} {'jain':>6s}"
        )
        for key, m in data["runs"].items():
            print(
                f"  {key:24s} {m['makespan']:9.1f} {m['utilisation']:6.1%} "
                f"{m['utilisation_waiting']:9.1%} {m['turnaround_mean']:10.1f} "
                f"{m['turnaround_p95']:8.1f} {m['iteration_latency_mean']:8.2f} "
                f"{m['iteration_latency_p95']:7.2f} {m['jain']:6.3f}"
            )
    goals = report["goals"]
    assert isinstance(goals, list)
    print("\ngoals")
    for goal in goals:
        mark = "reached" if goal["reached"] else "MISSED"
        mode = goal.get("mode") or "multiplex"
        if mode.startswith("admission"):
            where = f"{goal['scenario']}, adm." + ("+uf" if mode != "admission" else "")
        else:
            where = goal["scenario"] + (f", K={goal['licences']}" if goal.get("licences") else "")
        print(
            f"  {where:17s} {goal['goal']:52s} {goal['value']:.3f} "
            f"{goal['comparison']} {goal['target']:g}  {mark}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="all", help="a name, a .json/.toml file, or all")
    parser.add_argument("--quick", action="store_true", help="a quarter of the jobs (CI smoke)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    parser.add_argument("--publish", action="store_true", help="rewrite bench/scenarios/*.json")
    args = parser.parse_args()
    if args.publish:
        publish()
        return
    names = None if args.scenario == "all" else [args.scenario]
    report = run_study(
        names, quick=args.quick, out=args.out, plots=not args.no_plots,
        progress=lambda step: print(f"  simulating {step}", file=sys.stderr),
    )  # fmt: skip
    print_report(report)
    print(f"\nwrote {args.out / 'study.json'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text((args.out / "study.json").read_text())
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
