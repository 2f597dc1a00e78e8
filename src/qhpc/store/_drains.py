"""Store methods for operator drains (a mixin of :class:`qhpc.store.Store`).

A drain is one row per resource, replaced by a new drain of the same resource and
deleted by a resume. An expired drain (``until`` in the past) is left for the broker
to notice and delete: the store never reads a clock.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from qhpc.store import schema
from qhpc.store.database import Database
from qhpc.store.records import DrainRecord

_d = schema.drains


class DrainsMixin:
    _db: Database

    def set_drain(self, drain: DrainRecord) -> None:
        """Drains ``drain.resource`` (replacing a drain it already has)."""
        with self._db.tx(write=True) as conn:
            conn.execute(delete(_d).where(_d.c.resource == drain.resource))
            conn.execute(insert(_d).values(schema.to_row(drain)))

    def clear_drain(self, resource: str) -> DrainRecord | None:
        """Ends the drain of ``resource``; the drain it had, or None if it had none."""
        with self._db.tx(write=True) as conn:
            row = conn.execute(select(_d).where(_d.c.resource == resource)).one_or_none()
            if row is None:
                return None
            conn.execute(delete(_d).where(_d.c.resource == resource))
        return schema.from_row(DrainRecord, row)

    def list_drains(self) -> list[DrainRecord]:
        with self._db.tx() as conn:
            rows = conn.execute(select(_d).order_by(_d.c.resource)).all()
        return [schema.from_row(DrainRecord, row) for row in rows]
