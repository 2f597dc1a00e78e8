"""``qhpc slurm submit|job|chain|template``: job helpers for Slurm users.

- ``submit --remote URL`` / ``job --remote URL``: another site's Slurm through
  its slurmrestd (JWT), polling the job until it ends;
- ``chain submit|status|cancel|result``: a hybrid loop split into ``afterok``
  steps with checkpoints (:mod:`qhpc.slurm.chain`);
- ``template hetjob``: a heterogeneous job with a ``qpu`` component.

Registered on ``qhpc slurm`` by :func:`register` (called from cli_slurm.py).
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qhpc.cli_secrets import secret_option
from qhpc.client import Client, connect
from qhpc.envvars import (
    FASTPATH_ENV,
    RESOURCE_ENV,
    SESSION_ENV,
    SESSION_ID_ENV,
    TOKEN_ENV,
    URL_ENV,
)
from qhpc.errors import QhpcError
from qhpc.slurm.chain import Chain, ChainStatus, SlurmCommands
from qhpc.slurm.checkpoint import ChainError
from qhpc.slurm.rest import (
    DEFAULT_PATH,
    RemoteJob,
    RemoteSlurmError,
    SlurmRestClient,
    token_from_scontrol,
)
from qhpc.slurm.templates import hetjob_script

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

chain_app = typer.Typer(
    help="Job chains: a hybrid loop as Slurm jobs linked by afterok, with checkpoints.",
    no_args_is_help=True,
)
template_app = typer.Typer(help="Print batch-script templates.", no_args_is_help=True)

RemoteOption = Annotated[
    str,
    typer.Option("--remote", help="The remote site's slurmrestd, e.g. http://host:6820."),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", help="Remote user name (X-SLURM-USER-NAME); default: your login name."),
]
TokenOption = Annotated[
    str,
    secret_option(
        "--token-file", "SLURM_JWT", "the user's JWT (X-SLURM-USER-TOKEN; else `scontrol token`)"
    ),
]
LifespanOption = Annotated[
    int, typer.Option(help="Lifetime in seconds of a token made with `scontrol token`.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _rest_client(
    remote: str, user: str | None, token: str | None, lifespan: int
) -> SlurmRestClient:
    name = user or os.environ.get("USER") or getpass.getuser()
    if not token:
        err.print(f"no --token-file and no SLURM_JWT: asking `scontrol token` for user {name}")
        token = token_from_scontrol(name, lifespan)
    return SlurmRestClient(remote, name, token)


def _environment(pairs: list[str], exports: list[str]) -> dict[str, str]:
    environment = {"PATH": DEFAULT_PATH}
    for name in exports:
        if name not in os.environ:
            raise RemoteSlurmError(f"--export {name}: {name} is not set here")
        environment[name] = os.environ[name]
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise RemoteSlurmError(f"--env expects NAME=VALUE, got {pair!r}")
        environment[name] = value
    return environment


def _job_json(job: RemoteJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id, "state": job.state, "reason": job.reason,
        "exit_code": job.exit_code, "signal": job.signal, "name": job.name,
        "partition": job.partition,
    }  # fmt: skip


def _follow(client: SlurmRestClient, job_id: int, poll: float, timeout: float | None) -> RemoteJob:
    return client.wait(
        job_id, poll=poll, timeout=timeout, on_change=lambda job: out.print(job.describe())
    )


def _open_broker_session(
    broker: str,
    broker_token: str | None,
    qpu: str | None,
    for_user: str | None,
    broker_account: str | None,
    seconds: float,
) -> tuple[Client, dict[str, Any]]:
    """A session at the remote site's broker, opened with the centre's token for a user."""
    if not qpu:
        raise RemoteSlurmError("--broker needs --qpu NAME: the resource the job's session is on")
    if not broker_token:
        raise RemoteSlurmError(
            f"--broker needs the centre's broker token: --broker-token-file FILE or {TOKEN_ENV}"
        )
    client = connect(broker, broker_token)
    try:
        session = client.open_session(
            qpu, duration_seconds=seconds, user=for_user, account=broker_account
        )
    except BaseException:
        client.close()
        raise
    return client, session


def submit(
    script: Annotated[Path, typer.Argument(help="The batch script to run remotely.")],
    remote: RemoteOption,
    user: UserOption = None,
    token: TokenOption = "",
    partition: Annotated[str | None, typer.Option("--partition", "-p")] = None,
    name: Annotated[str | None, typer.Option("--name", "-J", help="Job name.")] = None,
    licenses: Annotated[
        str | None, typer.Option("--licenses", "-L", help="Licences, e.g. qpu_sim:1.")
    ] = None,
    chdir: Annotated[
        str, typer.Option("--chdir", help="Working directory on the remote site.")
    ] = "/tmp",
    env: Annotated[
        list[str] | None, typer.Option("--env", help="NAME=VALUE for the job (repeatable).")
    ] = None,
    export: Annotated[
        list[str] | None,
        typer.Option("--export", help="Pass this local variable to the job (repeatable)."),
    ] = None,
    time_limit: Annotated[int | None, typer.Option("--time", help="Time limit, minutes.")] = None,
    account: Annotated[str | None, typer.Option("--account", "-A", help="Slurm account.")] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            help="The remote site's qhpc broker: open a QPU session there for the job, "
            "with the centre's token, and give the job only the session token.",
        ),
    ] = None,
    broker_token: Annotated[
        str,
        secret_option("--broker-token-file", TOKEN_ENV, "the centre's broker token (stays here)"),
    ] = "",
    qpu: Annotated[str | None, typer.Option("--qpu", help="Resource of the session.")] = None,
    fastpath: Annotated[
        str | None,
        typer.Option("--fastpath", help="The broker's fast-path endpoint as the job reaches it."),
    ] = None,
    for_user: Annotated[
        str | None, typer.Option("--for-user", help="The centre's user the session is for.")
    ] = None,
    broker_account: Annotated[
        str | None, typer.Option("--broker-account", help="Broker account to charge.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between state polls.")] = 1.0,
    timeout: Annotated[
        float | None, typer.Option(help="Give up waiting after this many seconds.")
    ] = None,
    lifespan: LifespanOption = 3600,
    as_json: JsonOption = False,
) -> None:
    """Submit a batch script to a remote Slurm through slurmrestd (API v0.0.38, JWT).

    With --wait, prints each state change and exits with the job's exit code.
    With --broker, the job gets a QPU session at the remote broker, booked to
    --for-user within the centre whose token opened it; --wait closes it at the end.
    """
    try:
        text = script.read_text(encoding="utf-8")
    except OSError as exc:
        raise RemoteSlurmError(f"cannot read batch script {script}: {exc.strerror}") from exc
    environment = _environment(env or [], export or [])
    with _rest_client(remote, user, token, lifespan) as client:
        session_client: Client | None = None
        session: dict[str, Any] = {}
        if broker:
            seconds = float(time_limit * 60 if time_limit else lifespan)
            session_client, session = _open_broker_session(
                broker, broker_token, qpu, for_user, broker_account, seconds
            )
            environment.update(_session_exports(broker, fastpath, session))
            if not as_json:
                out.print(
                    f"opened session {session['session_id']} on {session['resource']} at "
                    f"{broker} for {session['user']} (centre {session.get('centre') or '-'}, "
                    f"account {session['account']})"
                )
        try:
            job_id = client.submit(
                text, name=name or script.name, working_directory=chdir,
                environment=environment, partition=partition, licenses=licenses,
                time_limit_minutes=time_limit, account=account,
            )  # fmt: skip
            if not as_json:
                out.print(f"submitted batch job {job_id} to {client.url} as {client.user}")
            if not wait:
                if as_json:
                    out.print_json(json.dumps({"job_id": job_id, **_session_json(session)}))
                return
            job = (
                _follow(client, job_id, poll, timeout)
                if not as_json
                else client.wait(job_id, poll=poll, timeout=timeout)
            )
        except BaseException:
            if session_client is not None:
                _close_session(session_client, session, quiet=True)
            raise
        if session_client is not None:
            _close_session(session_client, session, quiet=as_json)
    if as_json:
        out.print_json(json.dumps({**_job_json(job), **_session_json(session)}))
    raise typer.Exit(job.exit_status)


def _session_exports(broker: str, fastpath: str | None, session: dict[str, Any]) -> dict[str, str]:
    exports = {
        URL_ENV: broker,
        RESOURCE_ENV: str(session["resource"]),
        SESSION_ENV: str(session["token"]),
        SESSION_ID_ENV: str(session["session_id"]),
    }
    if fastpath:
        exports[FASTPATH_ENV] = fastpath
    return exports


def _session_json(session: dict[str, Any]) -> dict[str, Any]:
    return {"session_id": session["session_id"]} if session else {}


def _close_session(client: Client, session: dict[str, Any], quiet: bool) -> None:
    try:
        client.close_session(str(session["session_id"]))
        if not quiet:
            out.print(f"closed session {session['session_id']}")
    except QhpcError as exc:  # the job's result matters more; the deadline ends it anyway
        err.print(f"could not close session {session['session_id']}: {exc}")
    finally:
        client.close()


def job(
    job_id: Annotated[int, typer.Argument(help="The remote job id.")],
    remote: RemoteOption,
    user: UserOption = None,
    token: TokenOption = "",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between state polls.")] = 1.0,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    lifespan: LifespanOption = 3600,
    as_json: JsonOption = False,
) -> None:
    """Show a remote job's state (with --wait: until it ends, exiting with its exit code)."""
    with _rest_client(remote, user, token, lifespan) as client:
        if wait and not as_json:
            found = _follow(client, job_id, poll, timeout)
        elif wait:
            found = client.wait(job_id, poll=poll, timeout=timeout)
        else:
            found = client.job(job_id)
            if not as_json:
                out.print(found.describe())
    if as_json:
        out.print_json(json.dumps(_job_json(found)))
    if wait:
        raise typer.Exit(found.exit_status)


