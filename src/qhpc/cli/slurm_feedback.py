"""``qhpc slurm feedback`` (the agent beside slurmctld that holds a QPU's jobs while it is
out of service) and ``qhpc slurm eta JOBID`` (when a job's QPU work can start)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from qhpc.cli.options import DEFAULT_URL, JsonOption, TokenOption, UrlOption
from qhpc.cli.output import out, print_json
from qhpc.client import ClientError, connect
from qhpc.slurm import Feedback, HoldPolicy, QpuState, SlurmHolds, qpus_in_licences, show_job


def feedback(
    threshold: Annotated[
        float,
        typer.Option(min=0, help="Hold a QPU's jobs once it is out of service for this long (s)."),
    ] = 60.0,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between looks.")] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="One step, print it, exit.")] = False,
    steer: Annotated[
        bool,
        typer.Option(
            "--steer/--no-steer",
            help="Also keep back the licences beyond what the broker's admission "
            "controller admits (measured duty cycles).",
        ),
    ] = True,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
) -> None:
    """Hold the Slurm jobs of QPUs that are offline, drained or calibrating (a licence
    reservation per QPU), and let them start when the QPU returns. Run it beside
    slurmctld, as root or a Slurm operator, with an admin token."""
    with connect(url, token) as client:

        def admitted(name: str, licences: int | None) -> int | None:
            if licences is None:
                return None  # no licence in Slurm: nothing to steer
            try:
                advice = client.admission(name, licences=licences)
            except ClientError as exc:
                if exc.status in (404, 405):  # a broker without admission control
                    return None
                raise
            # Steer only on what open sessions have shown they use: with none measured the
            # broker's answer rests on its prior alone, and Slurm's own count stands.
            measured = [d for d in advice.get("duty_cycles") or [] if isinstance(d, int | float)]
            value = advice.get("admitted")
            return int(value) if measured and isinstance(value, int) and value >= 1 else None

        def states(totals: Mapping[str, int]) -> list[QpuState]:
            rows = client.resources()
            if not steer:
                return [QpuState.of(row) for row in rows]
            return [
                QpuState.of(row, admitted(str(row["name"]), totals.get(str(row["name"]))))
                for row in rows
            ]

        agent = Feedback(states, SlurmHolds(), HoldPolicy(threshold))
        if once:
            for action in agent.step():
                out.print(action)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        out.print(f"qhpc slurm feedback: watching {client.url} every {interval:g} s")
        agent.run(stop, interval, report=out.print)


def _eta(qpu: dict[str, Any], job: dict[str, str]) -> dict[str, Any]:
    state = str(qpu["state"])
    takes_work = state in ("idle", "busy")
    until = qpu.get("until")
    if takes_work:
        starts = "now" if job.get("JobState") == "RUNNING" else "when Slurm starts the job"
    elif isinstance(until, int | float):
        starts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(until))
    else:
        starts = "unknown (until an operator resumes it)"
    return {
        "qpu": qpu["name"], "state": state, "reason": qpu.get("reason") or "",
        "until": until, "queue_length": qpu.get("queue_length", 0), "qpu_work_starts": starts,
    }  # fmt: skip


def eta(
    job_id: Annotated[str, typer.Argument(help="The Slurm job id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """When the QPU work of a Slurm job can start: its QPUs' states, reasons and ends."""
    if not job_id.replace("_", "").replace("+", "").isdigit():
        raise typer.BadParameter(f"not a Slurm job id: {job_id[:40]!r}")
    job = show_job(job_id)
    names = qpus_in_licences(job.get("Licenses"))
    with connect(url, token) as client:
        rows = [_eta(client.resource(name), job) for name in names]
    answer = {"job_id": job_id, "job_state": job.get("JobState", ""),
              "slurm_reason": job.get("Reason", ""), "qpus": rows}  # fmt: skip
    if as_json:
        print_json(answer)
        return
    out.print(f"job {job_id}: {answer['job_state']} (Slurm reason: {answer['slurm_reason']})")
    if not rows:
        out.print("  it asks for no QPU licence")
    for row in rows:
        why = f" ({row['reason']})" if row["reason"] else ""
        out.print(
            f"  QPU {row['qpu']}: {row['state']}{why}; QPU work starts: {row['qpu_work_starts']}"
        )
