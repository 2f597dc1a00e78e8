"""``qhpc resources`` and ``qhpc resources target``: the configured resources, read
directly from the resource config (no broker involved); ``qhpc resources drain`` and
``resume``: an operator's switch, at the broker (admin token); ``qhpc pools``: the
broker's pools and how their members stand, as the choice of a member reads them."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from qhpc.cli.options import DEFAULT_URL, ConfigOption, JsonOption, TokenOption, UrlOption
from qhpc.cli.output import out, print_json
from qhpc.client import connect
from qhpc.resources import load_registry

#: QDMI's states: ready (green), out of service for a known reason (yellow), the rest red
_STATE_COLOURS = {
    "idle": "green",
    "busy": "green",
    "maintenance": "yellow",
    "calibration": "yellow",
}

resources_app = typer.Typer(
    help="List configured resources with their status, or show one's target.",
    invoke_without_command=True,
)


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
        colour = _STATE_COLOURS.get(state, "red")
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


def pools(
    url: UrlOption = DEFAULT_URL, token: TokenOption = "", as_json: JsonOption = False
) -> None:
    """List the broker's pools: each member's state, queue, open sessions and ETA (work
    naming a pool goes to the member with the lowest ETA whose target fits)."""
    with connect(url, token) as client:
        listed = client.pools()
    if as_json:
        print_json(listed)
        return
    if not listed:
        out.print("no pools configured")
        return
    table = Table("pool", "member", "state", "queue", "sessions", "eta", "reason")
    for pool in listed:
        for index, member in enumerate(pool["members"]):
            colour = _STATE_COLOURS.get(member["state"], "red")
            eta = member["eta_seconds"]
            table.add_row(
                pool["name"] if index == 0 else "",
                member["name"],
                f"[{colour}]{member['state']}[/]",
                str(member["queue_length"]),
                str(member["sessions"]),
                "unknown" if eta is None else f"{eta:.1f} s",
                member["reason"],
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


def _time(text: str) -> float:
    """``--until``: UNIX seconds, or an ISO 8601 time (local time unless it has a zone)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise typer.BadParameter(
            "give UNIX seconds or an ISO 8601 time such as 2026-12-08T06:00"
        ) from None


def _ends(drain: dict[str, object]) -> str:
    until = drain.get("until")
    if not isinstance(until, int | float):
        return "until resumed"
    left = until - time.time()
    return f"until {datetime.fromtimestamp(until).isoformat(timespec='seconds')} ({left:.0f} s)"


@resources_app.command("drain")
def resources_drain(
    name: Annotated[str, typer.Argument(help="The resource to take out of service.")],
    reason: Annotated[str, typer.Option(help="Why; every user sees it.")],
    for_seconds: Annotated[
        float | None, typer.Option("--for", min=1, help="How long, in seconds.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Or: when it ends (UNIX seconds or ISO 8601).")
    ] = None,
    now: Annotated[
        bool, typer.Option("--now", help="Stop running work (it is queued again).")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """Take a resource out of service (state maintenance): queued work waits, running
    work finishes (or stops with --now). Without --for or --until: until resumed."""
    if for_seconds is not None and until is not None:
        raise typer.BadParameter("give --for or --until, not both")
    end = None if until is None else _time(until)
    with connect(url, token) as client:
        drain = client.drain(name, reason, until=end, for_seconds=for_seconds, now=now)
    if as_json:
        print_json(drain)
        return
    out.print(f"{name}: drained {_ends(drain)}: {drain['reason']}")


@resources_app.command("resume")
def resources_resume(
    name: Annotated[str, typer.Argument(help="The drained resource.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = "",
    as_json: JsonOption = False,
) -> None:
    """End a resource's drain: its queued work starts again."""
    with connect(url, token) as client:
        ended = client.resume(name)
    if as_json:
        print_json(ended)
        return
    since = datetime.fromtimestamp(float(ended["since"])).isoformat(timespec="seconds")
    out.print(f"{name}: resumed (drained since {since})")
