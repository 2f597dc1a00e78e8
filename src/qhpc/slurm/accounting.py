"""``qhpc accounting --slurm``: the broker's usage per Slurm job beside what ``sacct`` says.

The broker knows each session's Slurm job id (PrologSlurmctld opens it with
one) and books usage under the session's job id, which is its session id; Slurm
knows the job's user, account, state and elapsed time, and — through the
EpilogSlurmctld — the AdminComment carrying the QPU seconds it was told. The
join is by Slurm job id; a job seen on only one side still gets a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from qhpc.slurm.sacct import job_summary, parse_usage_comment, sacct_jobs

SacctLoader = Callable[[Sequence[str]], list[dict[str, Any]]]


def join_accounting(
    sessions: Iterable[Mapping[str, Any]],
    usage_by_job: Mapping[str, Mapping[str, Any]],
    sacct_records: Iterable[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per Slurm job that held a session, ordered by job id."""
    broker: dict[str, dict[str, Any]] = {}
    for session in sessions:
        job_id = session.get("slurm_job_id")
        if not job_id:
            continue
        row = broker.setdefault(
            str(job_id),
            {"resources": [], "sessions": [], "qpu_seconds": 0.0, "shots": 0, "tasks": 0},
        )
        session_id = str(session["session_id"])
        usage = usage_by_job.get(session_id, {})
        row["sessions"].append(session_id)
        if session.get("resource") not in row["resources"]:
            row["resources"].append(session.get("resource"))
        row["user"] = session.get("user")
        row["account"] = session.get("account")
        row["qpu_seconds"] += float(usage.get("qpu_seconds", 0.0))
        row["shots"] += int(usage.get("shots", 0))
        row["tasks"] += int(usage.get("tasks", 0))
    slurm = {}
    for record in sacct_records:
        summary = job_summary(dict(record))
        slurm[summary["slurm_job_id"]] = summary
    rows = []
    for job_id in sorted(set(broker) | set(slurm), key=_job_order):
        from_broker = broker.get(job_id)
        from_slurm = slurm.get(job_id, {})
        if from_broker is None and parse_usage_comment(from_slurm.get("admin_comment")) is None:
            continue  # a Slurm job that never held a QPU
        booked = parse_usage_comment(from_slurm.get("admin_comment"))
        row = {
            "slurm_job_id": job_id,
            "user": from_slurm.get("user") or (from_broker or {}).get("user"),
            "account": from_slurm.get("account") or (from_broker or {}).get("account"),
            "state": from_slurm.get("state"),
            "elapsed_s": from_slurm.get("elapsed_s"),
            "resource": "+".join(str(r) for r in (from_broker or {}).get("resources", []))
            or (booked or {}).get("resource"),
            "sessions": (from_broker or {}).get("sessions", []),
            "qpu_seconds": None if from_broker is None else round(from_broker["qpu_seconds"], 6),
            "shots": None if from_broker is None else from_broker["shots"],
            "tasks": None if from_broker is None else from_broker["tasks"],
            "sacct_qpu_seconds": None if booked is None else booked["qpu_seconds"],
            "sacct_shots": None if booked is None else booked["shots"],
        }
        row["in_sacct"] = (
            booked is not None
            and from_broker is not None
            and (
                abs(booked["qpu_seconds"] - row["qpu_seconds"]) < 1e-3
                and booked["shots"] == row["shots"]
            )
        )
        rows.append(row)
    return rows


def _job_order(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (1 << 62, job_id)


def slurm_accounting(
    url: str, token: str, *, sacct: SacctLoader | None = None, timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Fetch both sides and join them (see :func:`join_accounting`)."""
    from qhpc.slurm.link import BrokerLink

    with BrokerLink(url, token, timeout) as link:
        sessions = [s for s in link.sessions(include_closed=True) if s.get("slurm_job_id")]
        since = min((float(s["opened_at"]) for s in sessions), default=None)
        usage = link.usage_by_job(since=since) if sessions else {}
    job_ids = sorted({str(s["slurm_job_id"]) for s in sessions}, key=_job_order)
    loader = sacct or (lambda ids: sacct_jobs(ids) if ids else [])
    records = loader(job_ids)
    return join_accounting(sessions, usage, records)
