"""The CLI of hybrid jobs: ``qhpc submit --hybrid``, ``qhpc logs``, and the hybrid parts of
``qhpc status`` / ``qhpc result`` (called from :mod:`qhpc.cli.jobs`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from qhpc.cli.options import DEFAULT_URL, TokenOption, UrlOption
from qhpc.cli.output import err, out
from qhpc.client import FINAL_STATES, Client, ClientError, connect, new_idempotency_key

#: how often a waiting CLI asks the broker about the job
POLL_S = 0.5


def _post_program(client: Client, body: dict[str, Any], key: str | None) -> dict[str, Any]:
    # With an idempotency key, so the client retries a lost answer without a second job.
    key = key or new_idempotency_key()
    return dict(client._request("POST", "/programs", json=body, idempotency_key=key))


def _logs(client: Client, job_id: str, stdout_offset: int, stderr_offset: int) -> dict[str, Any]:
    params = {"stdout_offset": stdout_offset, "stderr_offset": stderr_offset}
    return dict(client._request("GET", f"/jobs/{job_id}/logs", params=params))


def submit_hybrid(
    client: Client, program: Path, *, resource: str, args: str | None, timeout: float | None,
    max_iterations: int | None, entry: str, account: str | None, name: str | None,
    wait: bool, as_json: bool, idempotency_key: str | None = None,
) -> None:  # fmt: skip
    """Upload ``program`` as a hybrid job; with ``wait``, follow it to its end."""
    try:
        source = program.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read program {program}: {exc}") from None
    try:
        parsed_args = json.loads(args) if args else {}
    except json.JSONDecodeError as exc:
        raise ClientError(f"--args is not JSON: {exc}") from None
    if not isinstance(parsed_args, dict):
        raise ClientError("--args must be a JSON object, e.g. '{\"shots\": 1000}'")
    body = {
        "resource": resource, "source": source, "filename": program.name, "entry": entry,
        "args": parsed_args, "timeout": timeout, "max_iterations": max_iterations,
        "account": account, "name": name,
    }  # fmt: skip
    job = _post_program(client, {k: v for k, v in body.items() if v is not None}, idempotency_key)
    job_id = job["job_id"]
    if not wait:
        if as_json:
            out.print_json(json.dumps(job, default=str))
        else:
            out.print(f"hybrid job [bold]{job_id}[/] submitted ({program.name} on {resource})")
        return
    err.print(f"hybrid job {job_id} submitted ({program.name} on {resource})")
    job = follow(client, job_id)
    print_result(client, job_id, as_json)
    if (job.get("program") or {}).get("status") != "completed":
        raise typer.Exit(1)


def follow(client: Client, job_id: str) -> dict[str, Any]:
    """Poll the job with a live progress line until it is final; returns it."""
    with err.status(f"job {job_id}: queued") as line:
        while True:
            job = client.job(job_id)
            program = job.get("program") or {}
            line.update(f"job {job_id}: {describe(program)}")
            if job["state"] in FINAL_STATES and program.get("status") not in ("queued", "running"):
                return job
            time.sleep(POLL_S)


def describe(program: dict[str, Any]) -> str:
    """``running — iteration 17, value -1.137 — 52 QPU calls``"""
    parts = [str(program.get("status", "?"))]
    if program.get("progress_line"):
        parts.append(str(program["progress_line"]))
    parts.append(f"{program.get('qpu_calls', 0)} QPU calls")
    return " — ".join(parts)


def print_status(job: dict[str, Any]) -> None:
    program = job.get("program") or {}
    out.print(f"hybrid job {job['job_id']} [bold]{job['state']}[/] on {job['resource']}")
    out.print(f"program  {describe(program)}")
    if program.get("session_id"):
        out.print(f"session  {program['session_id']}")
    if program.get("message"):
        out.print(f"message  {program['message'].splitlines()[0]}")


def print_result(client: Client, job_id: str, as_json: bool) -> None:
    """The return value, the status and the timings of a hybrid job's program."""
    program = client.job(job_id).get("program") or {}
    if as_json:
        out.print_json(json.dumps(program, default=str))
        return
    out.print(f"status       [bold]{program.get('status')}[/]")
    if program.get("message"):
        out.print(f"message      {program['message']}")
    out.print(f"return value {json.dumps(program.get('return_value'), default=str)}")
    out.print(
        f"iterations   {program.get('iterations', 0)}, QPU calls {program.get('qpu_calls', 0)}"
    )
    timings = program.get("timings") or {}
    for key in (
        "initialisation_s", "run_s", "classical_s", "qpu_s", "dispatch_overhead_s",
        "dispatch_overhead_per_call_s", "termination_s", "total_s",
    ):  # fmt: skip
        if key in timings:
            value = timings[key]
            shown = f"{value * 1e6:.1f} µs" if key.endswith("per_call_s") else f"{value:.4f} s"
            out.print(f"  {key.removesuffix('_s'):<30} {shown}")


def logs(
    job_id: Annotated[str, typer.Argument()],
    follow_output: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing output until the program ends.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Print a hybrid job's program output (stdout; stderr to stderr)."""
    with connect(url, token) as client:
        stdout_offset = stderr_offset = 0
        while True:
            answer = _logs(client, job_id, stdout_offset, stderr_offset)
            if answer["stdout"]:
                out.out(answer["stdout"], end="")
            if answer["stderr"]:
                err.out(answer["stderr"], end="")
            stdout_offset, stderr_offset = answer["stdout_offset"], answer["stderr_offset"]
            if not follow_output or answer["final"]:
                return
            time.sleep(POLL_S)
