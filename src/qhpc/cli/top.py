"""``qhpc top``: a live view of a broker — its QPUs, their queues and its sessions.

Every ``--interval`` seconds it asks the broker's REST API (token from
``--token-file`` or ``$QHPC_TOKEN``, never an argument) and redraws in place: rich
``Live`` on the terminal's alternate screen, which is left, and the cursor shown
again, however the view ends. Ctrl-C ends it with status 0. A broker that does not
answer is shown as "unreachable, retrying" (with the last view it gave, if any) and
asked again at the next refresh, never a traceback; a token the broker refuses ends
the view (it will not get better by asking again). ``--once`` prints one frame and
exits, 1 if the broker could not be reached: for scripts and tests.

What a token sees is what the API shows it: users see other people's queue entries
as bare positions. Resource states are QDMI's words as the broker reports them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from qhpc.cli.options import DEFAULT_URL, TokenOption, UrlOption
from qhpc.cli.output import out
from qhpc.client import Client, ClientError, connect

#: queue entries shown per resource; the rest are counted
QUEUE_ROWS = 10
#: how a resource state is coloured (QDMI's words); anything else stays plain
STATE_STYLE = {
    "idle": "green", "busy": "cyan", "offline": "red", "error": "bold red",
    "maintenance": "yellow", "calibration": "yellow",
}  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """What the broker said at ``at``: resources, each one's queue, open sessions."""

    resources: list[dict[str, Any]]
    queues: dict[str, dict[str, Any]]
    sessions: list[dict[str, Any]] | None  # None: this token may not list sessions
    at: float


def gather(client: Client, now: float) -> Snapshot:
    resources = client.resources()
    queues = {r["name"]: client.queue(r["name"]) for r in resources}
    try:
        sessions: list[dict[str, Any]] | None = client.sessions()
    except ClientError as error:
        if error.status != 403:
            raise
        sessions = None
    return Snapshot(resources, queues, sessions, now)


def poll(client: Client) -> tuple[Snapshot | None, str | None]:
    """A snapshot, or why there is none now. A refused token raises: asking again
    will not help."""
    try:
        return gather(client, time.time()), None
    except ClientError as error:
        if error.status in (401, 403):
            raise
        if error.status is None:
            why = error.detail.removeprefix(f"cannot reach broker at {client.url}: ")
            return None, f"unreachable, retrying ({why})"
        return None, f"the broker answered {error}, retrying"


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _qpus(snapshot: Snapshot) -> Table:
    table = Table("QPU", "type", "state", "reason", "queued", "running", title="QPUs",
                  title_justify="left", expand=True)  # fmt: skip
    for r in snapshot.resources:
        state = str(r.get("state", "?"))
        table.add_row(
            str(r["name"]), str(r.get("type", "")), Text(state, style=STATE_STYLE.get(state, "")),
            str(r.get("reason") or ""), str(r.get("queue_length", 0)),
            "yes" if r.get("running") else "no",
        )  # fmt: skip
    return table


def _queue(snapshot: Snapshot) -> Table:
    table = Table("QPU", "pos", "ETA", "task", "job", "user", "session", title="queue",
                  title_justify="left", expand=True)  # fmt: skip
    for name, queue in snapshot.queues.items():
        entries = queue.get("entries", [])
        for entry in entries[:QUEUE_ROWS]:
            table.add_row(
                name, str(entry.get("position")), _duration(float(entry.get("eta_seconds") or 0)),
                entry.get("task_id") or "…", entry.get("job_id") or "",
                entry.get("user") or "(other)", entry.get("session_id") or "",
            )  # fmt: skip
        if len(entries) > QUEUE_ROWS:
            table.add_row(name, "…", "", f"and {len(entries) - QUEUE_ROWS} more", "", "", "")
    return table


def _sessions(snapshot: Snapshot) -> RenderableType:
    if snapshot.sessions is None:
        return Text("sessions: not visible to this token", style="dim")
    table = Table("session", "QPU", "user", "account", "mode", "open for", "ends in",
                  title="sessions", title_justify="left", expand=True)  # fmt: skip
    for s in snapshot.sessions:
        table.add_row(
            str(s["session_id"]), str(s["resource"]), str(s["user"]), str(s["account"]),
            str(s.get("mode", "")), _duration(snapshot.at - float(s["opened_at"])),
            _duration(float(s["deadline"]) - snapshot.at),
        )  # fmt: skip
    return table


def frame(
    url: str, snapshot: Snapshot | None, problem: str | None, interval: float | None
) -> RenderableType:
    """One screen: a header, the problem if any, and the last snapshot if there is one."""
    clock = time.strftime("%H:%M:%S")
    every = f"every {interval:g}s, Ctrl-C quits" if interval is not None else "once"
    parts: list[RenderableType] = [Text(f"qhpc top  {url}  {clock}  ({every})", style="bold")]
    if problem is not None:
        parts.append(Text(f"broker at {url}: {problem}", style="bold red"))
    if snapshot is not None:
        if problem is not None:
            parts.append(Text(f"as of {time.strftime('%H:%M:%S', time.localtime(snapshot.at))}",
                              style="dim"))  # fmt: skip
        parts += [_qpus(snapshot), _queue(snapshot), _sessions(snapshot)]
    return Group(*parts)


def top(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    interval: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds between refreshes.")
    ] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """Live view of the broker: QPUs (state, reason, queue, running), the queue with
    positions and ETAs, and sessions. Ctrl-C quits."""
    if interval != interval:  # nan passes the range check
        raise typer.BadParameter("needs a number", param_hint="--interval")
    with connect(url, token, timeout=min(max(interval, 2.0), 10.0), check=False) as client:
        if once:
            snapshot, problem = poll(client)
            out.print(frame(url, snapshot, problem, None))
            if problem is not None:
                raise typer.Exit(1)
            return
        try:
            _live(client, url, interval)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how one leaves top: Live has restored the terminal


def _live(client: Client, url: str, interval: float) -> None:
    last: Snapshot | None = None
    with Live(console=out, screen=True, auto_refresh=False, redirect_stderr=False) as live:
        while True:
            started = time.monotonic()
            snapshot, problem = poll(client)
            last = snapshot or last
            live.update(frame(url, last, problem, interval), refresh=True)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
