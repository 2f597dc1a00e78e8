"""Store methods for usage booked outside a task (a mixin of :class:`qhpc.store.Store`).

Tasks book their usage when they end (``Store.finish_task``). Work that reaches a QPU
without being a qhpc task — a job a Slurm job submits to the vendor through the
broker's vendor proxy — is booked here instead, one usage row per vendor job, keyed
like a task (the primary key keeps it exactly once) and charged to the session's job,
so ``GET /v1/accounting`` and Slurm's AdminComment count it like any other usage.
Its QPU seconds may become known later than the row (the vendor reports them once the
job ran): :meth:`UsageMixin.raise_usage` raises them, never lowers them.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import insert, select, update

from qhpc.store import schema
from qhpc.store.database import Database
from qhpc.store.errors import ConflictError
from qhpc.store.records import UsageRecord

_u = schema.usage


class UsageMixin:
    _db: Database

    def book_usage(self, record: UsageRecord) -> None:
        """Book ``record``; ConflictError if its ``task_id`` is booked already."""
        # A concurrent writer past the check still meets the primary key (the database
        # layer turns that IntegrityError into a ConflictError too).
        with self._db.tx(write=True) as conn:
            if conn.execute(select(_u.c.task_id).where(_u.c.task_id == record.task_id)).first():
                raise ConflictError(f"usage of {record.task_id!r} is booked already")
            conn.execute(insert(_u).values(schema.to_row(record)))

    def usage_record(self, task_id: str) -> UsageRecord | None:
        """The usage booked under ``task_id``; None if none is."""
        with self._db.tx() as conn:
            row = conn.execute(select(_u).where(_u.c.task_id == task_id)).first()
        return None if row is None else schema.from_row(UsageRecord, row)

    def raise_usage(self, task_id: str, qpu_seconds: float) -> tuple[UsageRecord, float] | None:
        """Raise the QPU seconds booked under ``task_id`` to ``qpu_seconds`` if they are
        lower; the row as it is now and by how much it rose (0: unchanged). None if
        nothing is booked under ``task_id``. Reporting the same figure again changes
        nothing, so a client reading a job's metrics twice is charged once."""
        if not qpu_seconds >= 0:
            raise ValueError(f"qpu_seconds must be non-negative, got {qpu_seconds!r}")
        with self._db.tx(write=True) as conn:
            row = conn.execute(select(_u).where(_u.c.task_id == task_id).with_for_update()).first()
            if row is None:
                return None
            record = schema.from_row(UsageRecord, row)
            if qpu_seconds <= record.qpu_seconds:
                return record, 0.0
            conn.execute(update(_u).where(_u.c.task_id == task_id).values(qpu_seconds=qpu_seconds))
        return replace(record, qpu_seconds=qpu_seconds), qpu_seconds - record.qpu_seconds