# --------------------------------------------------------------------------- chains


def _open_chain(where: str) -> Chain:
    """A chain by its directory, or by the Slurm job id of one of its steps."""
    if where.isdigit() and not Path(where).is_dir():
        return Chain.open(SlurmCommands().chain_directory_of_job(int(where)))
    return Chain.open(where)


def _print_status(status: ChainStatus) -> None:
    table = Table("step", "job", "state", "reason", "exit", "checkpoint", title=status.describe())
    for step in status.steps:
        table.add_row(
            str(step.step), str(step.job_id or "-"), step.state, step.reason or "",
            "" if step.exit_code is None else str(step.exit_code),
            "saved" if step.checkpoint else "",
        )  # fmt: skip
    out.print(table)


def _status_json(status: ChainStatus) -> dict[str, Any]:
    return {
        "name": status.name,
        "state": status.state,
        "steps": [step.__dict__ for step in status.steps],
    }


@chain_app.command("submit")
def chain_submit(
    program: Annotated[Path, typer.Argument(help="The Python program each step runs.")],
    steps: Annotated[int, typer.Option("--steps", "-n", help="How many steps.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Chain directory: manifest, scripts, checkpoints, logs.")
    ],
    function: Annotated[
        str, typer.Option(help="The step function: f(state, step, steps) -> state.")
    ] = "chain_step",
    script: Annotated[
        bool,
        typer.Option(
            "--script", help="Run the program as a script (it calls checkpoint.load/save)."
        ),
    ] = False,
    arg: Annotated[
        list[str] | None, typer.Option("--arg", help="Program argument (repeatable).")
    ] = None,
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option("--sbatch-arg", help="sbatch option for every step, e.g. --sbatch-arg=-pqpu."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Chain name (job names NAME.IofN).")] = None,
    start: Annotated[int, typer.Option(help="Resume: first step to submit.")] = 1,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the chain until it ends.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between polls.")] = 2.0,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after seconds.")] = None,
) -> None:
    """Split a hybrid program into STEPS Slurm jobs linked by afterok and submit them."""
    if start > 1:
        chain = Chain.open(directory)
    else:
        chain = Chain(
            program, steps, directory, function=None if script else function,
            program_args=arg or [], sbatch_args=sbatch_arg or [], name=name,
        )  # fmt: skip
    ids = chain.submit(start=start)
    out.print(
        f"chain {chain.name}: steps {start}-{chain.steps} submitted as jobs "
        f"{', '.join(map(str, ids))} (directory {chain.directory})"
    )
    if wait:
        _wait_chain(chain, poll, timeout)


