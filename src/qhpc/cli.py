"""The ``qhpc`` command line: thin over the rooms, errors as one clear line."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qhpc import __version__
from qhpc.cli_bench import register as register_bench_commands
from qhpc.cli_broker import register as register_broker_commands
from qhpc.cli_slurm import register as register_slurm_commands
from qhpc.errors import QhpcError
from qhpc.resources import (
    EstimatorResult,
    QuantumResource,
    SamplerResult,
    SamplerTask,
    TaskResult,
    load_circuits,
    load_registry,
)

app = typer.Typer(
    name="qhpc",
    help="Quantum processors as shared, scheduled, accounted HPC resources.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
resources_app = typer.Typer(
    help="List configured resources with their status, or show one's target.",
    invoke_without_command=True,
)
app.add_typer(resources_app, name="resources")
register_broker_commands(app)
register_bench_commands(app)
register_slurm_commands(app)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Resource config (qhpc TOML or qrmi_config.json); default $QHPC_CONFIG, "
        "~/.config/qhpc/resources.toml, else built-in aer/emulator/qx.",
        envvar="QHPC_CONFIG",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.command()
def version() -> None:
    """Print the qhpc version."""
    out.print(__version__)


@resources_app.callback()
def resources_list(
    ctx: typer.Context, config: ConfigOption = None, as_json: JsonOption = False
) -> None:
    """List resources: type, state, busy, queue length, qubits."""
    if ctx.invoked_subcommand is not None:
        return
    with load_registry(config) as registry:
        rows = []
        for name in registry.names():
            spec = registry.spec(name)
            resource = registry.get(name)
            status = resource.status()
            target = resource.target()
            rows.append(
                {
                    "name": name,
                    "type": spec.type,
                    "num_qubits": target.num_qubits,
                    "device": target.name,
                    **status.to_dict(),
                }
            )
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("name", "type", "state", "busy", "pending", "qubits", "device", "reason")
    for row in rows:
        state = row["state"]
        colour = {"online": "green", "calibrating": "yellow", "paused": "yellow"}.get(state, "red")
        table.add_row(
            row["name"],
            row["type"],
            f"[{colour}]{state}[/]",
            "yes" if row["busy"] else "no",
            str(row["pending"]),
            str(row["num_qubits"]),
            row["device"],
            row["reason"],
        )
    out.print(table)


@resources_app.command("target")
def resources_target(
    name: Annotated[str, typer.Argument(help="Resource name.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a resource's target: qubits, coupling, basis gates, errors, durations."""
    with load_registry(config) as registry:
        resource = registry.get(name)
        target = resource.target().to_dict()
        meta = resource.metadata()
    if as_json:
        out.print_json(data={"target": target, "metadata": meta})
        return
    table = Table("property", "value", title=f"{name} ({meta.get('type')})")
    for key, value in target.items():
        if key == "coupling_map":
            value = "all-to-all" if value is None else f"{len(value)} directed edges: {value}"
        elif key == "extra" and not value:
            continue
        table.add_row(key, str(value))
    for key, value in meta.items():
        if key not in ("name", "type"):
            table.add_row(f"metadata.{key}", str(value))
    out.print(table)


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Circuit file: OpenQASM 2/3, cQASM v3 or QPY.")],
    resource: Annotated[str, typer.Option("--resource", "-r", help="Resource name.")] = "aer",
    shots: Annotated[int, typer.Option("--shots", "-s", help="Shots per circuit.")] = 1024,
    seed: Annotated[int | None, typer.Option(help="Simulator seed.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Sample the circuit(s) in FILE on a resource and print the counts."""
    circuits = load_circuits(file)
    payload = SamplerTask(tuple(circuits), shots=shots, seed=seed)
    with load_registry(config) as registry:
        qpu = registry.get(resource)
        started = time.perf_counter()
        result = _run_with_progress(qpu, payload, timeout, quiet=as_json)
        elapsed = time.perf_counter() - started
    if as_json:
        out.print_json(data={"resource": resource, "seconds": elapsed, **result.to_dict()})
        return
    _print_result(result, resource, elapsed, [c.name for c in circuits])


@app.command()
def demo(
    config: ConfigOption = None,
    shots: Annotated[int, typer.Option(help="Shots per circuit.")] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Run the main job: local resources, then a broker with batch, session and hybrid work."""
    from qhpc.demo import DemoStep, run_broker_demo, run_demo

    if not as_json:
        out.rule("[bold]qhpc demo[/]: local resources on embedded defaults")

    def show(step: DemoStep) -> None:
        if not as_json:
            _print_result(step.result, step.resource, step.seconds, step.circuits, step.title)

    with load_registry(config) as registry:
        steps = run_demo(registry, shots=shots, on_step=show)
    with tempfile.TemporaryDirectory() as tmp:
        if not as_json:
            out.rule("[bold]broker[/]: two accounts share the emulator (SQLite store)")
        broker_demo = run_broker_demo(str(Path(tmp) / "demo.db"), shots=shots)
    if as_json:
        data: dict[str, Any] = {
            "resources": [
                {"resource": s.resource, "title": s.title, "seconds": s.seconds}
                | s.result.to_dict()
                for s in steps
            ],
            "broker": {
                "jobs": [
                    {"job_id": j, "account": a, "state": st, "tasks": n}
                    for j, a, st, n in broker_demo.jobs
                ],
                "accounting": broker_demo.accounting,
                "session_latency_ms": broker_demo.session_latency_ms,
                "hybrid": broker_demo.hybrid,
            },
        }
        out.print_json(data=data)
    else:
        _print_broker_demo(broker_demo)
        used = len({s.resource for s in steps})
        out.print(f"[green]demo finished:[/] {len(steps)} tasks on {used} resources")


def _print_broker_demo(demo: Any) -> None:
    queue = Table("position", "account", "eta s", title="emulator queue after submission")
    for position, account, _, eta in demo.queue:
        queue.add_row(str(position), account, f"{eta:.2f}")
    out.print(queue)
    out.print(
        f"a session task of account phys jumped that queue: answered in "
        f"{demo.session_latency_ms:.0f} ms"
    )
    jobs = Table("job", "account", "state", "tasks")
    for job_id, account, state, tasks in demo.jobs:
        jobs.add_row(job_id[:12], account, state, str(tasks))
    out.print(jobs)
    hybrid = demo.hybrid
    if hybrid["status"] == "completed":
        value, timings = hybrid["return_value"], hybrid["timings"]
        out.print(
            f"a co-located hybrid program (QAOA MaxCut, ring of 4, scipy COBYLA) ran in the "
            f"broker's runtime pool: {hybrid['qpu_calls']} QPU calls, expected cut "
            f"{value['expected_cut']:.2f}, best sampled cut {value['best_cut']} of 4 "
            f"({value['best_bits']}); dispatch overhead "
            f"{timings.get('dispatch_overhead_per_call_s', 0.0) * 1e3:.2f} ms per call"
        )
    else:
        out.print(
            f"[red]the co-located hybrid program ended {hybrid['status']}:[/] {hybrid['message']}"
        )
    accounting = Table("account", "tasks", "qpu seconds", "shots", title="accounting")
    for row in demo.accounting:
        accounting.add_row(
            str(row["group"]), str(row["tasks"]), f"{row['qpu_seconds']:.3f}", str(row["shots"])
        )
    out.print(accounting)


def _run_with_progress(
    resource: QuantumResource, payload: SamplerTask, timeout: float, quiet: bool
) -> TaskResult:
    task_id = resource.task_start(payload)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    status_line = err.status("starting", spinner="dots") if not quiet and err.is_terminal else None
    try:
        if status_line is not None:
            status_line.start()
        while True:
            state = resource.task_wait(task_id, timeout=0.1)
            if state.is_final:
                break
            if time.monotonic() > deadline:
                resource.task_stop(task_id)
                raise typer.Exit(_fail(f"task {task_id} timed out after {timeout:g} s; stopped"))
            if status_line is not None:
                device = resource.status()
                extra = f" — {device.reason}" if device.reason else ""
                status_line.update(
                    f"task {task_id[:8]} {state} on {resource.name}, "
                    f"{time.monotonic() - started:.1f}s{extra}"
                )
    finally:
        if status_line is not None:
            status_line.stop()
    return resource.task_result(task_id)


def _print_result(
    result: TaskResult,
    resource: str,
    seconds: float,
    labels: list[str],
    title: str | None = None,
) -> None:
    heading = f"{title} on [bold]{resource}[/]" if title else f"[bold]{resource}[/]"
    qpu_seconds = result.metadata.get("qpu_seconds")
    timing = f"{seconds * 1000:.1f} ms wall"
    if qpu_seconds is not None:
        timing += f", {float(qpu_seconds):.3f} s device time (modelled)"
    out.print(f"\n{heading} — {timing}")
    if isinstance(result, SamplerResult):
        if len(result.circuits) == 1:
            sampled = result.circuits[0]
            table = Table("outcome", "count", "probability")
            top = sorted(sampled.counts.items(), key=lambda kv: (-kv[1], kv[0]))
            for bits, count in top[:16]:
                table.add_row(bits, str(count), f"{count / sampled.shots:.3f}")
            if len(top) > 16:
                table.add_row("…", f"{len(top) - 16} more outcomes", "")
        else:
            table = Table(
                "circuit",
                "most frequent",
                "probability",
                "distinct outcomes",
            )
            for label, sampled in zip(labels, result.circuits, strict=False):
                best = sampled.most_frequent()
                table.add_row(
                    label,
                    best,
                    f"{sampled.counts[best] / sampled.shots:.3f}",
                    str(len(sampled.counts)),
                )
        out.print(table)
    elif isinstance(result, EstimatorResult):
        mode = "exact" if result.metadata.get("exact") else f"{result.shots} shots"
        heading += f" ({mode})"
        table = Table("observable", "value", "std error")
        for label, value, error in zip(
            labels, result.values[0], result.std_errors[0], strict=False
        ):
            table.add_row(label, f"{value:+.4f}", f"{error:.4f}")
        out.print(table)


def _fail(message: str) -> int:
    err.print(f"[red]error:[/] {message}")
    return 1


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: domain errors become one line on stderr and exit code 1."""
    try:
        code = app(args=argv, standalone_mode=False)
    except QhpcError as exc:
        sys.exit(_fail(str(exc)))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(_fail("aborted"))
    except Exception as exc:
        import click

        # typer 0.29 raises its own vendored click's exceptions (TyperException), not click's
        show = getattr(exc, "show", None)
        if isinstance(exc, (click.ClickException, typer.TyperException)) and callable(show):
            show()
            sys.exit(int(getattr(exc, "exit_code", 2)))
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
    return None


if __name__ == "__main__":  # pragma: no cover
    main()
