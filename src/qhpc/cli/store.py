"""``qhpc store purge|backup|restore``: the broker's store, for its administrators.

These commands open the store itself (``--db`` or ``$QHPC_DB``, as ``qhpc serve``
does), not the broker's API: they run on the broker's host, as the broker's user.
``purge`` is safe while the broker runs (it works in short batches);
``restore`` refuses while a broker has the store open (see ``qhpc.store``'s backup).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from qhpc.cli.options import (
    DEFAULT_KEEP_DAYS,
    DbOption,
    JsonOption,
    KeepDaysOption,
    store_url,
)
from qhpc.cli.output import err, out, print_json

store_app = typer.Typer(
    help="The broker's store: purge expired results, back up, restore (on the broker's host)."
)


def _existing(db: str | None) -> str:
    """The store's URL, refusing an SQLite file that does not exist (a typo would
    otherwise create an empty store)."""
    from qhpc.store import StoreError, sqlite_path

    url = store_url(db)
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StoreError(f"no store at {path}")
    return url


@store_app.command("purge")
def purge(
    db: DbOption = None,
    keep_results_days: KeepDaysOption = DEFAULT_KEEP_DAYS,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be purged.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Purge the results, program output and sources of jobs that ended more than
    --keep-results-days ago; their accounting is kept. Safe while the broker runs."""
    from qhpc.broker import Retention, purge_expired
    from qhpc.store import Store

    if not keep_results_days:
        err.print("--keep-results-days 0 keeps results for ever: nothing to purge")
        return
    retention = Retention(keep_days=keep_results_days)
    now = time.time()
    with Store.open(_existing(db)) as store:
        report = purge_expired(store, retention, now, dry_run=dry_run)
    cutoff = retention.cutoff(now)
    assert cutoff is not None
    if as_json:
        print_json(
            {"dry_run": dry_run, "ended_before": cutoff, "jobs": report.jobs,
             "tasks": report.tasks, "bytes": report.bytes}
        )  # fmt: skip
        return
    before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cutoff))
    verb = "would purge" if dry_run else "purged"
    out.print(
        f"{verb} {report.jobs} job(s), {report.tasks} task(s), "
        f"{report.bytes / 1e6:.1f} MB of results, output and sources "
        f"(jobs that ended before {before}); accounting kept"
    )


ForceOption = Annotated[bool, typer.Option("--force", help="Replace what is there.")]


def _not_sqlite(error: Exception) -> typer.Exit:
    """A PostgreSQL store: say which tool to use instead, exit 2 (a usage error)."""
    err.print(f"qhpc store: {error}", markup=False)
    return typer.Exit(2)


@store_app.command("backup")
def backup(
    path: Annotated[Path, typer.Argument(help="The backup file to write (mode 0600).")],
    db: DbOption = None,
    force: ForceOption = False,
) -> None:
    """Copy the SQLite store to PATH, consistent while the broker runs and writes
    (SQLite's online backup). For PostgreSQL, names the pg_dump command to use."""
    from qhpc.store import NotSqliteError
    from qhpc.store import backup as backup_store

    try:
        report = backup_store(store_url(db), path, force=force)
    except NotSqliteError as error:
        raise _not_sqlite(error) from None
    out.print(
        f"backed up {report.bytes / 1e6:.1f} MB (schema version {report.schema_version}) "
        f"to {report.path}"
    )


@store_app.command("restore")
def restore(
    path: Annotated[Path, typer.Argument(help="A backup written by qhpc store backup.")],
    db: DbOption = None,
    force: ForceOption = False,
) -> None:
    """Replace the SQLite store with the backup at PATH. Refuses while a broker (or
    another qhpc command) has the store open: stop the broker first."""
    from qhpc.store import NotSqliteError
    from qhpc.store import restore as restore_store

    try:
        report = restore_store(path, store_url(db), force=force)
    except NotSqliteError as error:
        raise _not_sqlite(error) from None
    out.print(
        f"restored {report.path} from {path} (schema version {report.schema_version}); "
        "start the broker on it"
    )
