"""Scheduling policies: which queued task runs next on one free resource.

Each policy is a frozen dataclass answering that one question from a
:class:`SchedulingView`. Policies are pure (time is passed in; no clock, I/O or
threads), so the live broker and the discrete-event simulator drive the same
objects. Ties are broken by ``submitted_at`` then ``task_id``: answers never
depend on queue order. Every call is O(n) in the queue length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import ClassVar, Protocol

from qhpc.errors import QhpcError

POLICIES: tuple[str, ...] = ("fifo", "priority", "fairshare")


class PolicyError(QhpcError):
    """A policy name, option or parameter is invalid; the message says what is allowed."""


@dataclass(frozen=True)
class QueuedTask:
    task_id: str
    job_id: str
    resource: str
    account: str
    user: str
    submitted_at: float
    priority: int = 0
    session_id: str | None = None
    estimated_seconds: float = 0.0


class SessionMode(StrEnum):
    MULTIPLEX = "multiplex"
    EXCLUSIVE = "exclusive"


@dataclass(frozen=True)
class SessionLease:
    session_id: str
    resource: str
    account: str
    user: str
    opened_at: float
    deadline: float
    mode: SessionMode = SessionMode.MULTIPLEX

    def is_open(self, now: float) -> bool:
        return self.opened_at <= now < self.deadline


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    resource: str
    account: str
    start: float
    end: float
    allow_backfill: bool = True

    def is_active(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True)
class SessionRhythm:
    """The pace of one session as the broker saw it: the hybrid loop's think time.

    ``released_at``: when the broker last released one of the session's results;
    ``submitted_at``: when the session last submitted a task; ``think``: an
    exponentially weighted mean of the gaps *result released → next task
    submitted* (None before the first), ``spread`` the same mean of the gaps'
    absolute deviation from ``think`` (how irregular the loop is).
    """

    released_at: float | None = None
    submitted_at: float | None = None
    think: float | None = None
    spread: float = 0.0

    def thinking(self) -> bool:
        """Its latest task's result is out and it has sent nothing since."""
        return (
            self.released_at is not None
            and self.think is not None
            and (self.submitted_at is None or self.submitted_at <= self.released_at)
        )


class SessionRhythms:
    """Learns each session's think time from its submissions and released results.

    Pure bookkeeping (times are passed in), O(1) per event; the broker and the
    simulator call :meth:`submitted` when a session task arrives and
    :meth:`released` when its result is handed back, and put :meth:`snapshot`
    into every :class:`SchedulingView`. A gap is measured only when the session
    had a result released after its previous submission, so a client that
    pipelines several tasks does not teach a think time of zero.
    """

    def __init__(self, weight: float = 0.25) -> None:
        if not 0 < weight <= 1:
            raise PolicyError(f"weight must be in (0, 1], got {weight!r}")
        self.weight = weight
        self._rhythms: dict[str, SessionRhythm] = {}

    def submitted(self, session_id: str, at: float) -> None:
        old = self._rhythms.get(session_id)
        if old is None:
            self._rhythms[session_id] = SessionRhythm(submitted_at=at)
            return
        think, spread = old.think, old.spread
        released = old.released_at
        if released is not None and (old.submitted_at is None or old.submitted_at <= released):
            gap = max(0.0, at - released)
            if think is None:
                think, spread = gap, gap / 2  # one sample: assume a loose rhythm
            else:
                w = self.weight
                spread = (1 - w) * spread + w * abs(gap - think)
                think = (1 - w) * think + w * gap
        self._rhythms[session_id] = SessionRhythm(released, at, think, spread)

    def released(self, session_id: str, at: float) -> None:
        old = self._rhythms.get(session_id)
        if old is None:
            self._rhythms[session_id] = SessionRhythm(released_at=at)
        else:
            self._rhythms[session_id] = SessionRhythm(at, old.submitted_at, old.think, old.spread)

    def forget(self, session_id: str) -> None:
        self._rhythms.pop(session_id, None)

    def snapshot(self) -> dict[str, SessionRhythm]:
        """Every session seen, as a ``SchedulingView.rhythms`` mapping."""
        return dict(self._rhythms)


