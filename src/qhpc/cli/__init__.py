"""The ``qhpc`` command line: thin over the rooms, errors as one clear line.

One module per verb group, each a set of plain functions that parse options,
call a room and print; this module assembles them into :data:`app` (the order
below is the order ``qhpc --help`` lists them) and runs it from :func:`main`.

- :mod:`~qhpc.cli.serve` — ``serve``: the broker in this process;
- :mod:`~qhpc.cli.jobs` — ``submit``, ``status``, ``queue``, ``cancel``, ``result``,
  ``accounting``: a broker's jobs over REST; :mod:`~qhpc.cli.hybrid` — ``logs``
  and the hybrid programs' side of those;
- :mod:`~qhpc.cli.run` — ``run``, ``demo``: local resources, no broker;
  :mod:`~qhpc.cli.resources` — ``resources`` and ``pools``;
- :mod:`~qhpc.cli.tokens` — ``token``; :mod:`~qhpc.cli.bench` — ``bench``;
- :mod:`~qhpc.cli.store` — ``store purge|backup|restore``: the store itself;
- :mod:`~qhpc.cli.top` — ``top``: a live view of a broker's QPUs, queue and sessions;
- :mod:`~qhpc.cli.session` — ``session qi-endpoint``: a running session behind Quantum
  Inspire's compute-runtime protocol;
- :mod:`~qhpc.cli.slurm` — ``slurm config|template``, with ``slurm submit|job``
  (:mod:`~qhpc.cli.remote`) and ``slurm chain`` (:mod:`~qhpc.cli.chain`).

Shared options are in :mod:`~qhpc.cli.options`, the consoles in
:mod:`~qhpc.cli.output`.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from qhpc import __version__
from qhpc.cli import chain, hybrid, jobs, remote, run, serve, slurm_feedback, top
from qhpc.cli.bench import bench_app
from qhpc.cli.output import fail, out
from qhpc.cli.resources import pools, resources_app
from qhpc.cli.session import session_app
from qhpc.cli.slurm import slurm_app, template_app
from qhpc.cli.store import store_app
from qhpc.cli.tokens import token_app
from qhpc.errors import QhpcError

app = typer.Typer(
    name="qhpc",
    help="Quantum processors as shared, scheduled, accounted HPC resources.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def version() -> None:
    """Print the qhpc version."""
    out.print(__version__)


for command in (
    serve.serve, jobs.submit, jobs.status, jobs.queue, jobs.cancel, jobs.result,
    jobs.accounting, hybrid.logs, top.top, version, run.run, run.demo, pools,
):  # fmt: skip
    app.command()(command)
app.add_typer(resources_app, name="resources")
app.add_typer(token_app, name="token")
app.add_typer(bench_app, name="bench")
app.add_typer(store_app, name="store")
app.add_typer(session_app, name="session")
slurm_app.command("submit")(remote.submit)
slurm_app.command("job")(remote.job)
slurm_app.command("feedback")(slurm_feedback.feedback)
slurm_app.command("eta")(slurm_feedback.eta)
slurm_app.add_typer(chain.chain_app, name="chain")
slurm_app.add_typer(template_app, name="template")
app.add_typer(slurm_app, name="slurm")


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: domain errors become one line on stderr and exit code 1."""
    try:
        code = app(args=argv, standalone_mode=False)
    except QhpcError as exc:
        sys.exit(fail(str(exc)))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(fail("aborted"))
    except Exception as exc:
        import click

        # typer 0.29 raises its own vendored click's exceptions (TyperException), not click's
        show = getattr(exc, "show", None)
        if isinstance(exc, (click.ClickException, typer.TyperException)) and callable(show):
            show()
            sys.exit(int(getattr(exc, "exit_code", 2)))
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
    return None


__all__ = ["app", "main"]
