"""What the scheduling policies read besides the queue: sessions, reservations, shares.

A policy decides on a :class:`~qhpc.broker.scheduler.SchedulingView`: the queue of one
resource plus the open sessions, reservations, fair-share usage and shares. Reading
the last three from the store costs three queries — more than the decision itself on
the hot path — so :class:`PolicyInputs` keeps them for at most ``INPUT_REFRESH``
seconds. The broker's own writes (a session opened, a reservation or share changed
through it) call :meth:`PolicyInputs.invalidate`, so they count at the very next
decision; only writes that bypass the broker wait out the refresh.

Not thread-safe on its own: callers hold the broker's lock (the executors and the
admission code all do), which is also what orders a decision after an invalidation.
"""

from __future__ import annotations

from collections.abc import Callable

from qhpc.broker.scheduler import (
    QueuedTask,
    Reservation,
    SchedulingView,
    SessionLease,
    SessionMode,
    SessionRhythms,
)
from qhpc.broker.usage import UsageTracker
from qhpc.store import Store

#: seconds a read of sessions, reservations and shares serves scheduling decisions;
#: the broker's own changes invalidate it at once, outside writes show up within this
INPUT_REFRESH = 0.5

Inputs = tuple[list[SessionLease], list[Reservation], dict[str, float]]


class PolicyInputs:
    """The cached policy inputs and the views built from them (caller holds the lock)."""

    def __init__(self, store: Store, usage: UsageTracker, rhythms: SessionRhythms) -> None:
        self.store = store
        self.usage = usage
        self.rhythms = rhythms
        self._cached: tuple[float, Inputs] | None = None
        #: called after each invalidation (the broker wakes its executors)
        self.on_change: Callable[[], None] = lambda: None

    def invalidate(self) -> None:
        """Re-read sessions, reservations and shares at the next scheduling decision."""
        self._cached = None
        self.on_change()

    def read(self, now: float) -> Inputs:
        """Open sessions, reservations ending after ``now``, and every account's shares."""
        cached = self._cached
        if cached is not None and now - cached[0] < INPUT_REFRESH:
            return cached[1]
        sessions = [
            SessionLease(
                session_id=s.session_id, resource=s.resource, account=s.account, user=s.user,
                opened_at=s.opened_at, deadline=s.deadline, mode=SessionMode(s.mode),
            )
            for s in self.store.list_sessions(open_only=True)
        ]  # fmt: skip
        reservations = [
            Reservation(
                reservation_id=r.reservation_id, resource=r.resource, account=r.account,
                start=r.start, end=r.end, allow_backfill=r.allow_backfill,
            )
            for r in self.store.list_reservations(ending_after=now)
        ]  # fmt: skip
        shares = {a.name: a.shares for a in self.store.list_accounts()}
        inputs = (sessions, reservations, shares)
        self._cached = (now, inputs)
        return inputs

    def view(
        self,
        resource: str,
        now: float,
        queue: list[QueuedTask],
        last_batch_start: float | None = None,
    ) -> SchedulingView:
        """What a policy sees when it picks the next task of ``resource`` from ``queue``."""
        sessions, reservations, all_shares = self.read(now)
        usage = self.usage.snapshot(now)
        # Shares of every account that counts in the fair-share normalisation:
        # those with work queued and those with usage.
        accounts = {t.account for t in queue} | {a for a, u in usage.items() if u > 0}
        shares = {a: v for a, v in all_shares.items() if a in accounts}
        return SchedulingView(
            now=now, resource=resource, queue=queue,
            sessions=[x for x in sessions if x.resource == resource],
            reservations=[r for r in reservations if r.resource == resource],
            usage=usage, shares=shares, last_batch_start=last_batch_start,
            rhythms=self.rhythms.snapshot(),
        )  # fmt: skip
