"""``qhpc slurm chain submit|status|cancel|result``: a hybrid loop as a job chain.

The chain — manifest, step scripts, ``afterok`` links, settling a failure — is
:class:`qhpc.slurm.Chain`; these commands open or make one and print its status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from qhpc.cli.options import JsonOption
from qhpc.cli.output import err, out, print_json
from qhpc.slurm import Chain, ChainError, ChainStatus

chain_app = typer.Typer(
    help="Job chains: a hybrid loop as Slurm jobs linked by afterok, with checkpoints.",
    no_args_is_help=True,
)


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
    chain = Chain.locate(where)
    if wait:
        _wait_chain(chain, poll, timeout)
        return
    status, cancelled = chain.settled_status()
    if cancelled:
        err.print(f"cancelled steps that can never run: jobs {', '.join(map(str, cancelled))}")
    if as_json:
        print_json(_status_json(status))
    else:
        _print_status(status)


@chain_app.command("cancel")
def chain_cancel(
    where: Annotated[str, typer.Argument(help="Chain directory, or a step's Slurm job id.")],
) -> None:
    """Cancel every step of the chain that has not finished."""
    chain = Chain.locate(where)
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
    chain = Chain.locate(where)
    try:
        result = chain.result()
    except ChainError as exc:
        raise ChainError(f"chain {chain.name} has no result yet: {exc}") from exc
    print_json(result)
