"""``qhpc resources`` and ``qhpc resources target``: the configured resources, read
directly from the resource config (no broker involved)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from qhpc.cli.options import ConfigOption, JsonOption
from qhpc.cli.output import out
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
