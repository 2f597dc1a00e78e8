"""Options several verb groups share: the broker's address, its token, ``--json``, the
store's URL.

Secrets come from a file or the environment, never as an argument: a token
given as ``--token VALUE`` would sit in ``/proc/PID/cmdline``, which every user
of the machine can read (``ps``), for as long as the command runs. So the CLI
takes a file (``--token-file PATH``) or an environment variable instead
(:func:`secret_option`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from qhpc.envvars import TOKEN_ENV, URL_ENV

DEFAULT_URL = "http://127.0.0.1:8080"


def _reader(flag: str, envvar: str) -> Callable[[str | None], str]:
    def read(value: str | None) -> str:
        if not value:
            return os.environ.get(envvar, "").strip()
        try:
            return Path(value).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise typer.BadParameter(f"cannot read {value}: {reason}", param_hint=flag) from None

    return read


def secret_option(flag: str, envvar: str, what: str) -> Any:
    """A ``str`` option holding the secret read from the file ``flag`` names, else
    ``$envvar``, else ""."""
    return typer.Option(
        flag,
        metavar="PATH",
        callback=_reader(flag, envvar),
        help=f"File holding {what} (default: ${envvar}). Never pass the secret itself: "
        "other users can read a command's arguments.",
    )


#: the broker's bearer token: --token-file PATH or $QHPC_TOKEN
TokenOption = Annotated[str, secret_option("--token-file", TOKEN_ENV, "the bearer token")]
UrlOption = Annotated[
    str, typer.Option("--url", envvar=URL_ENV, help="Broker URL.", show_default=True)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Resource config (qhpc TOML or qrmi_config.json); default $QHPC_CONFIG, "
        "~/.config/qhpc/resources.toml, else built-in aer/emulator/qx.",
        envvar="QHPC_CONFIG",
    ),
]

#: the store: ``--db`` or $QHPC_DB (``qhpc serve`` and ``qhpc store``)
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="QHPC_DB",
        help="SQLite path or postgresql:// URL (default: qhpc.db in the user data dir); a "
        "URL with a password belongs in $QHPC_DB or PGPASSFILE, not on the command line.",
    ),
]


def store_url(db: str | None) -> str:
    """The store ``--db`` names, or the default one (``qhpc.db`` in the user data dir)."""
    if db:
        return db
    from platformdirs import user_data_path

    return str(user_data_path("qhpc") / "qhpc.db")


def keep_days(value: float) -> float:
    """``--keep-results-days``: days, 0 for ever; nan and inf are refused by name."""
    if not 0 <= value < float("inf"):
        raise typer.BadParameter("give a number of days, or 0 to keep results for ever")
    return value


#: how long results, output and sources are kept after a job ended (retention)
KeepDaysOption = Annotated[
    float,
    typer.Option(
        "--keep-results-days",
        callback=keep_days,
        help="Days after a job ended that its results, program output and sources are "
        "kept; then they are purged (its accounting is kept). 0 keeps them for ever.",
    ),
]
#: qhpc serve's default retention, in days
DEFAULT_KEEP_DAYS = 30.0
