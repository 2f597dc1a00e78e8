"""``qhpc serve`` and the commands that talk to a broker over REST.

The broker's address and token come from ``--url`` / ``--token-file`` or the
environment (``QHPC_URL``, ``QHPC_TOKEN``); a token is never an argument, where
other users could read it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qhpc.cli_secrets import TokenOption
from qhpc.client import Client, connect
from qhpc.resources import DecodeLimits, load_circuits

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="QHPC_URL", help="Broker URL.", show_default=True)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_URL = "http://127.0.0.1:8080"

token_app = typer.Typer(help="Create, list and revoke broker tokens (admin).")


def _client(url: str, token: str) -> Client:
    return connect(url, token)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _decode_limits(items: list[str] | None) -> DecodeLimits:
    from dataclasses import fields

    from qhpc.resources import DEFAULT_LIMITS

    known = {f.name: f.type for f in fields(DecodeLimits)}
    changes: dict[str, Any] = {}
    for item in items or []:
        name, _, text = item.partition("=")
        if name not in known:
            raise typer.BadParameter(
                f"unknown decode limit {name!r}; known: {', '.join(sorted(known))}"
            )
        try:
            value: float | int = float(text) if known[name] == "float" else int(text)
        except ValueError:
            raise typer.BadParameter(f"{name} needs a number, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise typer.BadParameter(f"{name} must be a positive finite number")
        changes[name] = value
    return replace(DEFAULT_LIMITS, **changes)


def serve(
    db: Annotated[
        str | None,
        typer.Option(
            envvar="QHPC_DB",
            help="SQLite path or postgresql:// URL (default: user data dir); a URL with a "
            "password belongs in $QHPC_DB or PGPASSFILE, not on the command line.",
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="QHPC_CONFIG")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="REST port.")] = 8080,
    fastpath: Annotated[
        str, typer.Option(help="ZeroMQ fast-path endpoint for session tasks.")
    ] = "tcp://127.0.0.1:5555",
    policy: Annotated[str, typer.Option(help="fifo, priority or fairshare.")] = "fairshare",
    admin_token_file: Annotated[
        Path | None, typer.Option(help="Write a first admin token here (mode 0600).")
    ] = None,
    runtime_pool_size: Annotated[
        int, typer.Option(min=1, help="Warm spare processes for hybrid programs.")
    ] = 2,
    program_output_limit: Annotated[
        int | None,
        typer.Option(
            min=1024,  # qhpc.broker.MIN_OUTPUT_LIMIT, which the broker checks again
            help="Bytes kept of each of a hybrid program's stdout and stderr, truncation "
            "marker included; the rest is dropped (default 4 MiB).",
        ),
    ] = None,
    chunk_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Run batch tasks longer than this (estimated device seconds) as shot chunks, "
            "letting session tasks in between; 0 runs them whole.",
        ),
    ] = 0.1,
    max_task_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Stop and fail a task that runs longer than this on a resource whose "
            "config sets no max_task_seconds; 0: no limit.",
        ),
    ] = 600.0,
    decode_limit: Annotated[
        list[str] | None,
        typer.Option(
            help="A decoding budget, NAME=VALUE (repeatable), e.g. max_operations=2000000; "
            "see docs/security.md for the names and defaults.",
        ),
    ] = None,
    header_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client may take to send request headers.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a client may take to send a request body.")
    ] = 30.0,
    keep_alive_timeout: Annotated[
        int, typer.Option(min=1, help="Seconds an idle keep-alive connection stays open.")
    ] = 5,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections beyond this are answered 503.")
    ] = 256,
    max_header_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest request head (request line + headers).")
    ] = 16384,
) -> None:
    """Run the broker: REST API + ZeroMQ fast path over the configured resources."""
    from platformdirs import user_data_path

    from qhpc.api import (
        FastPathServer,
        ServerLimits,
        bootstrap_admin_token,
        private_state,
        run_server,
        write_secret,
    )
    from qhpc.broker import Broker, BrokerConfig
    from qhpc.files import NotPrivateError
    from qhpc.resources import load_registry
    from qhpc.store import Store

    limits = ServerLimits(
        header_timeout=header_timeout, body_timeout=body_timeout,
        keep_alive_timeout=keep_alive_timeout, max_connections=max_connections,
        max_header_bytes=max_header_bytes,
    )  # fmt: skip
    if db is None:
        db = str(user_data_path("qhpc") / "qhpc.db")
    try:
        private_state(db)  # the data dir 0700 (or refused), umask 077, before the store opens
    except NotPrivateError as error:
        err.print(f"qhpc serve: {error}", style="red", markup=False)
        raise typer.Exit(2) from None
    store = Store.open(db)
    registry = load_registry(config)
    chunks = chunk_seconds if chunk_seconds > 0 else None
    settings = BrokerConfig(
        policy=policy, runtime_pool_size=runtime_pool_size, chunk_seconds=chunks,
        max_task_seconds=max_task_seconds or None, decode_limits=_decode_limits(decode_limit),
    )  # fmt: skip
    if program_output_limit is not None:
        settings = replace(settings, program_output_limit=program_output_limit)
    broker = Broker(store, registry, settings)
    broker.decoder.start()  # the decoding workers, before the first request waits for them
    broker.programs.rest_url = local_rest_url(host, port)  # co-located programs' QHPC_URL
    secret = bootstrap_admin_token(broker)
    if secret is not None:
        if admin_token_file is not None:
            write_secret(admin_token_file, secret)
            err.print(f"admin token written to {admin_token_file}")
        else:
            err.print(f"admin token (shown once): [bold]{secret}[/]")
    broker.start()
    fast = FastPathServer(broker, fastpath).start()
    err.print(
        f"qhpc broker: REST http://{host}:{port}/v1, fast path {fast.endpoint}, store {store.url}"
    )
    try:
        run_server(broker, host, port, limits)
    finally:
        fast.stop()
        broker.stop()
        registry.close()
        store.close()


def local_rest_url(host: str, port: int) -> str:
    """The REST API as a process on the broker's own host reaches it."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def submit(
    files: Annotated[
        list[Path], typer.Argument(help="Circuit files (QASM 2/3, cQASM, QPY), or one program.")
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
        from qhpc.cli_hybrid import submit_hybrid

        if len(files) != 1:
            raise typer.BadParameter("--hybrid takes exactly one program file")
        with _client(url, token) as client:
            submit_hybrid(
                client, files[0], resource=resource, args=args, timeout=timeout,
                max_iterations=max_iterations, entry=entry, account=account, name=name,
                wait=wait, as_json=as_json, idempotency_key=idempotency_key,
            )  # fmt: skip
        return
    circuits = [c for path in files for c in load_circuits(path)]
    with _client(url, token) as client:
        job = client.submit(
            resource, circuits, shots, priority, account, name, split_circuits=True,
            idempotency_key=idempotency_key,
        )  # fmt: skip
    if as_json:
        _print_json(job)
    else:
        out.print(f"job [bold]{job['job_id']}[/] queued: {len(job.get('tasks', []))} task(s)")


def status(
    job_id: Annotated[str, typer.Argument()],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """Show a job and its tasks (state, queue position, ETA)."""
    with _client(url, token) as client:
        job = client.job(job_id)
    if as_json:
        _print_json(job)
        return
    if job.get("kind") == "hybrid":
        from qhpc.cli_hybrid import print_status

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
    with _client(url, token) as client:
        answer = client.queue(resource)
    if as_json:
        _print_json(answer)
        return
    entries = answer.get("entries", answer.get("tasks", []))
    table = Table("position", "task", "job", "user", "eta s", title=f"queue of {resource}")
    for entry in entries:
        table.add_row(
            str(entry.get("position")), str(entry.get("task_id") or "…"),
            str(entry.get("job_id") or ""), str(entry.get("user") or "other"),
            f"{float(entry.get('eta_seconds') or 0):.1f}",
        )  # fmt: skip
    out.print(table)


def cancel(
    job_id: Annotated[str, typer.Argument()],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Cancel a job: queued tasks at once, running ones through the resource."""
    with _client(url, token) as client:
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
    with _client(url, token) as client:
        if wait > 0:
            client.wait(job_id, timeout=wait)
        if client.job(job_id).get("kind") == "hybrid":
            from qhpc.cli_hybrid import print_result

            return print_result(client, job_id, as_json)
        results = client.results(job_id)
    data = [None if r is None else r.to_dict() for r in results]
    if as_json:
        _print_json(data)
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
        from qhpc.cli_slurm import print_slurm_accounting

        print_slurm_accounting(url, token, as_json)
        return
    with _client(url, token) as client:
        rows = client.accounting(group_by)
    if as_json:
        _print_json(rows)
        return
    table = Table(group_by, "tasks", "qpu seconds", "shots", "circuits")
    for row in rows:
        table.add_row(
            str(row["group"]), str(row["tasks"]), f"{row['qpu_seconds']:.3f}",
            str(row["shots"]), str(row["circuits"]),
        )  # fmt: skip
    out.print(table)


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, centre or user.")],
    subject: Annotated[str, typer.Option(help="User or centre name.")],
    account: Annotated[str | None, typer.Option()] = None,
    centre: Annotated[str | None, typer.Option()] = None,
    ttl: Annotated[float | None, typer.Option(help="Lifetime in seconds.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    out_file: Annotated[
        Path | None,
        typer.Option("--out", metavar="PATH", help="Write the secret here (0600), not stdout."),
    ] = None,
) -> None:
    """Issue a token; the secret is printed once, on stdout (or written to --out)."""
    from qhpc.files import write_private

    with _client(url, token) as client:
        created = client.create_token(role, subject, account, centre, ttl)
    err.print(f"token {created.get('token_id')} for {subject} ({role})")
    if out_file is None:
        sys.stdout.write(created["token"] + "\n")
        return
    write_private(out_file, created["token"] + "\n")
    err.print(f"secret written to {out_file}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument()],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Revoke a token by id."""
    with _client(url, token) as client:
        client.revoke_token(token_id)
    out.print(f"token {token_id} revoked")


def register(app: typer.Typer) -> None:
    from qhpc.cli_hybrid import logs

    for command in (serve, submit, status, queue, cancel, result, accounting, logs):
        app.command()(command)
    app.add_typer(token_app, name="token")