@dataclass(frozen=True)
class SchedulingView:
    """Everything a policy may look at, for one free resource at time ``now``.

    ``last_batch_start`` (optional) is when a non-session task last started on
    this resource; with it, :class:`SessionPolicy` rations starvation relief.
    ``rhythms`` (optional) are the sessions' learnt think times, from
    :class:`SessionRhythms`; with them, :class:`SessionPolicy` backfills only
    batch tasks that end before the next session task is expected.
    """

    now: float
    resource: str
    queue: Sequence[QueuedTask]
    sessions: Sequence[SessionLease] = ()
    reservations: Sequence[Reservation] = ()
    usage: Mapping[str, float] = field(default_factory=dict)
    shares: Mapping[str, float] = field(default_factory=dict)
    last_batch_start: float | None = None
    rhythms: Mapping[str, SessionRhythm] = field(default_factory=dict)


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def next_task(self, view: SchedulingView) -> QueuedTask | None: ...


def revisit_at(policy: Policy, view: SchedulingView) -> float:
    """The earliest time after ``view.now`` at which ``policy`` may answer ``view``
    differently by the passing of time alone (inf: only a new event changes it).

    An executor left idle by a ``None`` sleeps until then (or until woken by a
    submission). Policies that do not say (a ``revisit_at`` method) answer inf.
    """
    method: Callable[[SchedulingView], float] | None = getattr(policy, "revisit_at", None)
    return math.inf if method is None else method(view)


def _after(now: float, times: Iterable[float]) -> float:
    return min((t for t in times if t > now), default=math.inf)


def _arrival(task: QueuedTask) -> tuple[float, str]:
    return (task.submitted_at, task.task_id)


def _oldest(tasks: Iterable[QueuedTask]) -> QueuedTask | None:
    return min(tasks, key=_arrival, default=None)


def _pending(view: SchedulingView) -> list[QueuedTask]:
    # The queue should hold only this resource's tasks; filtering keeps a stray one off the QPU.
    return [t for t in view.queue if t.resource == view.resource]


def _non_negative(what: str, value: float, *, finite: bool = False) -> None:
    # `not value >= 0` also rejects NaN; an infinite weight would turn 0 * inf into NaN keys.
    if not value >= 0 or (finite and value == math.inf):
        raise PolicyError(f"{what} must be a non-negative number, got {value!r}")


@dataclass(frozen=True)
class FifoPolicy:
    """Oldest task first."""

    name: ClassVar[str] = "fifo"

    def next_task(self, view: SchedulingView) -> QueuedTask | None:
        return _oldest(_pending(view))


@dataclass(frozen=True)
class PriorityPolicy:
    """Highest ``priority + age_weight * wait`` first; the age term ends starvation."""

    age_weight: float = 1 / 60
    name: ClassVar[str] = "priority"

    def __post_init__(self) -> None:
        _non_negative("age_weight", self.age_weight, finite=True)

    def next_task(self, view: SchedulingView) -> QueuedTask | None:
        now, weight = view.now, self.age_weight
        return min(
            _pending(view),
            key=lambda t: (-(t.priority + weight * (now - t.submitted_at)), *_arrival(t)),
            default=None,
        )


def _valid_share(value: float) -> float:
    return value if 0 < value < math.inf else 0.0


def fair_share_factors(
    accounts: Iterable[str], usage: Mapping[str, float], shares: Mapping[str, float]
) -> dict[str, float]:
    """Slurm's classic factor F = 2^(-U/S) for ``accounts`` and every account with usage.

    U is the account's fraction of all decayed usage (0 when there is none), S its
    fraction of the shares of the accounts considered (a missing share counts 1.0).
    A share that is not a positive number gives F = 0: the account runs only when
    nobody else waits.
    """
    used = {a: u for a, u in usage.items() if 0 < u < math.inf}
    members = sorted(set(accounts) | used.keys())
    share = {a: _valid_share(shares.get(a, 1.0)) for a in members}
    # fsum is exactly rounded, so the result does not depend on iteration order.
    total_usage = math.fsum(used.values())
    total_shares = math.fsum(share.values())
    factors: dict[str, float] = {}
    for account in members:
        if share[account] <= 0:
            factors[account] = 0.0
            continue
        fraction = used.get(account, 0.0) / total_usage if total_usage > 0 else 0.0
        # U / S written as one quotient: a tiny share must give F ~ 0, not a zero division.
        factors[account] = math.exp2(-fraction * total_shares / share[account])
    return factors


