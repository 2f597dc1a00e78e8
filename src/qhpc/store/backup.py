"""Backing up and restoring an SQLite store; what to run for a PostgreSQL one.

:func:`backup` copies a live store with SQLite's online backup API in one step:
the copy reads the database inside one read transaction, and in WAL mode a reader
blocks no writer, so the broker keeps serving and committing while the copy runs,
and the copy is the database as of the moment its read began — every commit
acknowledged before, none after, never half a transaction. (A step-wise copy would
restart whenever another process writes, and could chase a busy broker for ever.)
The copy goes to a private temporary file beside the target, is switched to a
rollback journal (one self-contained file), passes ``PRAGMA integrity_check``, is
fsync'd, and only then renamed over the target: a failed or interrupted backup leaves
no half file under the target's name.

:func:`restore` puts a backup in the store's place. It takes the store's lock
exclusively (``database.in_use_lock``; every open store holds it shared), so it
refuses while a broker or another qhpc command has the store open, and no store opens
until it is done. It checks the backup (integrity, a qhpc schema this code knows)
before it touches the store, removes the store's stale ``-wal``/``-shm`` (a WAL left
beside a replaced file would be replayed into it) and renames a checked copy in.

PostgreSQL has its own tools; :class:`NotSqliteError` carries the ``pg_dump`` /
``pg_restore`` command for the store's URL (password left out: libpq reads it from
``~/.pgpass`` or ``$PGPASSFILE``).

Every file written here is owner-only (``qhpc.files``), a backup holding everything
the store holds.
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from qhpc.files import open_private, private_dir
from qhpc.store.database import (
    SQLITE_BUSY_TIMEOUT_MS,
    in_use_lock,
    is_postgres,
    sqlite_path,
)
from qhpc.store.errors import StoreError
from qhpc.store.migrations import LATEST_VERSION


class NotSqliteError(StoreError):
    """The store is PostgreSQL: ``command`` is what backs it up (or restores it)."""

    def __init__(self, message: str, command: str) -> None:
        self.command = command
        super().__init__(f"{message}\n  {command}")


@dataclass(frozen=True)
class BackupReport:
    """A backup written, or restored: the file, its size and the schema version it has."""

    path: Path
    bytes: int
    schema_version: int


def pg_dump_command(url: str, dest: Path) -> str:
    """The shell line that backs up the PostgreSQL store at ``url`` into ``dest``
    (``umask 077`` first: the dump holds everything the store holds)."""
    plain, schema = _libpq_url(url)
    where = [f"--schema={schema}"] if schema else []
    dump = ["pg_dump", "--format=custom", f"--file={dest}", *where, f"--dbname={plain}"]
    return "umask 077; " + shlex.join(dump)


def pg_restore_command(url: str, source: Path) -> str:
    """The ``pg_restore`` command that puts the dump ``source`` into the store at ``url``."""
    plain, _ = _libpq_url(url)
    return shlex.join(
        ["pg_restore", "--clean", "--if-exists", "--no-owner", f"--dbname={plain}", str(source)]
    )


def backup(url: str | Path, dest: Path, *, force: bool = False) -> BackupReport:
    """Copies the SQLite store at ``url`` to ``dest`` (owner-only), consistent while a
    broker writes to it. Refuses to replace an existing ``dest`` unless ``force``."""
    path = _sqlite_file(url, "back up", lambda u: pg_dump_command(u, dest))
    dest = dest.expanduser()
    if not path.is_file():
        raise StoreError(f"no store at {path}")
    if dest.exists() and dest.resolve() == path.resolve():
        raise StoreError(f"{dest} is the store itself; back it up to another file")
    if dest.is_dir():
        raise StoreError(f"{dest} is a directory; name the backup file")
    if dest.exists() and not force:
        raise StoreError(f"{dest} exists; pass --force to replace it")
    with closing(_connect(path)) as source:
        _version(source, path)  # a qhpc store, not any SQLite file
        version = _copy_into(source, dest)
    return BackupReport(dest, dest.stat().st_size, version)


def restore(source_file: Path, url: str | Path, *, force: bool = False) -> BackupReport:
    """Replaces the SQLite store at ``url`` with the backup ``source_file``.

    Refuses while the store is open anywhere (a broker, ``qhpc store purge``), when the
    backup is damaged or of a newer qhpc, and when a store is there already unless
    ``force``. The store is migrated at its next open, as after an upgrade.
    """
    path = _sqlite_file(url, "restore", lambda u: pg_restore_command(u, source_file))
    source_file = source_file.expanduser()
    if not source_file.is_file():
        raise StoreError(f"no backup at {source_file}")
    if path.exists() and source_file.resolve() == path.resolve():
        raise StoreError(f"{source_file} is the store itself")
    if path.is_file() and path.stat().st_size > 0 and not force:
        raise StoreError(f"{path} holds a store; pass --force to replace it with the backup")
    private_dir(path.parent, tighten=False)
    with _exclusive(path), closing(_connect(source_file, read_only=True)) as source:
        version = _version(source, source_file)
        if version > LATEST_VERSION:
            raise StoreError(
                f"{source_file} has schema version {version}, newer than the {LATEST_VERSION} "
                "this qhpc knows: restore it with that qhpc"
            )
        _copy_into(source, path, before_rename=lambda: _drop_companions(path))
    return BackupReport(path, path.stat().st_size, version)


# -- internals ------------------------------------------------------------------------


def _sqlite_file(url: str | Path, verb: str, command: Callable[[str], str]) -> Path:
    if is_postgres(url):
        shown = make_url(str(url)).render_as_string(hide_password=True)
        raise NotSqliteError(
            f"the store at {shown} is PostgreSQL; qhpc store {verb} handles SQLite files "
            "only. Use PostgreSQL's own tool (the password from ~/.pgpass or $PGPASSFILE):",
            command(str(url)),
        )
    path = sqlite_path(url)
    if path is None:
        raise StoreError(f"an in-memory store has nothing to {verb}")
    return path


def _libpq_url(url: str) -> tuple[str, str | None]:
    """``url`` as libpq takes it (no password, no SQLAlchemy driver), and the schema its
    ``options=-c search_path=…`` names, if any."""
    parsed = make_url(url)
    query = dict(parsed.query)
    options = query.pop("options", None)
    text = " ".join(options) if isinstance(options, tuple) else (options or "")
    found = re.search(r"search_path\s*=\s*([A-Za-z0-9_]+)", text)
    # URL.set() leaves a field alone when given None: build the URL without a password.
    plain = URL.create(
        "postgresql", username=parsed.username, host=parsed.host, port=parsed.port,
        database=parsed.database, query=query,
    )  # fmt: skip
    return plain.render_as_string(hide_password=False), found.group(1) if found else None


def _connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    try:
        if read_only:  # never write to the backup being restored
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    except sqlite3.Error as error:
        raise StoreError(f"cannot open {path}: {error}") from None
    return conn


def _version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.DatabaseError:  # not a database, or one without our tables
        raise StoreError(f"{path} is not a qhpc store") from None
    if row is None or row[0] is None:
        raise StoreError(f"{path} is not a qhpc store")
    return int(row[0])


def _copy_into(
    source: sqlite3.Connection, dest: Path, before_rename: Callable[[], None] | None = None
) -> int:
    """Copies ``source`` to a checked, fsync'd private file renamed to ``dest``; the
    copy's schema version."""
    private_dir(dest.parent, tighten=False)
    temporary = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    try:
        with closing(sqlite3.connect(temporary)) as copy:
            try:
                source.backup(copy)  # one step: one read transaction, a consistent copy
            except sqlite3.Error as error:
                raise StoreError(f"the copy failed: {error}") from None
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
            check = [row[0] for row in copy.execute("PRAGMA integrity_check")]
            if check != ["ok"]:
                raise StoreError(f"the copy fails its integrity check: {'; '.join(check[:5])}")
            version = _version(copy, dest)
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        os.replace(temporary, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return version


def _drop_companions(path: Path) -> None:
    """The replaced store's WAL and index: replayed into the new file, they would
    corrupt it."""
    for end in ("-wal", "-shm", "-journal"):
        path.with_name(path.name + end).unlink(missing_ok=True)


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = in_use_lock(path, exclusive=True)
    try:
        yield
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
