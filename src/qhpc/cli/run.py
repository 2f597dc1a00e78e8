"""``qhpc run`` and ``qhpc demo``: circuits on a local resource, no broker in between.

``run`` samples a circuit file on one resource of the config with a live
status line; ``demo`` runs :mod:`qhpc.demo` (local resources, then a broker
with batch, session and hybrid work) and prints what each step showed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qhpc.cli.options import ConfigOption, JsonOption
from qhpc.cli.output import err, fail, out
from qhpc.resources import (
    EstimatorResult,
    QuantumResource,
    SamplerResult,
    SamplerTask,
    TaskResult,
    load_circuits,
    load_registry,
)


def run(
    file: Annotated[
        Path, typer.Argument(help="Circuit file: OpenQASM 2/3, cQASM v3, QPY or QIR (.ll/.bc).")
    ],
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
                raise typer.Exit(fail(f"task {task_id} timed out after {timeout:g} s; stopped"))
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