@dataclass(frozen=True)
class FairSharePolicy:
    """Highest fair-share factor first (plus ``age_weight * wait``), then priority, then age."""

    age_weight: float = 0.0
    name: ClassVar[str] = "fairshare"

    def __post_init__(self) -> None:
        _non_negative("age_weight", self.age_weight, finite=True)

    def next_task(self, view: SchedulingView) -> QueuedTask | None:
        tasks = _pending(view)
        if not tasks:
            return None
        factor = fair_share_factors({t.account for t in tasks}, view.usage, view.shares)
        now, weight = view.now, self.age_weight
        return min(
            tasks,
            key=lambda t: (
                -(factor[t.account] + weight * (now - t.submitted_at)),
                -t.priority,
                *_arrival(t),
            ),
        )


@dataclass(frozen=True)
class SessionPolicy:
    """Session tasks jump the queue; ``batch`` fills the gaps that fit.

    Multiplex: tasks of open multiplex sessions run first. Across sessions the
    one whose turn came first goes: a session's turn starts when its oldest
    waiting task arrived or, if later, when its last result was released (so a
    session that pipelines tasks takes turns with the others instead of running
    all its tasks first). A task whose session is not open counts as batch.

    Backfill (``backfill``, on by default): when no session task waits, a batch
    task starts only if its ``estimated_seconds`` (``inf`` when unknown: it never
    fits) end before the earliest
    *expected* next task of a thinking session; otherwise a shorter one that fits
    starts (``batch`` chooses among those), or the QPU stays idle for the short
    gap. A session's next task is expected ``think - arrival_margin * spread``
    after its last result was released (its :class:`SessionRhythm`, learnt by the
    broker); a session that has sent nothing for ``think + arrival_patience *
    max(spread, think / 10)`` is ignored (it stopped sending, or its classical
    phase is unusually long), and so is a session without a rhythm yet.

    Starvation freedom: the oldest batch task goes first — before waiting session
    tasks, or whether or not it fits — once it has waited more than
    ``starvation_limit``, so under constant session load a batch task starts
    within ``starvation_limit + (k + 1) * D`` of submission (D the longest task, k
    the older batch tasks still queued then). When the view carries
    ``last_batch_start``, relief is rationed to one batch start per
    ``starvation_limit`` so an old batch backlog cannot shut sessions out; the
    bound becomes ``(k + 1) * (starvation_limit + D)`` for batch work as a whole
    (a task longer than every gap may then wait while shorter ones fill them).

    Exclusive: while an exclusive session is open, only the earliest-opened one's
    tasks may run, and the QPU idles (None) when it has none queued.
    """

    batch: Policy
    starvation_limit: float = 60.0
    backfill: bool = True
    #: the defaults balance latency and utilisation with shot chunks (docs/benchmarks.md)
    arrival_margin: float = 0.5
    arrival_patience: float = 1.0

    def __post_init__(self) -> None:
        _non_negative("starvation_limit", self.starvation_limit)
        _non_negative("arrival_margin", self.arrival_margin, finite=True)
        _non_negative("arrival_patience", self.arrival_patience, finite=True)

    @property
    def name(self) -> str:
        return f"{self.batch.name}+sessions"

    def next_task(self, view: SchedulingView) -> QueuedTask | None:
        now = view.now
        open_sessions = [s for s in view.sessions if s.resource == view.resource and s.is_open(now)]
        tasks = _pending(view)
        exclusive = [s for s in open_sessions if s.mode is SessionMode.EXCLUSIVE]
        if exclusive:
            holder = min(exclusive, key=lambda s: (s.opened_at, s.session_id))
            return _oldest(t for t in tasks if t.session_id == holder.session_id)
        open_ids = {s.session_id for s in open_sessions}
        session_tasks: list[QueuedTask] = []
        batch: list[QueuedTask] = []
        for task in tasks:
            (session_tasks if task.session_id in open_ids else batch).append(task)
        if not batch:
            return self._next_session_task(view, session_tasks)
        oldest_batch = _oldest(batch)
        assert oldest_batch is not None
        if session_tasks:
            if self._relieves(view, oldest_batch):
                return oldest_batch
            return self._next_session_task(view, session_tasks)
        horizon = self.expected_arrival(view, open_ids) if self.backfill else math.inf
        if horizon < math.inf:
            fitting = [t for t in batch if now + t.estimated_seconds <= horizon]
            if len(fitting) < len(batch):
                if not fitting:
                    return oldest_batch if self._relieves(view, oldest_batch) else None
                batch = fitting
        return self.batch.next_task(replace(view, queue=batch))

    def revisit_at(self, view: SchedulingView) -> float:
        """When :meth:`next_task` may change its answer with time alone: a thinking
        session's patience runs out, a batch task becomes due for starvation relief,
        a session opens or reaches its deadline."""
        now = view.now
        sessions = [s for s in view.sessions if s.resource == view.resource]
        times = [s.opened_at for s in sessions] + [s.deadline for s in sessions]
        open_ids = {s.session_id for s in sessions if s.is_open(now)}
        batch = [t for t in _pending(view) if t.session_id not in open_ids]
        oldest = _oldest(batch)
        if oldest is not None:
            due = oldest.submitted_at + self.starvation_limit
            if view.last_batch_start is not None:
                due = max(due, view.last_batch_start + self.starvation_limit)
            # relief needs strictly more than the limit
            times.append(math.nextafter(due, math.inf))
        if self.backfill:
            for session_id in open_ids:
                rhythm = view.rhythms.get(session_id)
                if rhythm is not None and rhythm.thinking():
                    assert rhythm.released_at is not None and rhythm.think is not None
                    ignored = rhythm.released_at + rhythm.think + self._patience(rhythm)
                    times.append(math.nextafter(ignored, math.inf))
        return min(_after(now, times), revisit_at(self.batch, view))

    def _patience(self, rhythm: SessionRhythm) -> float:
        assert rhythm.think is not None
        return self.arrival_patience * max(rhythm.spread, rhythm.think / 10)

    def expected_arrival(self, view: SchedulingView, session_ids: Iterable[str]) -> float:
        """The earliest time a task of one of ``session_ids`` is expected (inf: none is)."""
        now, earliest = view.now, math.inf
        for session_id in session_ids:
            rhythm = view.rhythms.get(session_id)
            if rhythm is None or not rhythm.thinking():
                continue
            assert rhythm.released_at is not None and rhythm.think is not None
            think, spread = rhythm.think, rhythm.spread
            if now > rhythm.released_at + think + self._patience(rhythm):
                continue  # it stopped sending, or thinks much longer than usual
            expected = rhythm.released_at + max(0.0, think - self.arrival_margin * spread)
            earliest = min(earliest, expected)
        return earliest

    def _next_session_task(
        self, view: SchedulingView, session_tasks: list[QueuedTask]
    ) -> QueuedTask | None:
        oldest: dict[str, QueuedTask] = {}
        for task in session_tasks:
            sid = task.session_id
            assert sid is not None
            held = oldest.get(sid)
            if held is None or _arrival(task) < _arrival(held):
                oldest[sid] = task

        def turn(task: QueuedTask) -> tuple[float, float, str]:
            rhythm = view.rhythms.get(task.session_id or "")
            served = rhythm.released_at if rhythm is not None else None
            start = task.submitted_at if served is None else max(task.submitted_at, served)
            return (start, *_arrival(task))

        return min(oldest.values(), key=turn, default=None)

    def _relieves(self, view: SchedulingView, task: QueuedTask) -> bool:
        if view.now - task.submitted_at <= self.starvation_limit:
            return False
        last = view.last_batch_start
        return last is None or view.now - last >= self.starvation_limit