def _wait_chain(chain: Chain, poll: float, timeout: float | None) -> None:
    def report(status: ChainStatus) -> None:
        words = ", ".join(f"{s.step}:{s.state}" for s in status.steps)
        out.print(f"{status.describe()} [{words}]")

    status = chain.wait(timeout=timeout, poll=poll, on_change=report)
    if status.state != "completed":
        raise typer.Exit(1)


@chain_app.command("status")
def chain_status(
    where: Annotated[str, typer.Argument(help="Chain directory, or a step's Slurm job id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the chain until it ends.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between polls.")] = 2.0,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after seconds.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Each step's job and state; cancels steps a failed step left waiting."""
    chain = _open_chain(where)
    if wait:
        _wait_chain(chain, poll, timeout)
        return
    status = chain.status()
    cancelled = (
        chain.settle(status)
        if status.state == "failing"
        or any(step.reason == "DependencyNeverSatisfied" for step in status.steps)
        else []
    )
    if cancelled:
        err.print(f"cancelled steps that can never run: jobs {', '.join(map(str, cancelled))}")
        status = chain.status()
    if as_json:
        out.print_json(json.dumps(_status_json(status)))
    else:
        _print_status(status)


@chain_app.command("cancel")
def chain_cancel(
    where: Annotated[str, typer.Argument(help="Chain directory, or a step's Slurm job id.")],
) -> None:
    """Cancel every step of the chain that has not finished."""
    chain = _open_chain(where)
    cancelled = chain.cancel()
    out.print(
        f"chain {chain.name}: cancelled jobs {', '.join(map(str, cancelled))}"
        if cancelled
        else f"chain {chain.name}: nothing left to cancel"
    )


@chain_app.command("result")
def chain_result(
    where: Annotated[str, typer.Argument(help="Chain directory, or a step's Slurm job id.")],
) -> None:
    """Print the state the last step saved (JSON)."""
    chain = _open_chain(where)
    try:
        result = chain.result()
    except ChainError as exc:
        raise ChainError(f"chain {chain.name} has no result yet: {exc}") from exc
    out.print_json(json.dumps(result))


# --------------------------------------------------------------------------- templates


@template_app.command("hetjob")
def template_hetjob(
    command: Annotated[list[str], typer.Argument(help="What the qpu component runs.")],
    qpu: Annotated[str | None, typer.Option(help="Ask for this QPU (--qpu=NAME).")] = None,
    licenses: Annotated[
        str | None, typer.Option("--licenses", "-L", help="Or a licence, e.g. qpu_sim:1.")
    ] = None,
    classical: Annotated[
        str | None,
        typer.Option("--classical", help="Command for the classical component (shell words)."),
    ] = None,
    classical_tasks: Annotated[int, typer.Option(help="Tasks of the classical component.")] = 1,
    classical_partition: Annotated[str, typer.Option()] = "debug",
    qpu_partition: Annotated[str, typer.Option()] = "qpu",
    job_name: Annotated[str, typer.Option("--name", "-J")] = "qhpc-hetjob",
    time_limit: Annotated[str | None, typer.Option("--time")] = None,
) -> None:
    """Print a heterogeneous job: classical component 0, component 1 on the qpu partition."""
    script = hetjob_script(
        command=command, classical_command=shlex.split(classical) if classical else None,
        job_name=job_name, classical_partition=classical_partition,
        qpu_partition=qpu_partition, classical_tasks=classical_tasks, qpu=qpu,
        license=licenses, time_limit=time_limit,
    )  # fmt: skip
    typer.echo(script, nl=False)  # verbatim: no wrapping or markup


def register(slurm_app: typer.Typer) -> None:
    """Add the job helpers to ``qhpc slurm``."""
    slurm_app.command("submit")(submit)
    slurm_app.command("job")(job)
    slurm_app.add_typer(chain_app, name="chain")
    slurm_app.add_typer(template_app, name="template")
