"""Schema migrations: a numbered list applied in order, one transaction each.

The table ``schema_version`` holds one row per applied migration; the database's
version is the highest ``version`` in it (0 for an empty database). :func:`migrate`,
called by ``Store.open``, applies every migration above that version, each together
with its ``schema_version`` row in one transaction, so a crash leaves the database at
a clean version and the next open resumes. Both backends run DDL transactionally.

Concurrent openers are serialized: on SQLite by the write lock of ``BEGIN IMMEDIATE``,
on PostgreSQL by an advisory lock; each re-reads the version under the lock, so a
migration is never applied twice.

A database whose version is higher than the last migration here was written by a newer
qhpc; it is refused, since this code cannot know what the extra migrations changed.

Numbers may have gaps, and a lower number may land after a higher one: migrations are
written on parallel branches (4 may reach main before 3). Each migration is applied
once, by number, whether or not its predecessors are there yet, so a database that got
1, 2, 4 gets 3 when that lands. A migration that may land late must therefore not
depend on a higher-numbered one (new tables, as both 3 and 4 add, never do).

Adding a migration: append ``Migration(N + 1, "what", function)`` and change the
tables in ``schema.py`` to match. Migration 1 creates the tables from ``schema.py``,
so the first migration that alters a table must also freeze migration 1 (replace its
``create_all`` with a copy of the version-1 table definitions): a fresh database passes
through every step, and the test that migrates an empty database fails until then.
The same holds for every later table: migration 3 took the output columns out of
``programs``, so migration 2 creates the frozen version-2 ``programs`` below, and
migration 5 added ``jobs.purged_at``, so migration 1 creates the frozen version-1
``jobs``; migration 7 added ``sessions.pool``, so it creates the frozen ``sessions`` too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    insert,
    select,
    text,
)

from qhpc.store import schema
from qhpc.store.database import Database
from qhpc.store.errors import StoreError


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


# ``jobs`` and ``sessions`` as migration 1 created them (migration 5 added
# ``jobs.purged_at`` and its index, migration 7 ``jobs.pool`` and ``sessions.pool``).
_v1 = MetaData()
_V1_JOBS = Table(
    "jobs",
    _v1,
    Column("job_id", Text, primary_key=True),
    Column("username", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("centre", Text),
    Column("resource", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("finished_at", Double),
    Column("session_id", Text),
    Column("name", Text),
    Column("task_count", Integer, nullable=False),
    Index("ix_jobs_username", "username"),
    Index("ix_jobs_account", "account"),
    Index("ix_jobs_created_at", "created_at"),
)
_V1_SESSIONS = Table(
    "sessions",
    _v1,
    Column("session_id", Text, primary_key=True),
    Column("resource", Text, nullable=False),
    Column("username", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("centre", Text),
    Column("mode", Text, nullable=False),
    Column("opened_at", Double, nullable=False),
    Column("deadline", Double, nullable=False),
    Column("closed_at", Double),
    Column("slurm_job_id", Text),
)
_FROZEN_V1 = ("jobs", "sessions")


def _v1_initial(conn: Connection) -> None:
    # The other version-1 tables have not changed since, so their current definitions
    # are still the version-1 ones; tables added later are left to their migration.
    _V1_JOBS.create(conn)  # first: the others refer to it
    _V1_SESSIONS.create(conn)
    tables = [
        t
        for t in schema.metadata.sorted_tables
        if t.name in schema.V1_TABLES and t.name not in _FROZEN_V1
    ]
    schema.metadata.create_all(conn, tables=tables)


# ``programs`` as migration 2 created it; ``jobs`` only as far as its foreign key needs.
_v2 = MetaData()
Table("jobs", _v2, Column("job_id", Text, primary_key=True))
_V2_PROGRAMS = Table(
    "programs",
    _v2,
    Column("job_id", Text, ForeignKey("jobs.job_id"), primary_key=True),
    Column("source", Text),
    Column("entry_point", Text),
    Column("entry", Text, nullable=False),
    Column("args", Text, nullable=False),
    Column("timeout", Double, nullable=False),
    Column("max_iterations", BigInteger),
    Column("status", Text, nullable=False),
    Column("session_id", Text),
    Column("message", Text),
    Column("return_value", Text),
    Column("timings", Text),
    Column("progress", Text),
    Column("iterations", BigInteger, nullable=False),
    Column("qpu_calls", BigInteger, nullable=False),
    Column("stdout", Text, nullable=False),
    Column("stderr", Text, nullable=False),
    Column("started_at", Double),
    Column("finished_at", Double),
    Index("ix_programs_status", "status"),
)


def _v2_programs(conn: Connection) -> None:
    _V2_PROGRAMS.create(conn)


def _v3_program_output(conn: Connection) -> None:
    # Output moves from two text columns of ``programs`` (written once, when a program
    # ended) to byte rows written while it runs; what finished programs printed is kept.
    schema.program_output.create(conn)
    old = _V2_PROGRAMS.c
    printed = (
        conn.execute(select(old.job_id).where((old.stdout != "") | (old.stderr != "")))
        .scalars()
        .all()
    )
    chunk = schema.OUTPUT_CHUNK
    for job_id in printed:  # one program's text in memory at a time
        streams = conn.execute(select(old.stdout, old.stderr).where(old.job_id == job_id)).one()
        for stream, text_ in zip(("stdout", "stderr"), streams, strict=True):
            data = text_.encode("utf-8")
            pieces = [
                {"job_id": job_id, "stream": stream, "chunk_offset": at,
                 "data": data[at : at + chunk]}
                for at in range(0, len(data), chunk)
            ]  # fmt: skip
            if pieces:
                conn.execute(insert(schema.program_output), pieces)
    # DROP COLUMN needs SQLite 3.35, which the store's RETURNING needs already.
    conn.execute(text("ALTER TABLE programs DROP COLUMN stdout"))
    conn.execute(text("ALTER TABLE programs DROP COLUMN stderr"))


def _v4_idempotency_keys(conn: Connection) -> None:
    schema.idempotency_keys.create(conn)


def _add_column(conn: Connection, table: Table, name: str) -> None:
    # A nullable column without a default: no table rewrite on either backend.
    column = table.c[name]
    kind = column.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


def _v5_purged_jobs(conn: Connection) -> None:
    _add_column(conn, schema.jobs, "purged_at")
    next(i for i in schema.jobs.indexes if i.name == "ix_jobs_purge").create(conn)


def _v6_drains(conn: Connection) -> None:
    schema.drains.create(conn)


def _v7_pools(conn: Connection) -> None:
    # Rows from before have no pool: they named their resource themselves.
    _add_column(conn, schema.jobs, "pool")
    _add_column(conn, schema.sessions, "pool")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs, tasks, sessions, reservations, accounts, tokens, usage", _v1_initial),
    Migration(2, "programs of hybrid jobs", _v2_programs),
    Migration(3, "program output written while programs run", _v3_program_output),
    Migration(4, "idempotency keys of submissions", _v4_idempotency_keys),
    Migration(5, "when a job's results, output and sources were purged", _v5_purged_jobs),
    Migration(6, "operator drains of resources", _v6_drains),
    Migration(7, "the pool a job or session was routed from", _v7_pools),
)

LATEST_VERSION = MIGRATIONS[-1].version


def _check_numbering() -> None:
    previous = 0
    for migration in MIGRATIONS:
        if migration.version <= previous:
            raise AssertionError(f"migration {migration.version} is listed after {previous}")
        previous = migration.version


_check_numbering()


def current_version(conn: Connection) -> int:
    """The database's schema version; 0 when it has no ``schema_version`` table."""
    if not conn.dialect.has_table(conn, schema.schema_version.name):
        return 0
    version = conn.execute(select(func.max(schema.schema_version.c.version))).scalar()
    return int(version) if version is not None else 0


def applied_versions(conn: Connection) -> set[int]:
    """The numbers of the migrations applied to the database (the table must exist)."""
    return {int(v) for v in conn.execute(select(schema.schema_version.c.version)).scalars()}


def migrate(
    db: Database,
    migrations: tuple[Migration, ...] = MIGRATIONS,
    *,
    clock: Callable[[], float] = time.time,
) -> int:
    """Applies every one of ``migrations`` the database lacks; returns the last version."""
    latest = migrations[-1].version
    known = {m.version for m in migrations}
    while True:
        with db.tx(write=True, lock="qhpc-migrate") as conn:
            schema.schema_version.create(conn, checkfirst=True)
            applied = applied_versions(conn)
            unknown = applied - known
            if unknown:
                what = "newer than" if max(unknown) > latest else "unknown to"
                raise StoreError(
                    f"the store at {db.display_url} has schema version {max(unknown)}, "
                    f"{what} the {latest} this qhpc knows: upgrade qhpc to use it"
                )
            pending = [m for m in migrations if m.version not in applied]
            if not pending:
                return latest
            step = pending[0]
            step.apply(conn)
            conn.execute(
                insert(schema.schema_version).values(
                    version=step.version, description=step.description, applied_at=clock()
                )
            )