@dataclass(frozen=True)
class ReservationPolicy:
    """Reservation windows: only the reserving account inside, no overrun into one ahead.

    Inside an active window only the reserving account's tasks may run (``inner``
    chooses). When it has none that may start, and the window allows backfill,
    other tasks may run if ``estimated_seconds <= backfill_slack``: the account
    then waits at most that long for its QPU. At any time a task must not start
    if ``now + estimated_seconds`` passes the start of an upcoming window of
    another account (tasks are not preemptible). Overlapping active windows:
    the earliest-starting one (then lowest id) governs.
    """

    inner: Policy
    backfill_slack: float = 5.0

    def __post_init__(self) -> None:
        _non_negative("backfill_slack", self.backfill_slack)

    @property
    def name(self) -> str:
        return f"{self.inner.name}+reservations"

    def revisit_at(self, view: SchedulingView) -> float:
        """A window starting or ending, or whatever changes the inner policy's answer."""
        mine = [r for r in view.reservations if r.resource == view.resource]
        edges = [r.start for r in mine] + [r.end for r in mine]
        return min(_after(view.now, edges), revisit_at(self.inner, view))

    def next_task(self, view: SchedulingView) -> QueuedTask | None:
        now = view.now
        mine = [r for r in view.reservations if r.resource == view.resource and r.start < r.end]
        windows = sorted(
            (r for r in mine if r.end > now), key=lambda r: (r.start, r.reservation_id)
        )
        active = next((r for r in windows if r.is_active(now)), None)
        upcoming = [r for r in windows if r.start > now]
        # Horizon per account: the next window of another account. Two values cover all accounts.
        first_account = upcoming[0].account if upcoming else None
        first_start = upcoming[0].start if upcoming else math.inf
        other_start = next((r.start for r in upcoming if r.account != first_account), math.inf)

        def fits(task: QueuedTask) -> bool:
            horizon = other_start if task.account == first_account else first_start
            return now + task.estimated_seconds <= horizon

        allowed = [t for t in _pending(view) if fits(t)]
        if active is not None:
            own = [t for t in allowed if t.account == active.account]
            if own:
                allowed = own
            elif active.allow_backfill:
                allowed = [t for t in allowed if t.estimated_seconds <= self.backfill_slack]
            else:
                return None
        if not allowed:
            return None
        return self.inner.next_task(replace(view, queue=allowed))


