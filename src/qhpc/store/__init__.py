"""Persistent state of the broker: one interface, SQLite or PostgreSQL underneath.

``Store.open("state.db")`` (embedded SQLite) or
``Store.open("postgresql://user:pw@host/db")`` (production). See ``store.py`` for the
durability guarantees of each backend, ``migrations.py`` for schema versions,
``_maintenance.py`` for retention (what is purged, what accounting keeps) and
``backup.py`` for backups of an SQLite store.
"""

from __future__ import annotations

from qhpc.store._maintenance import PurgeReport
from qhpc.store.backup import (
    BackupReport,
    NotSqliteError,
    backup,
    pg_dump_command,
    pg_restore_command,
    restore,
)
from qhpc.store.committer import CommitterProcess, task_is_stored
from qhpc.store.database import is_postgres, sqlite_path
from qhpc.store.errors import ConflictError, NotFoundError, PurgedError, StoreError
from qhpc.store.migrations import LATEST_VERSION
from qhpc.store.records import (
    FINAL_STATES,
    JOB_KINDS,
    JOB_STATES,
    OUTPUT_STREAMS,
    PAYLOAD_KINDS,
    PROGRAM_STATUSES,
    ROLLUP_GROUPS,
    TASK_STATES,
    TOKEN_ROLES,
    AccountRecord,
    DrainRecord,
    IdempotencyRecord,
    JobRecord,
    OutputPiece,
    ProgramRecord,
    ReservationRecord,
    SessionRecord,
    TaskOutcome,
    TaskRecord,
    TokenRecord,
    UsageRecord,
)
from qhpc.store.store import Store

__all__ = [
    "FINAL_STATES",
    "JOB_KINDS",
    "JOB_STATES",
    "LATEST_VERSION",
    "OUTPUT_STREAMS",
    "PAYLOAD_KINDS",
    "PROGRAM_STATUSES",
    "ROLLUP_GROUPS",
    "TASK_STATES",
    "TOKEN_ROLES",
    "AccountRecord",
    "BackupReport",
    "CommitterProcess",
    "ConflictError",
    "DrainRecord",
    "IdempotencyRecord",
    "JobRecord",
    "NotFoundError",
    "NotSqliteError",
    "OutputPiece",
    "ProgramRecord",
    "PurgeReport",
    "PurgedError",
    "ReservationRecord",
    "SessionRecord",
    "Store",
    "StoreError",
    "TaskOutcome",
    "TaskRecord",
    "TokenRecord",
    "UsageRecord",
    "backup",
    "is_postgres",
    "pg_dump_command",
    "pg_restore_command",
    "restore",
    "sqlite_path",
    "task_is_stored",
]
