"""Connecting to the backend and running transactions, the only dialect-aware code.

:class:`Database` wraps a SQLAlchemy ``Engine`` (pooled, shared by all threads) and
hands out transactions through :meth:`Database.tx`, which also turns driver errors
into the store's typed errors.

SQLite specifics, and why:

* The ``sqlite3`` module's own transaction handling is switched off
  (``isolation_level = None``) and every transaction is started by an explicit
  ``BEGIN``: otherwise reads run outside any transaction and DDL commits implicitly.
* Write transactions use ``BEGIN IMMEDIATE``, taking SQLite's single write lock up
  front. A deferred transaction that reads and then writes can fail with
  ``SQLITE_BUSY`` immediately (no busy-wait helps) when another writer committed in
  between; taking the lock first makes writers queue instead.
* Writers of one process also queue on a Python lock, so in-process contention is
  resolved by a fair wait rather than SQLite's sleep-and-retry busy handler, which
  stays in place (``busy_timeout``) for other processes.
* ``:memory:`` databases live in one shared connection (``StaticPool``), so there every
  transaction, read or write, holds the lock.
* An open store holds a shared ``flock`` on ``<file>.lock`` (:func:`in_use_lock`), which
  ``qhpc store restore`` takes exclusively: a restore never swaps the file under a
  broker, and no broker opens the file halfway through a restore.

PostgreSQL specifics: the ``psycopg`` (v3) driver, ``connect_timeout`` so that an
unreachable server fails fast, ``pool_pre_ping`` so a restarted server costs no
failed request, and transaction-scoped advisory locks where a check-then-insert must
not race (migrations, reservation overlap).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from qhpc.files import open_private, private_file, tighten_file
from qhpc.store.errors import ConflictError, StoreError

#: Seconds a PostgreSQL connection attempt may take before the store gives up.
PG_CONNECT_TIMEOUT = 5
#: Milliseconds an SQLite writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: what SQLite keeps beside an SQLite database file (the file itself: "")
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
#: the file whose flock says a store is open (see in_use_lock)
LOCK_SUFFIX = ".lock"

_WRITE_OPTION = "qhpc_write"
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")


class Database:
    """An engine plus the rules for starting transactions on it."""

    def __init__(
        self,
        engine: Engine,
        *,
        display_url: str,
        memory: bool = False,
        path: Path | None = None,
        lock_fd: int | None = None,
    ) -> None:
        self.engine = engine
        self.display_url = display_url
        #: the SQLite database file; None in memory and on PostgreSQL
        self.path = path
        self._lock_fd = lock_fd
        self.backend = engine.dialect.name
        self.is_sqlite = self.backend == "sqlite"
        self._memory = memory
        self._write_lock = threading.Lock()
        self._closed = False

    def reopen_url(self) -> str | None:
        """The engine's URL with its password; None in memory (see Store.reopen_url)."""
        if self._memory:
            return None
        if self.is_sqlite:
            return str(self.path)
        return self.engine.url.render_as_string(hide_password=False)

    @classmethod
    def connect(cls, url: str | Path) -> Database:
        """Builds the engine for ``url`` (no connection is made yet)."""
        if is_postgres(url):
            return _postgres_database(make_url(str(url)))
        return _sqlite_database(sqlite_path(url))

    def close(self) -> None:
        self._closed = True
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the shared lock (see in_use_lock)
            self._lock_fd = None

    @contextmanager
    def tx(
        self, *, write: bool = False, lock: str | None = None, relaxed: bool = False
    ) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises.

        ``write`` marks transactions that modify data (SQLite takes the write lock at
        BEGIN). ``lock`` names a PostgreSQL advisory lock held until commit, for
        check-then-write sequences that row locks cannot protect. ``relaxed`` commits
        without waiting for the disk: the data survives a crash of the broker process
        but not of the machine (SQLite ``synchronous = NORMAL`` in WAL mode, PostgreSQL
        ``synchronous_commit = off``) — for write-behind of session tasks only.
        """
        if self._closed:
            raise StoreError("the store is closed")
        guard = self._write_lock if self.is_sqlite and (write or self._memory) else None
        with guard if guard is not None else nullcontext():
            try:
                conn = self.engine.connect()
            except exc.DBAPIError as error:
                raise StoreError(
                    f"cannot connect to the store at {self.display_url}: {error.orig}"
                ) from error
            relax_sqlite = relaxed and self.is_sqlite and not self._memory
            try:
                if write:
                    conn.execution_options(**{_WRITE_OPTION: True})
                if relax_sqlite:
                    # On the raw connection: SQLAlchemy would wrap it in a transaction,
                    # and the setting must be in place before BEGIN.
                    _raw_sqlite(conn).execute("PRAGMA synchronous = NORMAL")
                with conn.begin():
                    if relaxed and not self.is_sqlite:
                        conn.execute(text("SET LOCAL synchronous_commit = off"))
                    if lock is not None and not self.is_sqlite:
                        # Scoped to the schema so that separate stores in one database
                        # (tests use one schema each) do not wait for each other;
                        # coalesce because a NULL key would silently take no lock.
                        conn.execute(
                            text(
                                "SELECT pg_advisory_xact_lock("
                                "hashtext(coalesce(current_schema(), '') || ':' || :name))"
                            ),
                            {"name": lock},
                        )
                    yield conn
            except exc.IntegrityError as error:
                raise ConflictError(f"conflicts with stored data: {error.orig}") from error
            except exc.SQLAlchemyError as error:
                raise StoreError(f"database error ({self.display_url}): {error}") from error
            finally:
                if relax_sqlite:
                    try:
                        _raw_sqlite(conn).execute("PRAGMA synchronous = FULL")
                    except Exception:
                        # A connection that cannot be restored must not serve a durable
                        # write later: drop it from the pool.
                        conn.invalidate()
                conn.close()


def _scheme(url: str | Path) -> str | None:
    """The scheme of a store URL; None for a plain path (SQLite). StoreError if unknown."""
    if isinstance(url, Path) or "://" not in url:
        return None
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SQLITE_SCHEMES + _PG_SCHEMES:
        raise StoreError(
            f"unknown store URL scheme {scheme!r}: use postgresql://..., sqlite:///path "
            "or a plain file path"
        )
    return scheme


def is_postgres(url: str | Path) -> bool:
    """Whether ``url`` names a PostgreSQL store (StoreError for an unknown scheme)."""
    return _scheme(url) in _PG_SCHEMES


def sqlite_path(url: str | Path) -> Path | None:
    """The file of an SQLite store URL or path; None in memory and on PostgreSQL."""
    scheme = _scheme(url)
    if scheme in _PG_SCHEMES:
        return None
    if scheme is None:
        return None if url == ":memory:" else Path(url).expanduser()
    database = make_url(str(url)).database
    return None if database in (None, "", ":memory:") else Path(str(database)).expanduser()


def _raw_sqlite(conn: Connection) -> sqlite3.Connection:
    # Only called on SQLite engines, whose DBAPI connections are sqlite3's.
    return cast(sqlite3.Connection, conn.connection.dbapi_connection)


def _sqlite_database(path: Path | None) -> Database:
    lock_fd = None
    if path is None:
        engine = create_engine(
            "sqlite+pysqlite://",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
        display = "sqlite://:memory:"
    else:
        path = path.expanduser()
        _private_sqlite_files(path)
        lock_fd = in_use_lock(path, exclusive=False)
        engine = create_engine(
            URL.create("sqlite+pysqlite", database=str(path)),
            connect_args={
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            },
        )
        display = f"sqlite:///{path}"
    memory = path is None

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, see module doc
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                mode = _enable_wal(cursor)
                if mode is None or str(mode[0]).lower() != "wal":
                    raise StoreError(f"{display}: SQLite refused WAL mode (got {mode!r})")
            # FULL: a commit returns only after the WAL is fsync'd, so an acknowledged
            # job survives power loss, not just a crash of the process.
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    def _enable_wal(cursor: sqlite3.Cursor) -> Any:
        # Switching a new file to WAL needs a lock that SQLite does not wait for (the
        # busy handler is not consulted), so concurrent first opens can see "database
        # is locked"; retry for a while. Once the file is in WAL mode this is a no-op.
        for attempt in range(100):
            try:
                return cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 99:
                    raise
                time.sleep(0.05)
        return None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return Database(engine, display_url=display, memory=memory, path=path, lock_fd=lock_fd)


def _private_sqlite_files(path: Path) -> None:
    """The database file 0600 (its directory 0700 if made here) before SQLite opens it.

    SQLite creates ``-wal`` and ``-shm`` with the database file's mode, so a file made
    0600 first keeps all three private whatever the umask; existing files of ours that
    are looser are tightened, another user's are refused (see :mod:`qhpc.files`).
    """
    try:
        for companion in SQLITE_COMPANIONS:
            tighten_file(path.with_name(path.name + companion))
        if not path.exists():
            private_file(path)  # the embedded default's directory may not exist yet
    except OSError as error:
        raise StoreError(f"sqlite:///{path}: {error}") from error


def in_use_lock(path: Path, *, exclusive: bool) -> int:
    """A lock on the SQLite store ``path`` (an ``flock`` of ``<path>.lock``); its fd.

    Every open store holds it shared for as long as it is open; ``qhpc store
    restore`` takes it exclusively, so it never replaces a file a broker (or another
    qhpc command) has open, and no store opens while a restore runs. A separate file,
    not the database: closing any descriptor of the database would drop the POSIX
    locks SQLite holds on it in this process. StoreError when it is taken.
    """
    lock = path.with_name(path.name + LOCK_SUFFIX)
    try:
        fd = open_private(lock, os.O_RDWR | os.O_CREAT)
    except OSError as error:
        raise StoreError(f"sqlite:///{path}: {error}") from error
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        if exclusive:
            raise StoreError(
                f"the store at {path} is in use (a broker or another qhpc command has it "
                "open): stop the broker first"
            ) from None
        raise StoreError(
            f"the store at {path} is being restored (qhpc store restore holds {lock}); "
            "open it once the restore has finished"
        ) from None
    return fd


def _postgres_database(url: URL) -> Database:
    # SQLAlchemy's default driver for postgresql:// is psycopg2; qhpc depends on psycopg 3.
    url = url.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {"application_name": "qhpc"}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT
    engine = create_engine(
        url,
        connect_args=connect_args,
        pool_pre_ping=True,
        pool_size=8,
        max_overflow=8,
        pool_timeout=30,
    )
    return Database(engine, display_url=url.render_as_string(hide_password=True))
