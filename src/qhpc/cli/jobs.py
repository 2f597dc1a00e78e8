"""``qhpc submit|status|queue|cancel|result|accounting``: jobs at a broker, over REST.

The broker's address and token come from ``--url`` / ``--token-file`` or the
environment (``QHPC_URL``, ``QHPC_TOKEN``); a token is never an argument, where
other users could read it. Hybrid jobs are shown by :mod:`qhpc.cli.hybrid`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qhpc.cli.hybrid import print_result, print_status, submit_hybrid
from qhpc.cli.options import DEFAULT_URL, JsonOption, TokenOption, UrlOption
from qhpc.cli.output import out, print_json
from qhpc.client import connect
from qhpc.resources import load_circuits
from qhpc.slurm import slurm_accounting


def submit(
    files: Annotated[
        list[Path],
        typer.Argument(help="Circuit files (QASM 2/3, cQASM, QPY, QIR .ll/.bc), or one program."),
    ],
    resource: Annotated[str, typer.Option("--resource", "-r")] = "aer",
    shots: Annotated[int, typer.Option("--shots", "-s")] = 1024,
    priority: Annotated[int, typer.Option(help="Job priority (admins may raise it).")] = 0,
    account: Annotated[str | None, typer.Option(help="Account to charge.")] = None,
    name: Annotated[str | None, typer.Option(help="Job name.")] = None,
    hybrid: Annotated[
        bool, typer.Option("--hybrid", help="FILES is one Python program the broker runs.")
    ] = False,
    args: Annotated[str | None, typer.Option(help="Hybrid: the entry's arguments (JSON).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Hybrid: wall-clock limit, s.")] = None,
    max_iterations: Annotated[int | None, typer.Option(help="Hybrid: iteration limit.")] = None,
    entry: Annotated[str, typer.Option(help="Hybrid: the function to call.")] = "main",
    wait: Annotated[bool, typer.Option("--wait", help="Hybrid: follow it to its end.")] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Name this submission: run again with the same key (within 24 h), the "
            "command answers with the job the first run made. Default: a fresh key."
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """Submit circuits as one batch job (one task per file), or a program (--hybrid).

    Lost answers (connection errors, timeouts, 5xx) are retried with the same
    idempotency key, so a job is never stored twice."""
    if hybrid:
        if len(files) != 1:
            raise typer.BadParameter("--hybrid takes exactly one program file")
        with connect(url, token) as client:
            submit_hybrid(
                client, files[0], resource=resource, args=args, timeout=timeout,
                max_iterations=max_iterations, entry=entry, account=account, name=name,
                wait=wait, as_json=as_json, idempotency_key=idempotency_key,
            )  # fmt: skip
        return
    circuits = [c for path in files for c in load_circuits(path)]
    with connect(url, token) as client:
        job = client.submit(
            resource, circuits, shots, priority, account, name, split_circuits=True,
            idempotency_key=idempotency_key,
        )  # fmt: skip
    if as_json:
        print_json(job)
    else:
        out.print(f"job [bold]{job['job_id']}[/] queued: {len(job.get('tasks', []))} task(s)")


def status(
    job_id: Annotated[str, typer.Argument()],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """Show a job and its tasks (state, queue position, ETA)."""
    with connect(url, token) as client:
        job = client.job(job_id)
    if as_json:
        print_json(job)
        return
    if job.get("kind") == "hybrid":
        return print_status(job)
    out.print(f"job {job['job_id']} [bold]{job['state']}[/] on {job['resource']}")
    table = Table("task", "state", "position", "eta s", "error")
    for task in job.get("tasks", []):
        table.add_row(
            str(task.get("index")), task["state"], str(task.get("queue_position") or ""),
            "" if task.get("eta_seconds") is None else f"{task['eta_seconds']:.1f}",
            task.get("error") or "",
        )  # fmt: skip
    out.print(table)


def queue(
    resource: Annotated[str, typer.Argument()],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """The resource's queue in the order the policy would run it, with ETAs."""
    with connect(url, token) as client:
        answer = client.queue(resource)
    if as_json:
        print_json(answer)
        return
    entries = answer.get("entries", answer.get("tasks", []))
    table = Table("position", "task", "job", "user", "eta s", title=f"queue of {resource}")
    for entry in entries:
        table.add_row(
            str(entry.get("position")), str(entry.get("task_id") or "…"),
            str(entry.get("job_id") or ""), str(entry.get("user") or "other"),
            "unknown" if entry.get("eta_seconds") is None else f"{entry['eta_seconds']:.1f}",
        )  # fmt: skip
    out.print(table)


def cancel(
    job_id: Annotated[str, typer.Argument()],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Cancel a job: queued tasks at once, running ones through the resource."""
    with connect(url, token) as client:
        client.cancel(job_id)
    out.print(f"job {job_id}: cancel requested")


def result(
    job_id: Annotated[str, typer.Argument()],
    wait: Annotated[float, typer.Option(help="Wait up to this many seconds.")] = 0.0,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """Print a job's results (counts or expectation values per task; a program's return
    value and timings)."""
    with connect(url, token) as client:
        if wait > 0:
            client.wait(job_id, timeout=wait)
        if client.job(job_id).get("kind") == "hybrid":
            return print_result(client, job_id, as_json)
        results = client.results(job_id)
    data = [None if r is None else r.to_dict() for r in results]
    if as_json:
        print_json(data)
        return
    for index, item in enumerate(data):
        if item is None:
            out.print(f"task {index}: no result (see `qhpc status {job_id}`)")
        elif item["kind"] == "sampler":
            for sampled in item["circuits"]:
                top = sorted(sampled["counts"].items(), key=lambda kv: -kv[1])[:8]
                shown = ", ".join(f"{k}: {v}" for k, v in top)
                out.print(f"task {index}: {shown}")
        else:
            out.print(f"task {index}: values {item['values']} ± {item['std_errors']}")


def accounting(
    group_by: Annotated[str, typer.Option(help="account, user, centre, job or resource.")] = (
        "account"
    ),
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
    slurm: Annotated[
        bool, typer.Option("--slurm", help="Per Slurm job, joined with sacct's records.")
    ] = False,
) -> None:
    """QPU seconds, shots, circuits and tasks, rolled up."""
    if slurm:
        print_slurm_accounting(url, token, as_json)
        return
    with connect(url, token) as client:
        rows = client.accounting(group_by)
    if as_json:
        print_json(rows)
        return
    table = Table(group_by, "tasks", "qpu seconds", "shots", "circuits")
    for row in rows:
        table.add_row(
            str(row["group"]), str(row["tasks"]), f"{row['qpu_seconds']:.3f}",
            str(row["shots"]), str(row["circuits"]),
        )  # fmt: skip
    out.print(table)


def print_slurm_accounting(url: str, token: str, as_json: bool) -> None:
    """``qhpc accounting --slurm``: broker usage per Slurm job joined with sacct."""
    rows = slurm_accounting(url, token)
    if as_json:
        print_json(rows)
        return
    table = Table(
        "slurm job", "user", "account", "state", "resource", "tasks", "qpu seconds", "shots",
        "sacct qpu s",
    )  # fmt: skip
    for row in rows:
        table.add_row(
            row["slurm_job_id"], _text(row["user"]), _text(row["account"]), _text(row["state"]),
            _text(row["resource"]), _text(row["tasks"]), _seconds(row["qpu_seconds"]),
            _text(row["shots"]), _seconds(row["sacct_qpu_seconds"]),
        )  # fmt: skip
    out.print(table)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
