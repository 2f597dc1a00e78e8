"""Slurm accounting: writing a job's QPU usage where ``sacct`` shows it, and reading it back.

The usage goes into the job's AdminComment as ``qhpc:resource=sim,qpu_s=1.234,
shots=4000,tasks=57``: only SlurmUser and admins may set it, users can read it
(``sacct -j ID -o AdminComment``). It is written into slurmdbd's record with
``sacctmgr modify job``; see docs/slurm-admin.md for what was measured on Slurm 22.05.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from qhpc.slurm.errors import SlurmCommandError

COMMENT_PREFIX = "qhpc:"
_FIELD = re.compile(r"([a-z_]+)=([^,]*)")


def usage_comment(*, resources: Sequence[str], qpu_seconds: float, shots: int, tasks: int) -> str:
    """The AdminComment text for a job's QPU usage (no spaces: one shell word)."""
    names = "+".join(dict.fromkeys(resources)) or "none"
    return f"{COMMENT_PREFIX}resource={names},qpu_s={qpu_seconds:.3f},shots={shots},tasks={tasks}"


def parse_usage_comment(text: str | None) -> dict[str, Any] | None:
    """The usage in an AdminComment written by :func:`usage_comment`, or None."""
    if not text or not text.startswith(COMMENT_PREFIX):
        return None
    fields = dict(_FIELD.findall(text[len(COMMENT_PREFIX) :]))
    try:
        return {
            "resource": fields.get("resource", ""),
            "qpu_seconds": float(fields.get("qpu_s", "0")),
            "shots": int(fields.get("shots", "0")),
            "tasks": int(fields.get("tasks", "0")),
        }
    except ValueError:
        return None


def _run(command: Sequence[str], timeout: float = 20.0) -> str:
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmCommandError(f"cannot run {command[0]}: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}"
        raise SlurmCommandError(f"{' '.join(command[:3])} … failed: {detail}")
    return done.stdout


def set_admin_comment(job_id: str, text: str, *, attempts: int = 20, pause_s: float = 0.5) -> None:
    """Set a finished job's AdminComment in the accounting database (SlurmUser or admin).

    ``scontrol update … AdminComment=`` is refused once the job has finished ("Job
    has already finished"), which it has when EpilogSlurmctld runs; ``sacctmgr
    modify job`` writes the database record instead. That record may reach
    slurmdbd a moment after the epilog starts, so "Nothing modified" is retried.
    """
    command = [
        "sacctmgr", "-i", "modify", "job", "where", f"jobid={job_id}",
        "set", f"AdminComment={text}",
    ]  # fmt: skip
    for attempt in range(attempts):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SlurmCommandError(f"cannot run sacctmgr: {exc}") from None
        if done.returncode == 0:
            return
        said = (done.stdout + done.stderr).strip()
        if "Nothing modified" not in said:
            raise SlurmCommandError(f"sacctmgr modify job {job_id} failed: {said}")
        if attempt + 1 < attempts:
            time.sleep(pause_s)
    raise SlurmCommandError(
        f"job {job_id} did not reach the accounting database within "
        f"{attempts * pause_s:.1f} s; its AdminComment was not set"
    )


def sacct_jobs(
    job_ids: Sequence[str] = (),
    *,
    since: str | None = None,
    all_users: bool = True,
) -> list[dict[str, Any]]:
    """Job records from ``sacct --json`` (allocations only, not steps)."""
    command = ["sacct", "--json", "-X"]
    if all_users:
        command.append("--allusers")
    if job_ids:
        command += ["--jobs", ",".join(job_ids)]
    if since is not None:
        command += ["--starttime", since]
    try:
        data = json.loads(_run(command))
    except json.JSONDecodeError as exc:
        raise SlurmCommandError(f"sacct --json printed something else: {exc}") from None
    return list(data.get("jobs", []))


def job_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of one ``sacct --json`` job that qhpc reports, flattened."""
    state = record.get("state") or {}
    current = state.get("current") if isinstance(state, dict) else state
    time_info = record.get("time") or {}
    # 22.05 (data_parser v0.0.38) nests it: "comment": {"administrator", "job", "system"}
    comments = record.get("comment")
    admin_comment = (
        comments.get("administrator") if isinstance(comments, dict) else None
    ) or record.get("admin_comment")
    return {
        "slurm_job_id": str(record.get("job_id", "")),
        "name": record.get("name"),
        "user": record.get("user"),
        "account": record.get("account"),
        "state": current,
        "elapsed_s": time_info.get("elapsed"),
        "admin_comment": admin_comment or None,
    }
