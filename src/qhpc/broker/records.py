"""The control plane's records as the API reads and changes them, through the broker.

Reservations and shares are policy inputs: a write that bypassed the broker reached
the scheduler only when its input cache expired (inputs.py). Every change here goes
to the store and then invalidates the cache at once, so a new reservation or share
counts at the very next scheduling decision. Reads are plain store reads, gathered
here so that ``qhpc.api`` never holds the store itself (ARCHITECTURE: every mutation
goes through a broker method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qhpc.store import (
    AccountRecord,
    JobRecord,
    ReservationRecord,
    SessionRecord,
    Store,
    TokenRecord,
    UsageRecord,
)


class Records:
    """Accounts, reservations, sessions, jobs, tokens and usage, for the API."""

    def __init__(self, store: Store, invalidate: Callable[[], None]) -> None:
        self._store = store
        self._invalidate = invalidate

    # -- changes: each tells the scheduler at once --------------------------------------
    def create_reservation(self, record: ReservationRecord) -> None:
        """Book a window (an overlapping one is a ConflictError)."""
        self._store.create_reservation(record)
        self._invalidate()

    def delete_reservation(self, reservation_id: str) -> None:
        self._store.delete_reservation(reservation_id)
        self._invalidate()

    def upsert_account(self, record: AccountRecord) -> None:
        """Create an account or set its shares and centre."""
        self._store.upsert_account(record)
        self._invalidate()

    # -- reads ------------------------------------------------------------------------------
    def reservations(
        self, resource: str | None = None, ending_after: float | None = None
    ) -> list[ReservationRecord]:
        return self._store.list_reservations(resource=resource, ending_after=ending_after)

    def accounts(self) -> list[AccountRecord]:
        return self._store.list_accounts()

    def account(self, name: str) -> AccountRecord:
        return self._store.get_account(name)

    def session(self, session_id: str) -> SessionRecord:
        return self._store.get_session(session_id)

    def tag_session(self, session_id: str, slurm_job_id: str) -> SessionRecord:
        """Tie an open session to the Slurm job that will use it (a federated centre's
        session, opened before its job was submitted); the session as it is now."""
        self._store.tag_session(session_id, slurm_job_id)
        self._invalidate()
        return self._store.get_session(session_id)

    def sessions(self, open_only: bool = False, resource: str | None = None) -> list[SessionRecord]:
        return self._store.list_sessions(open_only=open_only, resource=resource)

    def jobs(self, **filters: Any) -> list[JobRecord]:
        """Jobs newest first (``user``, ``centre``, ``state``, ``resource``, ``limit``,
        ``offset``, as the store takes them)."""
        return self._store.list_jobs(**filters)

    def tokens(
        self, subject: str | None = None, include_revoked: bool = False
    ) -> list[TokenRecord]:
        return self._store.list_tokens(subject=subject, include_revoked=include_revoked)

    def usage(self, **filters: Any) -> list[UsageRecord]:
        """Usage records in [since, until) (``user``, ``centre`` filters)."""
        return self._store.usage(**filters)

    def usage_rollup(
        self, group_by: str, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        return self._store.usage_rollup(group_by, since=since, until=until)
