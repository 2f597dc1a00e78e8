"""``qhpc bench``: the scheduling study, the micro-benchmarks, and the README table.

``study`` simulates in-process (:mod:`qhpc.study`); ``micro`` and ``real`` run the
scripts in the repository's ``bench/`` folder as subprocesses and gather their
JSON reports, so every figure has one script that reruns it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.table import Table

from qhpc.cli.output import err, fail, out
from qhpc.errors import QhpcError

bench_app = typer.Typer(
    help="Benchmarks: the scheduling study, micro-benchmarks, the README's figures.",
    no_args_is_help=True,
)

#: micro-benchmark scripts: (script, report file, extra arguments for --quick)
MICRO: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("bench_dispatch.py", "dispatch.json", ("--quick",)),
    ("bench_broker.py", "broker.json", ("--quick",)),
    ("bench_vqe.py", "vqe.json", ("--quick",)),
    ("bench_resources.py", "resources.json", ("--quick",)),
)

OutOption = Annotated[
    Path, typer.Option("--out", "-o", help="Results folder (JSON reports and PNG plots).")
]
QuickOption = Annotated[
    bool, typer.Option("--quick", help="A small run that checks the suite works (CI).")
]
BenchDirOption = Annotated[
    Path | None,
    typer.Option("--bench-dir", help="The repository's bench/ folder (default: found)."),
]


def find_bench_dir(given: Path | None = None) -> Path:
    """``given``, else ./bench, else the bench/ folder next to this source checkout."""
    checkout = Path(__file__).resolve().parents[3]  # src/qhpc/cli/bench.py → the checkout
    candidates = [given] if given else [Path("bench"), checkout / "bench"]
    for candidate in candidates:
        if candidate is not None and (candidate / "bench_study.py").exists():
            return candidate.resolve()
    raise QhpcError(
        "cannot find the bench/ folder with bench_study.py; run from the repository "
        "root or pass --bench-dir"
    )


def _fail(exc: Exception) -> NoReturn:
    raise typer.Exit(fail(str(exc)))


@bench_app.command("study")
def study(
    scenario: Annotated[
        str, typer.Option("--scenario", "-s", help="A scenario name, a .json/.toml file, or all.")
    ] = "all",
    quick: QuickOption = False,
    results: OutOption = Path("results"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
) -> None:
    """Simulate the five scheduling modes (fair share off/on) on the scenarios."""
    from qhpc.study import ScenarioError, SimulationError
    from qhpc.study.report import run_study

    names = None if scenario == "all" else [scenario]
    try:
        with err.status("simulating") as status:
            report = run_study(
                names, quick=quick, out=results, plots=plots,
                progress=lambda step: status.update(f"simulating {step}"),
            )  # fmt: skip
    except (ScenarioError, SimulationError) as exc:
        _fail(exc)
    except ImportError as exc:
        _fail(QhpcError(f"plots need matplotlib (pip install 'qhpc[bench]'), or --no-plots: {exc}"))
    if as_json:
        out.print_json(data=json.loads((results / "study.json").read_text()))
        return
    _print_study(report)
    out.print(f"wrote {results / 'study.json'}" + (" and PNG plots" if plots else ""))


def _print_study(report: dict[str, object]) -> None:
    scenarios = report["scenarios"]
    assert isinstance(scenarios, dict)
    for name, data in scenarios.items():
        table = Table(title=f"{name} (scale {data['scale']:g}, modelled seconds)")
        for column in ("strategy", "makespan", "util.", "util. | waiting", "turnaround",
                       "p95", "iter. latency", "p95", "Jain"):  # fmt: skip
            table.add_column(
                column, justify="left" if column == "strategy" else "right", no_wrap=True
            )
        for key, m in data["runs"].items():
            table.add_row(
                key, f"{m['makespan']:.1f}", f"{m['utilisation']:.1%}",
                f"{m['utilisation_waiting']:.1%}", f"{m['turnaround_mean']:.1f}",
                f"{m['turnaround_p95']:.1f}", f"{m['iteration_latency_mean']:.2f}",
                f"{m['iteration_latency_p95']:.2f}", f"{m['jain']:.3f}",
            )  # fmt: skip
        out.print(table)
    goals = report["goals"]
    assert isinstance(goals, list)
    table = Table(title="goals")
    for column in ("scenario", "goal", "value", "target", "reached"):
        table.add_column(column)
    for g in goals:
        table.add_row(
            g["scenario"] + (f" (K={g['licences']})" if g.get("licences") else ""), g["goal"],
            f"{g['value']:.3f}", f"{g['comparison']} {g['target']:g}",
            "[green]yes[/]" if g["reached"] else "[red]no[/]",
        )  # fmt: skip
    out.print(table)


def run_script(bench_dir: Path, script: str, args: list[str], label: str) -> float:
    """Run ``bench/SCRIPT ARGS`` with this interpreter; its output goes to stderr."""
    started = time.perf_counter()
    with err.status(f"running {label}"):
        completed = subprocess.run(
            [sys.executable, str(bench_dir / script), *args],
            stdout=sys.stderr, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if completed.returncode != 0:
        raise QhpcError(f"{script} failed with exit code {completed.returncode}")
    took = time.perf_counter() - started
    err.print(f"[green]✓[/] {label} ({took:.0f} s)")
    return took


@bench_app.command("micro")
def micro(
    quick: QuickOption = False,
    results: OutOption = Path("results"),
    bench_dir: BenchDirOption = None,
) -> None:
    """Dispatcher overhead, broker throughput, VQE overhead, runtime start (bench/*.py)."""
    from qhpc.study.tables import micro_table

    try:
        folder = find_bench_dir(bench_dir)
        results.mkdir(parents=True, exist_ok=True)
        for script, report, quick_args in MICRO:
            args = [*(quick_args if quick else ()), "--json", str(results / report)]
            run_script(folder, script, args, script)
    except QhpcError as exc:
        _fail(exc)
    out.print(micro_table(results))


@bench_app.command("real")
def real(
    quick: QuickOption = False,
    results: OutOption = Path("results"),
    bench_dir: BenchDirOption = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="Submit the jobs with sbatch.")] = False,
) -> None:
    """The study once for real: a scaled-time emulator behind a served broker.

    With ``--slurm`` the hybrid jobs go through the real Slurm cluster
    (``scripts/slurm.sh``, root) instead of the in-process stand-in for it.
    """
    from qhpc.study.tables import real_table

    script, report = (
        ("bench_study_slurm.py", "study_slurm.json")
        if slurm
        else ("bench_study_real.py", "study_real.json")
    )
    try:
        folder = find_bench_dir(bench_dir)
        args = [*(["--quick"] if quick else []), "--json", str(results / report)]
        run_script(folder, script, args, script)
    except QhpcError as exc:
        _fail(exc)
    out.print(real_table(json.loads((results / report).read_text())))


@bench_app.command("all")
def run_everything(
    quick: QuickOption = False,
    results: OutOption = Path("results"),
    bench_dir: BenchDirOption = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="Also run it through Slurm.")] = False,
) -> None:
    """The study, the real-broker comparison and the micro-benchmarks, in that order.

    With ``--slurm`` the real-broker comparison also runs through the real Slurm cluster.
    """
    study(scenario="all", quick=quick, results=results, as_json=False, plots=True)
    real(quick=quick, results=results, bench_dir=bench_dir, slurm=False)
    if slurm:
        real(quick=quick, results=results, bench_dir=bench_dir, slurm=True)
    micro(quick=quick, results=results, bench_dir=bench_dir)


@bench_app.command("readme")
def readme(
    results: OutOption = Path("results"),
    readme_path: Annotated[Path, typer.Option("--readme", help="The file to update.")] = Path(
        "README.md"
    ),
    dry_run: Annotated[bool, typer.Option("--print", help="Print instead of writing.")] = False,
) -> None:
    """Regenerate the README's performance tables (between the bench markers)."""
    from qhpc.study.tables import readme_section, replace_between_markers

    body = readme_section(results)
    if dry_run:
        out.print(body, markup=False)
        return
    try:
        updated = replace_between_markers(readme_path.read_text(), body)
    except (OSError, ValueError) as exc:
        _fail(QhpcError(f"{readme_path}: {exc}"))
    readme_path.write_text(updated)
    out.print(f"updated {readme_path}")
