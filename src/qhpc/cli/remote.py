"""``qhpc slurm submit|job --remote URL``: another site's Slurm through its slurmrestd.

The round itself — open a session at the remote broker, submit, follow, close —
is :func:`qhpc.slurm.submit_remote`; this module turns options into its inputs
and prints the events it reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qhpc.cli.options import JsonOption, secret_option
from qhpc.cli.output import err, out, print_json
from qhpc.envvars import TOKEN_ENV
from qhpc.slurm import (
    CentreSession,
    FederationEvent,
    JobChanged,
    RemoteJob,
    RemoteSlurmError,
    RemoteSubmission,
    SessionLeftOpen,
    job_dict,
    job_environment,
    rest_client,
    submit_remote,
)

RemoteOption = Annotated[
    str,
    typer.Option("--remote", help="The remote site's slurmrestd, e.g. http://host:6820."),
]
UserOption = Annotated[
    str | None,
    typer.Option("--user", help="Remote user name (X-SLURM-USER-NAME); default: your login name."),
]
JwtOption = Annotated[
    str,
    secret_option(
        "--token-file", "SLURM_JWT", "the user's JWT (X-SLURM-USER-TOKEN; else `scontrol token`)"
    ),
]
LifespanOption = Annotated[
    int, typer.Option(help="Lifetime in seconds of a token made with `scontrol token`.")
]


def _note(message: str) -> None:
    err.print(message)


def submit(
    script: Annotated[Path, typer.Argument(help="The batch script to run remotely.")],
    remote: RemoteOption,
    user: UserOption = None,
    token: JwtOption = "",
    partition: Annotated[str | None, typer.Option("--partition", "-p")] = None,
    name: Annotated[str | None, typer.Option("--name", "-J", help="Job name.")] = None,
    licenses: Annotated[
        str | None,
        typer.Option(
            "--licenses",
            "-L",
            help="Licences, e.g. qpu_sim:1 (with --broker: default the QPU's, qpu_NAME:1).",
        ),
    ] = None,
    no_licence: Annotated[
        bool,
        typer.Option(
            "--no-qpu-licence",
            help="With --broker, ask for no licence (a site that does not count QPU "
            "sessions with Slurm licences).",
        ),
    ] = False,
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
    submission = RemoteSubmission(
        text, name=name or script.name, working_directory=chdir,
        environment=job_environment(env or [], export or []), partition=partition,
        licenses="" if no_licence and licenses is None else licenses,
        time_limit_minutes=time_limit, account=account,
    )  # fmt: skip
    session = None
    if broker:
        if not qpu:
            raise RemoteSlurmError(
                "--broker needs --qpu NAME: the resource the job's session is on"
            )
        if not broker_token:
            raise RemoteSlurmError(
                f"--broker needs the centre's broker token: --broker-token-file FILE or {TOKEN_ENV}"
            )
        session = CentreSession(
            broker, broker_token, qpu, user=for_user, account=broker_account,
            fastpath=fastpath, fallback_seconds=float(lifespan),
        )  # fmt: skip

    def show(event: FederationEvent) -> None:
        if isinstance(event, SessionLeftOpen):
            err.print(event.message)
        elif not as_json:
            out.print(event.message)

    with rest_client(remote, user, token, lifespan, on_note=_note) as client:
        result = submit_remote(
            client, submission, session=session, wait=wait, poll=poll, timeout=timeout,
            on_event=show,
        )  # fmt: skip
    if as_json:
        print_json(result.to_dict())
    if result.job is not None:
        raise typer.Exit(result.job.exit_status)


def job(
    job_id: Annotated[int, typer.Argument(help="The remote job id.")],
    remote: RemoteOption,
    user: UserOption = None,
    token: JwtOption = "",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between state polls.")] = 1.0,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    lifespan: LifespanOption = 3600,
    as_json: JsonOption = False,
) -> None:
    """Show a remote job's state (with --wait: until it ends, exiting with its exit code)."""

    def show(changed: RemoteJob) -> None:
        if not as_json:
            out.print(JobChanged(changed).message)

    with rest_client(remote, user, token, lifespan, on_note=_note) as client:
        if wait:
            found = client.wait(job_id, poll=poll, timeout=timeout, on_change=show)
        else:
            found = client.job(job_id)
            show(found)
    if as_json:
        print_json(job_dict(found))
    if wait:
        raise typer.Exit(found.exit_status)
