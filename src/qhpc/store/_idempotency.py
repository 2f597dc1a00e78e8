"""Store methods for idempotency keys of submissions (a mixin of :class:`qhpc.store.Store`).

A key row is written only by :meth:`Store.create_job` / :meth:`Store.create_program`,
in the transaction that stores its job: a crash between the two cannot leave a job
without its key. Two concurrent first uses of one key both try to insert the row; the
primary key ``(scope, key)`` lets exactly one commit, the other gets ConflictError
and nothing of its job is stored.

Expiry is lazy: an expired row is treated as absent by :meth:`find_idempotency`,
replaced when its key is used again, and removed in bulk by
:meth:`purge_idempotency`, which the broker calls now and then.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select

from qhpc.store import schema
from qhpc.store.database import Database
from qhpc.store.records import IdempotencyRecord

_k = schema.idempotency_keys


class IdempotencyMixin:
    _db: Database

    def find_idempotency(self, scope: str, key: str, now: float) -> IdempotencyRecord | None:
        """The live (not expired at ``now``) record of ``key`` for ``scope``, if any."""
        with self._db.tx() as conn:
            row = conn.execute(
                select(_k).where(_k.c.scope == scope, _k.c.key == key, _k.c.expires_at > now)
            ).one_or_none()
        return None if row is None else schema.from_row(IdempotencyRecord, row)

    def purge_idempotency(self, now: float) -> int:
        """Deletes the records expired at ``now``; returns how many."""
        with self._db.tx(write=True) as conn:
            return int(conn.execute(delete(_k).where(_k.c.expires_at <= now)).rowcount)


def claim_key(conn: Connection, record: IdempotencyRecord) -> None:
    """Inserts ``record`` in the caller's transaction, after its job row.

    An expired row of the same key is replaced; a live one makes the insert fail
    (ConflictError from the transaction), which rolls the whole submission back.
    """
    if not record.created_at < record.expires_at:
        raise ValueError(f"idempotency key {record.key!r} expires before it is created")
    conn.execute(
        delete(_k).where(
            _k.c.scope == record.scope,
            _k.c.key == record.key,
            _k.c.expires_at <= record.created_at,
        )
    )
    conn.execute(insert(_k).values(schema.to_row(record)))