_BASES: dict[str, Callable[..., Policy]] = {
    "fifo": FifoPolicy,
    "priority": PriorityPolicy,
    "fairshare": FairSharePolicy,
}


def build_policy(
    name: str,
    *,
    sessions: bool = True,
    reservations: bool = True,
    session_backfill: bool = True,
    **options: float,
) -> Policy:
    """Build ``ReservationPolicy(SessionPolicy(base))`` (wrappers optional) by base name.

    Options go where they belong: ``age_weight`` to the base (not fifo),
    ``starvation_limit``, ``arrival_margin`` and ``arrival_patience`` to the session
    wrapper (``session_backfill=False``: batch fills gaps without looking at the
    sessions' rhythm, the policy before backfill), ``backfill_slack`` to the
    reservation one.
    """
    key = name.strip().lower()
    if key not in POLICIES:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)}")
    takes = [] if key == "fifo" else ["age_weight"]
    session_options = ["starvation_limit", "arrival_margin", "arrival_patience"]
    takes += session_options if sessions else []
    takes += ["backfill_slack"] if reservations else []
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise PolicyError(
            f"policy {key!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(takes) or 'none'}"
        )
    values: dict[str, float] = {}
    for option, raw in options.items():
        try:
            values[option] = float(raw)
        except (TypeError, ValueError):
            raise PolicyError(f"option {option} must be a number, got {raw!r}") from None

    def only(option: str) -> dict[str, float]:
        return {option: values[option]} if option in values else {}

    policy = _BASES[key](**only("age_weight"))
    if sessions:
        chosen = {o: values[o] for o in session_options if o in values}
        policy = SessionPolicy(policy, backfill=session_backfill, **chosen)
    if reservations:
        policy = ReservationPolicy(policy, **only("backfill_slack"))
    return policy
