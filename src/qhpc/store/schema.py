"""The tables, as the current code reads and writes them (SQLAlchemy Core).

Column names follow the record fields except where a field name is an SQL keyword
(``user``, ``index``, ``end``): those are renamed once, in ``_RENAMES``, and
:func:`to_row`/:func:`from_row` translate. Types are portable: ``Text`` ids, ``Double``
times, ``LargeBinary`` payloads (BLOB / BYTEA).

Migration 1 creates the tables named in ``V1_TABLES``, migration 2 ``programs``,
migration 3 ``program_output`` (and takes the output columns out of ``programs``),
migration 4 ``idempotency_keys``, migration 5 adds ``jobs.purged_at``, migration 6
``drains``, migration 7 ``jobs.pool`` and ``sessions.pool`` (see ``migrations.py`` for
the rule once a later migration changes a table).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", Double, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
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
    # When its results, output and sources were purged (retention); None while kept.
    Column("purged_at", Double),
    # The pool it was submitted to (resource: the member chosen); None: no pool.
    Column("pool", Text),
    Index("ix_jobs_username", "username"),
    Index("ix_jobs_account", "account"),
    Index("ix_jobs_created_at", "created_at"),
    # The purge's query: jobs not purged yet that ended before a cutoff, oldest first.
    Index("ix_jobs_purge", "purged_at", "finished_at"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Text, primary_key=True),
    Column("job_id", Text, ForeignKey("jobs.job_id"), nullable=False),
    Column("resource", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("payload_kind", Text, nullable=False),
    Column("submitted_at", Double, nullable=False),
    Column("started_at", Double),
    Column("finished_at", Double),
    Column("resource_task_id", Text),
    Column("error", Text),
    Column("attempts", Integer, nullable=False),
    Column("session_id", Text),
    Column("account", Text, nullable=False),
    Column("username", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("estimated_seconds", Double, nullable=False),
    # Kept out of TaskRecord so that scans of queued work do not drag results along.
    Column("result", LargeBinary),
    # Also the index behind tasks_of_job and "tasks of job X" lookups (job_id is its prefix).
    UniqueConstraint("job_id", "idx", name="uq_tasks_job_idx"),
    # The scheduler's query: queued tasks of a resource, oldest first.
    Index("ix_tasks_state_resource_submitted", "state", "resource", "submitted_at"),
)

sessions = Table(
    "sessions",
    metadata,
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
    # The pool it was opened on (resource: the member chosen); None: no pool.
    Column("pool", Text),
)

reservations = Table(
    "reservations",
    metadata,
    Column("reservation_id", Text, primary_key=True),
    Column("resource", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("starts_at", Double, nullable=False),
    Column("ends_at", Double, nullable=False),
    Column("allow_backfill", Boolean, nullable=False),
    Column("created_by", Text, nullable=False),
    Index("ix_reservations_resource_starts", "resource", "starts_at"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("name", Text, primary_key=True),
    Column("shares", Double, nullable=False),
    Column("centre", Text),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_id", Text, primary_key=True),
    Column("token_hash", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("account", Text),
    Column("centre", Text),
    Column("session_id", Text),
    Column("resource", Text),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double),
    Column("revoked_at", Double),
    Index("ux_tokens_token_hash", "token_hash", unique=True),
    Index("ix_tokens_session_id", "session_id"),
)

usage = Table(
    "usage",
    metadata,
    # The primary key is what makes booking exactly-once: a second row for the same
    # task violates it even if two writers got past every other check.
    Column("task_id", Text, primary_key=True),
    Column("job_id", Text, nullable=False),
    Column("username", Text, nullable=False),
    Column("account", Text, nullable=False),
    Column("centre", Text),
    Column("resource", Text, nullable=False),
    Column("session_id", Text),
    Column("qpu_seconds", Double, nullable=False),
    Column("shots", BigInteger, nullable=False),
    Column("circuits", BigInteger, nullable=False),
    Column("finished_at", Double, nullable=False),
    Index("ix_usage_account", "account"),
    Index("ix_usage_username", "username"),
    Index("ix_usage_finished_at", "finished_at"),
)

programs = Table(
    "programs",
    metadata,
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
    Column("started_at", Double),
    Column("finished_at", Double),
    Index("ix_programs_status", "status"),
)

# A program's stdout and stderr as raw bytes, in pieces of OUTPUT_CHUNK bytes keyed by
# their byte offset in the stream: appending rewrites at most the last piece, and a
# read from an offset fetches only the pieces from there on.
program_output = Table(
    "program_output",
    metadata,
    Column("job_id", Text, ForeignKey("programs.job_id"), primary_key=True),
    Column("stream", Text, primary_key=True),
    Column("chunk_offset", BigInteger, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)
#: bytes per row of ``program_output`` (every row but a stream's last is full)
OUTPUT_CHUNK = 64 << 10

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # Scoped per principal: one tenant's key never meets another's. Stored in the
    # transaction that stores its job, so a job is never without its key or vice versa.
    Column("scope", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("job_id", Text, ForeignKey("jobs.job_id"), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index("ix_idempotency_keys_expires_at", "expires_at"),
)

drains = Table(
    "drains",
    metadata,
    # One row per drained resource; resuming deletes it. Kept in the store so a
    # drain outlives a broker restart (an operator's decision is not in-memory state).
    Column("resource", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("since", Double, nullable=False),
    Column("until", Double, nullable=True),
    Column("drained_by", Text, nullable=False),
)

#: tables migration 1 created; later tables come with their own migration
V1_TABLES: tuple[str, ...] = (
    "jobs", "tasks", "sessions", "reservations", "accounts", "tokens", "usage",
)  # fmt: skip

# Record field -> column, for fields whose names are SQL keywords.
_RENAMES: dict[str, str] = {
    "user": "username",
    "index": "idx",
    "start": "starts_at",
    "end": "ends_at",
}

R = TypeVar("R")


def column_of(field: str) -> str:
    return _RENAMES.get(field, field)


def to_row(record: object) -> dict[str, Any]:
    """The column values of a record, refusing text that a backend cannot hold.

    PostgreSQL ``text`` cannot contain NUL, and neither backend takes strings that are
    not valid UTF-8 (lone surrogates). Checking here makes both backends refuse the
    same inputs, with one error type, instead of SQLite storing what PostgreSQL rejects.
    """
    row: dict[str, Any] = {}
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError(f"{f.name} contains a NUL character, which cannot be stored")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"{f.name} is not valid UTF-8 text: {error}") from None
        row[column_of(f.name)] = value
    return row


def from_row(cls: type[R], row: Row[Any]) -> R:
    """Builds a record from a result row (extra columns are ignored)."""
    mapping = row._mapping
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        value = mapping[column_of(f.name)]
        # Some drivers hand back memoryview for binary columns; records hold bytes.
        if isinstance(value, memoryview):
            value = value.tobytes()
        values[f.name] = value
    return cls(**values)
