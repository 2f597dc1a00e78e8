"""``qhpc slurm config`` and ``qhpc slurm template``: QPUs as Slurm resources.

:data:`slurm_app` holds the admin's commands; the job helpers on the same verb
(``submit``/``job`` in :mod:`qhpc.cli.remote`, ``chain`` in
:mod:`qhpc.cli.chain`) are added to it where the command is assembled
(:mod:`qhpc.cli`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from qhpc.cli.output import err, out
from qhpc.envvars import TOKEN_ENV, URL_ENV
from qhpc.resources import load_registry
from qhpc.slurm import SlurmConfigError, SlurmConfigRequest, hetjob_script, write_config

slurm_app = typer.Typer(
    help="QPUs as Slurm resources: configuration, hooks, job helpers.", no_args_is_help=True
)
template_app = typer.Typer(help="Print batch-script templates.", no_args_is_help=True)


def _parse_sessions(items: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        name, sep, count = item.partition("=")
        if not sep or not name or not count.strip().isdigit():
            raise SlurmConfigError(f"--sessions: expected NAME=K, got {item!r}")
        counts[name.strip()] = int(count)
    return counts


def _parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SlurmConfigError(f"{flag}: expected NAME=VALUE, got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


@slurm_app.command("config")
def config(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where the Slurm fragments go (qhpc.conf …).")
    ],
    hooks_dir: Annotated[
        Path, typer.Option(help="Where the hook wrappers and hooks.toml go.")
    ] = Path("/etc/qhpc/slurm-hooks"),
    resources_config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="QHPC_CONFIG",
            help="The broker's resource config (qhpc TOML or qrmi_config.json).",
        ),
    ] = None,
    sessions_per_qpu: Annotated[
        int, typer.Option(help="Licence count K: jobs that may hold a session on a QPU at once.")
    ] = 2,
    sessions: Annotated[
        list[str] | None, typer.Option("--sessions", help="Per-QPU K as NAME=K (repeatable).")
    ] = None,
    broker: Annotated[
        str, typer.Option("--broker", envvar=URL_ENV, help="Broker REST URL for the hooks.")
    ] = "http://127.0.0.1:8080",
    fastpath: Annotated[
        str | None,
        typer.Option(help="Fast-path endpoint jobs get (default tcp://<broker host>:5555)."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the admin or centre token the hooks use (default: $QHPC_TOKEN)."
        ),
    ] = None,
    spool_dir: Annotated[
        Path, typer.Option(help="Controller-side handover directory (SlurmUser only).")
    ] = Path("/var/spool/qhpc-slurm"),
    run_dir: Annotated[
        Path, typer.Option(help="Node-side directory of per-job session files.")
    ] = Path("/run/qhpc-slurm"),
    slurm_user: Annotated[str, typer.Option(help="SlurmUser: owner of hooks.toml.")] = "slurm",
    spank_plugin: Annotated[
        Path | None, typer.Option(help="Path of the built qhpc_qpu.so (writes plugstack.conf).")
    ] = None,
    gres_node: Annotated[
        str | None, typer.Option(help="Also write count-only GRES (gres.conf) for this node.")
    ] = None,
    cli_filter: Annotated[
        bool,
        typer.Option(
            help="Activate cli_filter/lua (deploy/slurm/cli_filter.lua): --qpu=NAME "
            "also requests licence qpu_NAME."
        ),
    ] = False,
    mode: Annotated[str, typer.Option(help="Session mode: multiplex or exclusive.")] = (
        "multiplex"
    ),
    federated: Annotated[
        list[str] | None,
        typer.Option(
            "--federated-centre",
            help="CENTRE=SLURMUSER (repeatable): the Slurm user a federated centre's gateway "
            "submits as; the hooks adopt the session that centre tied to such a job.",
        ),
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(
            "--python",
            help="Interpreter the hook wrappers run (default: this one). As root, an "
            "interpreter, prefix or qhpc package others can change is refused; a --python "
            "PATH is used with a warning instead.",
        ),
    ] = None,
) -> None:
    """Write qhpc.conf, plugstack.conf, gres.conf into --out; hooks and hooks.toml into
    --hooks-dir."""
    if mode not in ("multiplex", "exclusive"):
        raise SlurmConfigError(f"--mode: multiplex or exclusive, not {mode!r}")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SlurmConfigError(f"cannot read {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise SlurmConfigError(
            "the hooks need an admin or centre token: --token-file FILE or $QHPC_TOKEN"
        )
    with load_registry(resources_config) as registry:
        names = registry.names()
    written = write_config(
        SlurmConfigRequest(
            resources=names, broker_url=broker, token=token, out_dir=out_dir,
            hooks_dir=hooks_dir,
            sessions_per_qpu=sessions_per_qpu, sessions=_parse_sessions(sessions or []),
            fastpath=fastpath, spool_dir=spool_dir, run_dir=run_dir,
            python=python or sys.executable, python_given=python is not None,
            slurm_user=slurm_user, spank_plugin=spank_plugin, gres_node=gres_node,
            cli_filter=cli_filter,
            session_mode=mode, federated_users=_parse_pairs(federated or [], "--federated-centre"),
        )
    )  # fmt: skip
    for path in written.files:
        out.print(str(path))
    for note in written.notes:
        err.print(f"note: {note}")


@template_app.command("hetjob")
def template_hetjob(
    command: Annotated[list[str], typer.Argument(help="What the qpu component runs.")],
    qpu: Annotated[str | None, typer.Option(help="Ask for this QPU (--qpu=NAME).")] = None,
    licenses: Annotated[
        str | None, typer.Option("--licenses", "-L", help="Or a licence, e.g. qpu_sim:1.")
    ] = None,
    classical: Annotated[
        str | None,
        typer.Option(
            "--classical",
            help="Command line of the classical component, run by bash -c (so pipes, ';' "
            "and quotes work as in a shell); the QPU command is the arguments, as argv.",
        ),
    ] = None,
    classical_tasks: Annotated[int, typer.Option(help="Tasks of the classical component.")] = 1,
    classical_partition: Annotated[str, typer.Option()] = "debug",
    qpu_partition: Annotated[str, typer.Option()] = "qpu",
    job_name: Annotated[str, typer.Option("--name", "-J")] = "qhpc-hetjob",
    time_limit: Annotated[str | None, typer.Option("--time")] = None,
) -> None:
    """Print a heterogeneous job: classical component 0, component 1 on the qpu partition."""
    script = hetjob_script(
        command=command, classical_command=["bash", "-c", classical] if classical else None,
        job_name=job_name, classical_partition=classical_partition,
        qpu_partition=qpu_partition, classical_tasks=classical_tasks, qpu=qpu,
        license=licenses, time_limit=time_limit,
    )  # fmt: skip
    typer.echo(script, nl=False)  # verbatim: no wrapping or markup
