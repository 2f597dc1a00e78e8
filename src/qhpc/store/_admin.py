"""Store methods for sessions, reservations, accounts, tokens and accounting.

A mixin of :class:`qhpc.store.Store`, split off only to keep modules short; see
``store.py`` for the transaction and durability rules, which apply here unchanged.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from qhpc.store import schema
from qhpc.store.database import Database
from qhpc.store.errors import ConflictError, NotFoundError
from qhpc.store.records import (
    ROLLUP_GROUPS,
    TOKEN_ROLES,
    AccountRecord,
    ReservationRecord,
    SessionRecord,
    TokenRecord,
    UsageRecord,
)

_ROLLUP_COLUMNS = {
    "job": schema.usage.c.job_id,
    "user": schema.usage.c.username,
    "account": schema.usage.c.account,
    "centre": schema.usage.c.centre,
    "resource": schema.usage.c.resource,
}
assert tuple(_ROLLUP_COLUMNS) == ROLLUP_GROUPS


class AdminMixin:
    _db: Database

    # -- sessions ---------------------------------------------------------------------

    def create_session(self, session: SessionRecord) -> None:
        """Stores a new session (ConflictError if the id exists)."""
        row = schema.to_row(session)
        with self._db.tx(write=True) as conn:
            conn.execute(insert(schema.sessions).values(row))

    def get_session(self, session_id: str) -> SessionRecord:
        with self._db.tx() as conn:
            row = conn.execute(
                select(schema.sessions).where(schema.sessions.c.session_id == session_id)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no session {session_id!r}")
        return schema.from_row(SessionRecord, row)

    def close_session(self, session_id: str, closed_at: float) -> None:
        """Marks a session closed; ConflictError if it already was."""
        s = schema.sessions
        with self._db.tx(write=True) as conn:
            done = conn.execute(
                update(s)
                .where(s.c.session_id == session_id, s.c.closed_at.is_(None))
                .values(closed_at=closed_at)
            ).rowcount
            if done == 0:
                exists = conn.execute(
                    select(s.c.closed_at).where(s.c.session_id == session_id)
                ).one_or_none()
                if exists is None:
                    raise NotFoundError(f"no session {session_id!r}")
                raise ConflictError(f"session {session_id!r} was closed at {exists[0]}")

    def tag_session(self, session_id: str, slurm_job_id: str) -> None:
        """Ties an open session with no Slurm job yet to ``slurm_job_id``; ConflictError if
        it is closed or already tied (a session belongs to one job, for good)."""
        s = schema.sessions
        with self._db.tx(write=True) as conn:
            done = conn.execute(
                update(s)
                .where(
                    s.c.session_id == session_id, s.c.closed_at.is_(None),
                    s.c.slurm_job_id.is_(None),
                )
                .values(slurm_job_id=slurm_job_id)
            ).rowcount  # fmt: skip
            if done == 0:
                found = conn.execute(
                    select(s.c.closed_at, s.c.slurm_job_id).where(s.c.session_id == session_id)
                ).one_or_none()
                if found is None:
                    raise NotFoundError(f"no session {session_id!r}")
                why = "is closed" if found[0] is not None else f"belongs to Slurm job {found[1]}"
                raise ConflictError(f"session {session_id!r} {why}")

    def list_sessions(
        self, *, open_only: bool = True, resource: str | None = None
    ) -> list[SessionRecord]:
        """Sessions, oldest first; only those not closed unless ``open_only=False``."""
        s = schema.sessions
        query = select(s).order_by(s.c.opened_at, s.c.session_id)
        if open_only:
            query = query.where(s.c.closed_at.is_(None))
        if resource is not None:
            query = query.where(s.c.resource == resource)
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        return [schema.from_row(SessionRecord, r) for r in rows]

    # -- reservations -----------------------------------------------------------------

    def create_reservation(self, reservation: ReservationRecord) -> None:
        """Stores a reservation of ``[start, end)``.

        ConflictError if it overlaps another reservation of the same resource
        (touching ends do not overlap).
        """
        if not reservation.start < reservation.end:
            raise ValueError(f"reservation must start before it ends: {reservation}")
        r = schema.reservations
        row = schema.to_row(reservation)
        # The advisory lock (PostgreSQL) / write lock (SQLite) makes check-then-insert
        # atomic: two overlapping requests cannot both pass the check.
        with self._db.tx(write=True, lock="qhpc-reservations") as conn:
            clash = conn.execute(
                select(r.c.reservation_id)
                .where(
                    r.c.resource == reservation.resource,
                    r.c.starts_at < reservation.end,
                    r.c.ends_at > reservation.start,
                )
                .limit(1)
            ).scalar()
            if clash is not None:
                raise ConflictError(
                    f"reservation {reservation.reservation_id!r} overlaps {clash!r} on "
                    f"{reservation.resource!r}"
                )
            conn.execute(insert(r).values(row))

    def list_reservations(
        self, resource: str | None = None, ending_after: float | None = None
    ) -> list[ReservationRecord]:
        """Reservations by start time; ``ending_after`` drops those already over."""
        r = schema.reservations
        query = select(r).order_by(r.c.starts_at, r.c.reservation_id)
        if resource is not None:
            query = query.where(r.c.resource == resource)
        if ending_after is not None:
            query = query.where(r.c.ends_at > ending_after)
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        return [schema.from_row(ReservationRecord, row) for row in rows]

    def delete_reservation(self, reservation_id: str) -> None:
        r = schema.reservations
        with self._db.tx(write=True) as conn:
            done = conn.execute(delete(r).where(r.c.reservation_id == reservation_id)).rowcount
        if done == 0:
            raise NotFoundError(f"no reservation {reservation_id!r}")

    # -- accounts ---------------------------------------------------------------------

    def upsert_account(self, account: AccountRecord) -> None:
        """Creates the account or replaces its shares and centre."""
        row = schema.to_row(account)
        a = schema.accounts
        # Both dialects spell the upsert the same way; a portable update-else-insert
        # would race with a concurrent insert on PostgreSQL.
        dialect_insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        stmt = dialect_insert(a).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[a.c.name],
            set_={"shares": stmt.excluded.shares, "centre": stmt.excluded.centre},
        )
        with self._db.tx(write=True) as conn:
            conn.execute(stmt)

    def get_account(self, name: str) -> AccountRecord:
        with self._db.tx() as conn:
            row = conn.execute(
                select(schema.accounts).where(schema.accounts.c.name == name)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no account {name!r}")
        return schema.from_row(AccountRecord, row)

    def list_accounts(self) -> list[AccountRecord]:
        with self._db.tx() as conn:
            rows = conn.execute(select(schema.accounts).order_by(schema.accounts.c.name)).all()
        return [schema.from_row(AccountRecord, r) for r in rows]

    # -- tokens -----------------------------------------------------------------------

    def create_token(self, token: TokenRecord) -> None:
        """Stores a token (ConflictError if its id or hash exists)."""
        if token.role not in TOKEN_ROLES:
            raise ValueError(f"unknown token role {token.role!r}; one of {TOKEN_ROLES}")
        row = schema.to_row(token)
        with self._db.tx(write=True) as conn:
            conn.execute(insert(schema.tokens).values(row))

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, revoked or expired ones included: the caller judges."""
        t = schema.tokens
        with self._db.tx() as conn:
            row = conn.execute(select(t).where(t.c.token_hash == token_hash)).one_or_none()
        return None if row is None else schema.from_row(TokenRecord, row)

    def revoke_token(self, token_id: str, at: float) -> None:
        """Revokes a token; revoking it again keeps the first revocation time."""
        t = schema.tokens
        with self._db.tx(write=True) as conn:
            found = conn.execute(select(t.c.revoked_at).where(t.c.token_id == token_id)).first()
            if found is None:
                raise NotFoundError(f"no token {token_id!r}")
            conn.execute(
                update(t)
                .where(t.c.token_id == token_id, t.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )

    def revoke_session_tokens(self, session_id: str, at: float) -> list[str]:
        """Revokes every unrevoked token of a session; returns their ids."""
        t = schema.tokens
        with self._db.tx(write=True) as conn:
            ids = conn.execute(
                update(t)
                .where(t.c.session_id == session_id, t.c.revoked_at.is_(None))
                .values(revoked_at=at)
                .returning(t.c.token_id)
            ).scalars()
            return sorted(ids)

    def list_tokens(
        self, *, subject: str | None = None, include_revoked: bool = True
    ) -> list[TokenRecord]:
        """Tokens, oldest first."""
        t = schema.tokens
        query = select(t).order_by(t.c.created_at, t.c.token_id)
        if subject is not None:
            query = query.where(t.c.subject == subject)
        if not include_revoked:
            query = query.where(t.c.revoked_at.is_(None))
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        return [schema.from_row(TokenRecord, r) for r in rows]

    # -- accounting -------------------------------------------------------------------

    def usage(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        account: str | None = None,
        centre: str | None = None,
        resource: str | None = None,
    ) -> list[UsageRecord]:
        """Usage rows finished in ``[since, until)``, matching every filter given."""
        u = schema.usage
        conditions = _usage_window(since, until)
        for column, value in (
            (u.c.username, user),
            (u.c.account, account),
            (u.c.centre, centre),
            (u.c.resource, resource),
        ):
            if value is not None:
                conditions.append(column == value)
        query = select(u).where(*conditions).order_by(u.c.finished_at, u.c.task_id)
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        return [schema.from_row(UsageRecord, r) for r in rows]

    def usage_rollup(
        self, group_by: str, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Totals per ``group_by`` value, finished in ``[since, until)``, by group.

        Each dict has keys ``group`` (``None`` for tasks without a centre), ``tasks``,
        ``qpu_seconds``, ``shots`` and ``circuits``.
        """
        if group_by not in _ROLLUP_COLUMNS:
            raise ValueError(f"cannot group usage by {group_by!r}; one of {ROLLUP_GROUPS}")
        u = schema.usage
        key = _ROLLUP_COLUMNS[group_by]
        query = (
            select(
                key.label("grp"),
                func.count().label("tasks"),
                func.sum(u.c.qpu_seconds).label("qpu_seconds"),
                func.sum(u.c.shots).label("shots"),
                func.sum(u.c.circuits).label("circuits"),
            )
            .where(*_usage_window(since, until))
            .group_by(key)
            # NULLS LAST spelled out: the backends disagree on where NULL sorts by default.
            .order_by(key.asc().nulls_last())
        )
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        # PostgreSQL sums BIGINT into NUMERIC (Decimal); report plain ints and floats.
        return [
            {
                "group": r.grp,
                "tasks": int(r.tasks),
                "qpu_seconds": float(r.qpu_seconds),
                "shots": int(r.shots),
                "circuits": int(r.circuits),
            }
            for r in rows
        ]


def _usage_window(since: float | None, until: float | None) -> list[ColumnElement[bool]]:
    u = schema.usage
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(u.c.finished_at >= since)
    if until is not None:
        conditions.append(u.c.finished_at < until)
    return conditions
