from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qhpc.broker.scheduler import (
    POLICIES,
    FairSharePolicy,
    FifoPolicy,
    Policy,
    PolicyError,
    PriorityPolicy,
    QueuedTask,
    Reservation,
    ReservationPolicy,
    SchedulingView,
    SessionLease,
    SessionMode,
    SessionPolicy,
    SessionRhythm,
    SessionRhythms,
    build_policy,
    fair_share_factors,
    revisit_at,
)
from qhpc.broker.usage import UsageTracker
from qhpc.errors import QhpcError

QPU = "qpu"


def task(
    task_id: str,
    at: float,
    account: str = "a",
    *,
    priority: int = 0,
    session: str | None = None,
    seconds: float = 0.0,
    resource: str = QPU,
) -> QueuedTask:
    return QueuedTask(
        task_id=task_id,
        job_id=f"job-{task_id}",
        resource=resource,
        account=account,
        user=f"user-{account}",
        submitted_at=at,
        priority=priority,
        session_id=session,
        estimated_seconds=seconds,
    )


def lease(
    session_id: str,
    opened: float = 0.0,
    deadline: float = math.inf,
    mode: SessionMode = SessionMode.MULTIPLEX,
    account: str = "s",
) -> SessionLease:
    return SessionLease(session_id, QPU, account, f"user-{account}", opened, deadline, mode)


def window(account: str, start: float, end: float, *, backfill: bool = True) -> Reservation:
    return Reservation(f"r-{account}-{start}", QPU, account, start, end, backfill)


def view(queue: Sequence[QueuedTask], now: float = 100.0, **kwargs: object) -> SchedulingView:
    return SchedulingView(now=now, resource=QPU, queue=queue, **kwargs)  # type: ignore[arg-type]


def pick(
    policy: Policy, queue: Sequence[QueuedTask], now: float = 100.0, **kw: object
) -> str | None:
    chosen = policy.next_task(view(queue, now, **kw))
    return None if chosen is None else chosen.task_id


def order(
    policy: Policy, queue: Sequence[QueuedTask], now: float = 100.0, **kw: object
) -> list[str]:
    """Drain the queue at a fixed time: the order the policy would run it in."""
    left, out = list(queue), []
    while (chosen := policy.next_task(view(left, now, **kw))) is not None:
        out.append(chosen.task_id)
        left.remove(chosen)
    return out


# --- base policies -------------------------------------------------------------------------


def test_fifo_runs_oldest_first_and_breaks_ties_by_id() -> None:
    queue = [task("c", 3), task("b", 1), task("a2", 2), task("a1", 2)]
    assert order(FifoPolicy(), queue) == ["b", "a1", "a2", "c"]


@pytest.mark.parametrize(
    "policy", [FifoPolicy(), PriorityPolicy(), FairSharePolicy(), build_policy("fairshare")]
)
def test_empty_queue_and_foreign_tasks_give_none(policy: Policy) -> None:
    assert pick(policy, []) is None
    assert pick(policy, [task("x", 1, resource="other-qpu")]) is None


def test_priority_runs_higher_priority_first_then_oldest() -> None:
    queue = [
        task("low", 0, priority=0),
        task("high", 50, priority=5),
        task("high-old", 10, priority=5),
    ]
    assert order(PriorityPolicy(age_weight=0.0), queue) == ["high-old", "high", "low"]


def test_priority_age_lets_a_low_priority_task_overtake() -> None:
    policy = PriorityPolicy(age_weight=1 / 60)
    old_low = task("old-low", 0, priority=0)
    # At t=100 the old task scores 1.67 and a fresh priority-2 task 2.17; at t=200, 3.33 vs 2.17.
    assert pick(policy, [old_low, task("new-high", 90, priority=2)], now=100) == "new-high"
    assert pick(policy, [old_low, task("new-high", 190, priority=2)], now=200) == "old-low"


def test_fairshare_greedy_account_yields_to_light_one() -> None:
    queue = [
        task("greedy-1", 1, "greedy"),
        task("light-1", 5, "light"),
        task("greedy-2", 2, "greedy"),
    ]
    usage = {"greedy": 900.0, "light": 100.0}
    assert order(FairSharePolicy(), queue, usage=usage) == ["light-1", "greedy-1", "greedy-2"]


def test_fairshare_equal_shares_and_usage_is_fifo() -> None:
    queue = [task("b1", 2, "b"), task("a1", 1, "a"), task("a2", 4, "a"), task("b2", 3, "b")]
    usage = {"a": 50.0, "b": 50.0}
    assert order(FairSharePolicy(), queue, usage=usage) == ["a1", "b1", "b2", "a2"]
    assert order(FairSharePolicy(), queue) == ["a1", "b1", "b2", "a2"]  # nobody has usage


def test_fairshare_shares_shift_the_balance() -> None:
    queue = [task("a1", 1, "a"), task("b1", 2, "b")]
    usage = {"a": 60.0, "b": 40.0}
    # Equal shares: a used more than half, so b first.
    assert pick(FairSharePolicy(), queue, usage=usage) == "b1"
    # a holds two thirds of the shares and used less than that: a first.
    assert pick(FairSharePolicy(), queue, usage=usage, shares={"a": 2.0, "b": 1.0}) == "a1"
    factors = fair_share_factors(["a", "b"], usage, {"a": 2.0, "b": 1.0})
    assert factors["a"] == pytest.approx(2 ** (-0.6 / (2 / 3)))
    assert factors["b"] == pytest.approx(2 ** (-0.4 / (1 / 3)))


def test_fairshare_factor_edge_cases() -> None:
    assert fair_share_factors(["a", "b"], {}, {}) == {"a": 1.0, "b": 1.0}
    # An idle account with usage still counts towards the total shares.
    factors = fair_share_factors(["a"], {"a": 10.0, "idle": 10.0}, {})
    assert factors["a"] == pytest.approx(0.5)
    # A zero share is a scavenger: it runs only when nobody else waits.
    assert fair_share_factors(["z"], {}, {"z": 0.0}) == {"z": 0.0}
    queue = [task("z1", 1, "z"), task("a1", 50, "a")]
    assert order(FairSharePolicy(), queue, shares={"z": 0.0}) == ["a1", "z1"]


def test_fairshare_then_priority_then_age() -> None:
    queue = [task("a-old", 1, "a"), task("a-urgent", 9, "a", priority=3)]
    assert order(FairSharePolicy(), queue) == ["a-urgent", "a-old"]


def test_fairshare_age_weight_ends_starvation_of_a_heavy_account() -> None:
    queue = [task("heavy", 0, "heavy"), task("light", 999, "light")]
    usage = {"heavy": 1000.0, "light": 1.0}
    assert pick(FairSharePolicy(), queue, now=1000, usage=usage) == "light"
    assert pick(FairSharePolicy(age_weight=1 / 600), queue, now=1000, usage=usage) == "heavy"


def test_fairshare_half_life_makes_old_usage_matter_less() -> None:
    tracker = UsageTracker(half_life=3600.0)
    tracker.record("old", 1000.0, at=0.0)  # ten half-lives ago: about 1 s left
    tracker.record("recent", 100.0, at=35_000.0)
    now = 36_000.0
    usage = tracker.snapshot(now)
    assert usage["old"] == pytest.approx(1000.0 / 1024)
    queue = [task("recent-1", now - 10, "recent"), task("old-1", now - 5, "old")]
    assert pick(FairSharePolicy(), queue, now=now, usage=usage) == "old-1"
    # Without decay the old heavy usage would still dominate.
    raw = {"old": 1000.0, "recent": 100.0}
    assert pick(FairSharePolicy(), queue, now=now, usage=raw) == "recent-1"


# --- sessions ------------------------------------------------------------------------------


def test_multiplex_session_tasks_jump_the_queue() -> None:
    queue = [task("batch", 50), task("sess", 90, session="s1")]
    assert pick(SessionPolicy(FifoPolicy()), queue, sessions=[lease("s1")]) == "sess"


def test_multiplex_batch_policy_fills_when_no_session_task_waits() -> None:
    queue = [task("old", 1), task("urgent", 50, priority=9)]
    policy = SessionPolicy(PriorityPolicy(age_weight=0.0))
    assert pick(policy, queue, sessions=[lease("s1")]) == "urgent"


def test_tasks_of_closed_or_unknown_sessions_are_batch() -> None:
    sessions = [lease("expired", 0, deadline=50), lease("future", opened=200), lease("live")]
    queue = [
        task("expired", 71, session="expired"),
        task("future", 72, session="future"),
        task("unknown", 73, session="nobody"),
        task("live", 99, session="live"),
    ]
    policy = SessionPolicy(FifoPolicy())
    assert order(policy, queue, sessions=sessions) == ["live", "expired", "future", "unknown"]
    # A lease on another resource does not make its tasks session tasks here.
    elsewhere = [SessionLease("live", "other-qpu", "s", "u", 0, math.inf)]
    assert order(policy, queue, sessions=elsewhere) == ["expired", "future", "unknown", "live"]


def test_several_sessions_share_a_resource_oldest_first() -> None:
    queue = [
        task("s2-a", 20, session="s2"),
        task("s1-a", 30, session="s1"),
        task("s1-b", 10, session="s1"),
    ]
    sessions = [lease("s1"), lease("s2", opened=5)]
    assert order(SessionPolicy(FifoPolicy()), queue, sessions=sessions) == ["s1-b", "s2-a", "s1-a"]


def test_exclusive_session_idles_the_qpu_when_it_has_nothing_queued() -> None:
    policy = SessionPolicy(FifoPolicy())
    sessions = [lease("excl", mode=SessionMode.EXCLUSIVE), lease("multi")]
    queue = [task("batch", 60), task("multi-1", 70, session="multi")]
    assert pick(policy, queue, sessions=sessions) is None
    queue.append(task("excl-1", 99, session="excl"))
    assert pick(policy, queue, sessions=sessions) == "excl-1"
    # Once the exclusive session ends, everything flows again.
    assert (
        pick(policy, queue, now=110, sessions=[*sessions[1:], lease("excl", 0, 105)]) == "multi-1"
    )


def test_earliest_opened_exclusive_session_holds_the_qpu() -> None:
    sessions = [
        lease("late", opened=20, mode=SessionMode.EXCLUSIVE),
        lease("early", opened=10, mode=SessionMode.EXCLUSIVE),
    ]
    queue = [task("late-1", 1, session="late"), task("early-1", 50, session="early")]
    assert order(SessionPolicy(FifoPolicy()), queue, sessions=sessions) == ["early-1"]


def test_a_starving_batch_task_goes_before_session_tasks() -> None:
    policy = SessionPolicy(FifoPolicy(), starvation_limit=60)
    queue = [task("batch", 30), task("sess", 99, session="s1")]
    assert pick(policy, queue, now=90, sessions=[lease("s1")]) == "sess"
    assert pick(policy, queue, now=91, sessions=[lease("s1")]) == "batch"
    # With the hint, relief waits until no batch task started for starvation_limit.
    hinted = {"sessions": [lease("s1")], "last_batch_start": 80.0}
    assert pick(policy, queue, now=91, **hinted) == "sess"
    assert pick(policy, queue, now=140, **hinted) == "batch"


Durations = Callable[[int], float]


def simulate(
    policy: Policy,
    batch_arrivals: Sequence[float],
    horizon: float,
    duration: Durations,
    *,
    hint: bool = False,
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """A tiny discrete-event loop: one QPU, one session that always has two tasks queued.

    Returns submit and start times of batch tasks, and the start times of session tasks.
    """
    sessions = [lease("s1")]
    counter = itertools.count()
    queue = [task(f"s{next(counter)}", 0.0, session="s1") for _ in range(2)]
    arrivals = sorted(batch_arrivals)
    submitted: dict[str, float] = {}
    started: dict[str, float] = {}
    session_starts: list[float] = []
    now, last_batch, index = 0.0, None, 0
    while now < horizon:
        while index < len(arrivals) and arrivals[index] <= now:
            submitted[f"b{index}"] = arrivals[index]
            queue.append(task(f"b{index}", arrivals[index]))
            index += 1
        chosen = policy.next_task(
            SchedulingView(now, QPU, queue, sessions, last_batch_start=last_batch if hint else None)
        )
        assert chosen is not None  # a session task is always waiting
        queue.remove(chosen)
        if chosen.session_id is None:
            started[chosen.task_id] = now
            last_batch = now
        else:
            session_starts.append(now)
            queue.append(task(f"s{next(counter)}", now, session="s1"))  # constant session load
        now += duration(len(started) + len(session_starts))
    return submitted, started, session_starts


def test_batch_never_starves_under_constant_session_load() -> None:
    limit, longest = 10.0, 1.5
    durations = [0.5, 1.5, 1.0, 0.75]

    def duration(i: int) -> float:
        return durations[i % len(durations)]

    arrivals = [0.3 + 13.0 * i + (i % 3) for i in range(30)]
    policy = SessionPolicy(FifoPolicy(), starvation_limit=limit)
    submitted, started, session_starts = simulate(policy, arrivals, 420.0, duration)
    assert set(started) == set(submitted)
    waits = [started[t] - submitted[t] for t in submitted]
    assert max(waits) <= limit + longest
    assert max(waits) > limit  # batch only ever ran through starvation relief
    assert len(session_starts) > 10 * len(started)  # sessions still get almost everything
    # Without the rule the batch work would never run.
    never = SessionPolicy(FifoPolicy(), starvation_limit=math.inf)
    assert simulate(never, arrivals, 420.0, duration)[1] == {}


def test_hint_rations_relief_so_a_batch_backlog_cannot_shut_sessions_out() -> None:
    limit = 10.0
    backlog = [0.0] * 40
    policy = SessionPolicy(FifoPolicy(), starvation_limit=limit)
    _, started, session_starts = simulate(policy, backlog, 60.0, lambda i: 1.0)
    # Unrationed: from t=10 the old backlog holds the QPU and the session waits.
    assert not [t for t in session_starts if 11 <= t < 50]
    _, started, session_starts = simulate(policy, backlog, 60.0, lambda i: 1.0, hint=True)
    starts = sorted(started.values())
    assert starts and all(b - a >= limit for a, b in itertools.pairwise(starts))
    assert len(session_starts) >= 60 - len(starts)


# --- session-aware backfill ----------------------------------------------------------------


def thinking(released: float, think: float, spread: float = 0.0) -> SessionRhythm:
    """A session whose last result went out at ``released`` and that has sent nothing since."""
    return SessionRhythm(released_at=released, submitted_at=released - 1.0, think=think,
                         spread=spread)  # fmt: skip


def test_rhythms_learn_the_think_time_between_a_release_and_the_next_task() -> None:
    rhythms = SessionRhythms(weight=0.5)
    rhythms.submitted("s", 0.0)
    assert not rhythms.snapshot()["s"].thinking()  # a task is out, no think time known
    rhythms.released("s", 1.0)
    rhythms.submitted("s", 3.0)  # thought 2 s
    first = rhythms.snapshot()["s"]
    assert (first.think, first.spread) == (2.0, 1.0)
    rhythms.released("s", 4.0)
    assert rhythms.snapshot()["s"].thinking()
    rhythms.submitted("s", 8.0)  # thought 4 s
    second = rhythms.snapshot()["s"]
    assert second.think == pytest.approx(3.0)  # (2 + 4) / 2
    assert second.spread == pytest.approx(1.5)  # (1 + |4 - 2|) / 2
    assert not second.thinking()
    rhythms.forget("s")
    assert rhythms.snapshot() == {}
    with pytest.raises(PolicyError, match="weight"):
        SessionRhythms(weight=0.0)


def test_rhythms_ignore_the_gaps_of_a_pipelining_client() -> None:
    rhythms = SessionRhythms(weight=0.5)
    rhythms.submitted("s", 0.0)
    rhythms.submitted("s", 0.0)  # two tasks in flight: no release in between, no sample
    rhythms.released("s", 1.0)
    rhythms.released("s", 2.0)
    assert rhythms.snapshot()["s"].think is None
    rhythms.submitted("s", 2.5)
    assert rhythms.snapshot()["s"].think == pytest.approx(0.5)  # from the latest release
    rhythms.submitted("s", 2.6)  # no result out since 2.5: not a think time
    assert rhythms.snapshot()["s"].think == pytest.approx(0.5)


def test_a_batch_task_that_would_overrun_the_expected_session_task_waits() -> None:
    policy = SessionPolicy(FifoPolicy())
    # The session's result went out at 99 and it thinks 2 s: its next task is due at 101.
    kw = {"sessions": [lease("s1")], "rhythms": {"s1": thinking(99.0, 2.0)}}
    assert pick(policy, [task("long", 50, seconds=1.5)], now=100.0, **kw) is None
    assert pick(policy, [task("short", 60, seconds=0.75)], now=100.0, **kw) == "short"
    # A shorter task that fits goes ahead of an older one that does not.
    both = [task("long", 50, seconds=1.5), task("short", 60, seconds=1.0)]
    assert pick(policy, both, now=100.0, **kw) == "short"
    # The policy before backfill, and a view without rhythms, start the oldest at once.
    greedy = SessionPolicy(FifoPolicy(), backfill=False)
    assert pick(greedy, both, now=100.0, **kw) == "long"
    assert pick(policy, both, now=100.0, sessions=[lease("s1")]) == "long"


def test_an_irregular_session_is_expected_earlier() -> None:
    policy = SessionPolicy(FifoPolicy(), arrival_margin=1.0)
    queue = [task("b", 50, seconds=1.0)]
    regular = {"sessions": [lease("s1")], "rhythms": {"s1": thinking(99.0, 3.0)}}
    irregular = {"sessions": [lease("s1")], "rhythms": {"s1": thinking(99.0, 3.0, spread=1.5)}}
    assert pick(policy, queue, now=100.0, **regular) == "b"  # ends at 101 < 102
    assert pick(policy, queue, now=100.0, **irregular) is None  # expected from 100.5


def test_the_earliest_expected_session_sets_the_horizon() -> None:
    policy = SessionPolicy(FifoPolicy())
    sessions = [lease("s1"), lease("s2"), lease("closed", 0, deadline=90)]
    rhythms = {
        "s1": thinking(99.0, 5.0),  # due at 104
        "s2": thinking(99.5, 1.0),  # due at 100.5
        "closed": thinking(99.9, 0.1),  # not open: ignored
    }
    queue = [task("b1", 50, seconds=1.0), task("b2", 51, seconds=0.4)]
    assert pick(policy, queue, now=100.0, sessions=sessions, rhythms=rhythms) == "b2"
    assert policy.expected_arrival(
        view(queue, 100.0, sessions=sessions, rhythms=rhythms), ["s1", "s2"]
    ) == pytest.approx(100.5)


def test_a_session_that_stopped_sending_is_ignored() -> None:
    policy = SessionPolicy(FifoPolicy(), arrival_patience=2.0)
    queue = [task("b", 50, seconds=5.0)]
    kw = {"sessions": [lease("s1")], "rhythms": {"s1": thinking(90.0, 4.0, spread=1.0)}}
    # Expected at 93 (think - spread); waited for until 96 (think + 2 spreads).
    assert pick(policy, queue, now=95.0, **kw) is None
    assert pick(policy, queue, now=96.5, **kw) == "b"
    # A session with a task out (not thinking) or without a rhythm sets no horizon.
    busy = SessionRhythm(released_at=90.0, submitted_at=94.0, think=4.0, spread=1.0)
    assert pick(policy, queue, now=95.0, sessions=[lease("s1")], rhythms={"s1": busy}) == "b"
    assert pick(policy, queue, now=95.0, sessions=[lease("s1")]) == "b"


def test_a_starving_batch_task_starts_even_if_it_does_not_fit() -> None:
    policy = SessionPolicy(FifoPolicy(), starvation_limit=60)
    queue = [task("b", 30, seconds=5.0)]
    kw = {"sessions": [lease("s1")], "rhythms": {"s1": thinking(89.0, 2.0)}}
    assert pick(policy, queue, now=90.0, **kw) is None  # waited 60 s: not yet starving
    assert pick(policy, queue, now=90.5, **kw) == "b"
    # Rationed like relief before session tasks: one batch start per starvation_limit.
    assert pick(policy, queue, now=90.5, last_batch_start=80.0, **kw) is None
    assert pick(policy, queue, now=140.0, last_batch_start=80.0, **kw) == "b"


def test_a_pipelining_session_takes_turns_with_the_others() -> None:
    # s1 sent three tasks at once; s2 one, a little later. Served once (result out at 99),
    # s1's turn comes after s2's task, which arrived at 95.
    queue = [task("s1-b", 10, session="s1"), task("s1-c", 10.5, session="s1"),
             task("s2-a", 95, session="s2")]  # fmt: skip
    rhythms = {"s1": SessionRhythm(released_at=99.0, submitted_at=10.5)}
    sessions = [lease("s1"), lease("s2")]
    policy = SessionPolicy(FifoPolicy())
    assert pick(policy, queue, sessions=sessions, rhythms=rhythms) == "s2-a"
    assert pick(policy, queue, sessions=sessions) == "s1-b"  # without rhythms: oldest first


def test_backfill_options_are_checked_and_routed() -> None:
    policy = build_policy("fifo", reservations=False, arrival_margin=0.5, arrival_patience=3)
    assert policy == SessionPolicy(FifoPolicy(), arrival_margin=0.5, arrival_patience=3.0)
    assert build_policy("fifo", reservations=False, session_backfill=False) == SessionPolicy(
        FifoPolicy(), backfill=False
    )
    with pytest.raises(PolicyError, match="arrival_margin"):
        build_policy("fifo", sessions=False, arrival_margin=1.0)
    with pytest.raises(PolicyError, match="non-negative"):
        SessionPolicy(FifoPolicy(), arrival_patience=-1.0)


def backfill_trace(
    policy: SessionPolicy, think: Sequence[float], batch_seconds: Sequence[float]
) -> tuple[list[float], list[tuple[float, float]]]:
    """One session (task 0.5 s, then ``think[i]``) and a batch backlog on one QPU.

    The broker's loop in small: ask the policy whenever the QPU is free, and every
    0.1 s while it leaves it idle. Returns each session task's wait and the batch
    tasks' (start, end).
    """
    rhythms = SessionRhythms()
    sessions = [lease("s1")]
    queue = [task(f"b{i}", 0.0, seconds=s) for i, s in enumerate(batch_seconds)]
    now, free_at, last_batch = 0.0, 0.0, None
    arrivals = list(itertools.accumulate([0.0, *think]))  # relative to the previous release
    next_arrival: float | None = 0.0
    iteration, waits, batch_runs = 0, [], []
    session_submitted = math.nan
    while iteration < len(arrivals):
        if next_arrival is not None and next_arrival <= now:
            rhythms.submitted("s1", next_arrival)
            queue.append(task(f"s{iteration}", next_arrival, session="s1", seconds=0.5))
            session_submitted, next_arrival = next_arrival, None
        if now >= free_at:
            chosen = policy.next_task(
                SchedulingView(now, QPU, queue, sessions, last_batch_start=last_batch,
                               rhythms=rhythms.snapshot())
            )  # fmt: skip
            if chosen is not None:
                queue.remove(chosen)
                free_at = now + chosen.estimated_seconds
                if chosen.session_id is None:
                    last_batch = now
                    batch_runs.append((now, free_at))
                else:
                    waits.append(now - session_submitted)
                    rhythms.released("s1", free_at)
                    iteration += 1
                    if iteration < len(arrivals):
                        next_arrival = free_at + think[iteration - 1]
        events = [t for t in (free_at, next_arrival) if t is not None and t > now]
        now = min([*events, now + 0.1])
    return waits, batch_runs


def test_backfill_keeps_a_session_waiting_less_than_greedy_filling() -> None:
    think = [1.0 + 0.05 * (i % 3) for i in range(40)]
    backlog = [0.3, 0.8] * 30
    waits, runs = backfill_trace(SessionPolicy(FifoPolicy()), think, backlog)
    greedy_waits, greedy_runs = backfill_trace(SessionPolicy(FifoPolicy(), backfill=False),
                                               think, backlog)  # fmt: skip
    assert sum(greedy_waits) > 5 * sum(waits)
    assert runs and greedy_runs  # batch work progresses in both


# --- properties of backfill ----------------------------------------------------------------


@st.composite
def backfill_views(draw: st.DrawFn) -> SchedulingView:
    now = 100.0
    sessions = [lease(sid) for sid in SESSION_IDS]
    batch = [
        task(f"b{i}", draw(st.floats(0, 100)), seconds=draw(st.floats(0, 10)))
        for i in range(draw(st.integers(1, 8)))
    ]
    rhythms = {
        sid: SessionRhythm(
            released_at=draw(st.floats(80, 100)),
            submitted_at=draw(st.none() | st.floats(60, 100)),
            think=draw(st.none() | st.floats(0, 15)),
            spread=draw(st.floats(0, 5)),
        )
        for sid in draw(st.lists(st.sampled_from(SESSION_IDS), max_size=3, unique=True))
    }
    return view(batch, now, sessions=sessions, rhythms=rhythms,
                last_batch_start=draw(st.none() | st.floats(0, 100)))  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(view=backfill_views(), limit=st.sampled_from([20.0, 60.0, math.inf]))
def test_backfill_never_starts_a_batch_task_that_overruns_unless_it_starves(
    view: SchedulingView, limit: float
) -> None:
    policy = SessionPolicy(FairSharePolicy(), starvation_limit=limit)
    horizon = policy.expected_arrival(view, [s.session_id for s in view.sessions])
    chosen = policy.next_task(view)
    fits = [t for t in view.queue if view.now + t.estimated_seconds <= horizon]
    if chosen is None:
        assert not fits  # idle only when nothing fits
        return
    if view.now + chosen.estimated_seconds > horizon:
        # Only starvation relief may overrun: the oldest task, waited past the limit, rationed.
        oldest = min(view.queue, key=lambda t: (t.submitted_at, t.task_id))
        assert chosen == oldest and not fits
        assert view.now - chosen.submitted_at > limit
        last = view.last_batch_start
        assert last is None or view.now - last >= limit
    else:
        # Among those that fit, the base policy chooses.
        assert chosen == FairSharePolicy().next_task(replace(view, queue=fits))


# --- reservations --------------------------------------------------------------------------


def test_only_the_reserving_account_runs_inside_its_window() -> None:
    policy = ReservationPolicy(FifoPolicy())
    queue = [task("other", 1, "b", seconds=30), task("mine-2", 60, "a"), task("mine-1", 50, "a")]
    assert order(policy, queue, reservations=[window("a", 90, 200)]) == ["mine-1", "mine-2"]


def test_backfill_inside_a_window_only_for_short_tasks() -> None:
    policy = ReservationPolicy(FifoPolicy(), backfill_slack=5.0)
    queue = [task("long", 1, "b", seconds=30), task("short", 2, "b", seconds=5)]
    assert order(policy, queue, reservations=[window("a", 90, 200)]) == ["short"]
    assert pick(policy, queue, reservations=[window("a", 90, 200, backfill=False)]) is None


def test_no_task_of_another_account_overruns_into_an_upcoming_window() -> None:
    policy = ReservationPolicy(FifoPolicy())
    reservations = [window("a", 110, 200)]
    queue = [task("b-long", 1, "b", seconds=20), task("b-fits", 2, "b", seconds=10)]
    assert order(policy, queue, reservations=reservations) == ["b-fits"]
    queue.append(task("a-long", 3, "a", seconds=500))  # its own window is fine
    assert order(policy, queue, reservations=reservations) == ["b-fits", "a-long"]
    # ...but not another account's window after it.
    later = [*reservations, window("c", 300, 400)]
    assert order(policy, queue, reservations=later) == ["b-fits"]
    assert pick(policy, [task("b-long", 1, "b", seconds=20)], reservations=reservations) is None


def test_everything_flows_after_the_window_ends() -> None:
    policy = ReservationPolicy(FifoPolicy())
    queue = [task("b", 1, "b", seconds=30), task("a", 2, "a")]
    assert pick(policy, queue, now=200, reservations=[window("a", 90, 200)]) == "b"


def test_reserving_account_sessions_still_jump_its_own_queue() -> None:
    policy = build_policy("fifo")
    queue = [
        task("b", 1, "b", seconds=1),
        task("a-batch", 50, "a"),
        task("a-sess", 99, "a", session="s"),
    ]
    kw: dict[str, Any] = {
        "reservations": [window("a", 90, 200)],
        "sessions": [lease("s", account="a")],
    }
    assert order(policy, queue, **kw) == ["a-sess", "a-batch", "b"]


# --- construction --------------------------------------------------------------------------


def test_build_policy_composes_and_routes_options() -> None:
    assert POLICIES == ("fifo", "priority", "fairshare")
    policy = build_policy(" FairShare ", age_weight=0.5, starvation_limit=30, backfill_slack=2)
    assert policy.name == "fairshare+sessions+reservations"
    assert policy == ReservationPolicy(SessionPolicy(FairSharePolicy(0.5), 30.0), 2.0)
    assert build_policy("priority", sessions=False, reservations=False) == PriorityPolicy()
    assert build_policy("fifo", reservations=False).name == "fifo+sessions"


def test_build_policy_rejects_unknown_names_and_options() -> None:
    with pytest.raises(PolicyError, match="fifo, priority, fairshare") as caught:
        build_policy("lottery")
    assert isinstance(caught.value, QhpcError)
    with pytest.raises(PolicyError, match="age_weight"):
        build_policy("fifo", age_weight=1.0)
    with pytest.raises(PolicyError, match="starvation_limit"):
        build_policy("fifo", sessions=False, starvation_limit=1.0)
    with pytest.raises(PolicyError, match="non-negative"):
        build_policy("priority", age_weight=-1.0)
    with pytest.raises(PolicyError, match="number"):
        build_policy("priority", age_weight="fast")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="non-negative"):
        SessionPolicy(FifoPolicy(), starvation_limit=math.nan)
    with pytest.raises(PolicyError, match="non-negative"):
        FairSharePolicy(age_weight=math.inf)
    assert SessionPolicy(FifoPolicy(), starvation_limit=math.inf).starvation_limit == math.inf


# --- usage ---------------------------------------------------------------------------------


def test_usage_decays_by_half_each_half_life() -> None:
    tracker = UsageTracker(half_life=100.0)
    tracker.record("a", 80.0, at=0.0)
    assert tracker.usage("a", 0.0) == 80.0
    assert tracker.usage("a", 100.0) == pytest.approx(40.0)
    assert tracker.usage("a", 300.0) == pytest.approx(10.0)
    assert tracker.usage("nobody", 300.0) == 0.0


def test_usage_accumulates_incrementally_and_tolerates_out_of_order_records() -> None:
    charges = [(10.0, 5.0), (20.0, 50.0), (7.0, 30.0), (3.0, 120.0)]
    tracker = UsageTracker(half_life=60.0)
    for seconds, at in charges:
        tracker.record("a", seconds, at)
    expected = sum(s * 2 ** (-(200.0 - at) / 60.0) for s, at in charges)
    assert tracker.usage("a", 200.0) == pytest.approx(expected)
    assert tracker.snapshot(200.0) == {"a": pytest.approx(expected)}
    assert tracker.accounts() == ["a"]


@pytest.mark.parametrize("half_life", [0.0, -1.0, math.nan, math.inf])
def test_usage_rejects_bad_half_life(half_life: float) -> None:
    with pytest.raises(PolicyError, match="half_life"):
        UsageTracker(half_life=half_life)


def test_usage_rejects_negative_charges() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        UsageTracker().record("a", -1.0, at=0.0)


# --- properties ----------------------------------------------------------------------------

ACCOUNTS = st.sampled_from(["a", "b", "c"])
SESSION_IDS = ["s1", "s2", "s3"]
TIMES = st.floats(0, 200, allow_nan=False)
ALL_POLICIES: list[Policy] = [
    FifoPolicy(),
    PriorityPolicy(),
    FairSharePolicy(),
    FairSharePolicy(age_weight=0.01),
    SessionPolicy(PriorityPolicy(), starvation_limit=20),
    ReservationPolicy(FifoPolicy(), backfill_slack=3),
    *(build_policy(name) for name in POLICIES),
]


@st.composite
def views(draw: st.DrawFn) -> SchedulingView:
    size = draw(st.integers(0, 12))
    times = draw(st.lists(TIMES, min_size=size, max_size=size, unique=True))
    queue = [
        QueuedTask(
            task_id=f"t{i}",
            job_id=f"j{i % 3}",
            resource=draw(st.sampled_from([QPU, QPU, QPU, "other"])),
            account=draw(ACCOUNTS),
            user="u",
            submitted_at=at,
            priority=draw(st.integers(-2, 2)),
            session_id=draw(st.none() | st.sampled_from([*SESSION_IDS, "gone"])),
            estimated_seconds=draw(st.floats(0, 30)),
        )
        for i, at in enumerate(times)
    ]
    sessions = [
        SessionLease(
            sid,
            draw(st.sampled_from([QPU, "other"])),
            draw(ACCOUNTS),
            "u",
            draw(TIMES),
            draw(TIMES),
            draw(st.sampled_from(SessionMode)),
        )
        for sid in draw(st.lists(st.sampled_from(SESSION_IDS), max_size=3, unique=True))
    ]
    reservations = [
        Reservation(
            f"r{i}", QPU, draw(ACCOUNTS), start, start + draw(st.floats(0, 50)), draw(st.booleans())
        )
        for i, start in enumerate(draw(st.lists(TIMES, max_size=3)))
    ]
    return SchedulingView(
        now=draw(TIMES),
        resource=QPU,
        queue=queue,
        sessions=sessions,
        reservations=reservations,
        usage=draw(st.dictionaries(ACCOUNTS, st.floats(0, 1e4))),
        shares=draw(st.dictionaries(ACCOUNTS, st.floats(0, 5))),
        last_batch_start=draw(st.none() | TIMES),
        rhythms={
            sid: SessionRhythm(
                draw(TIMES),
                draw(st.none() | TIMES),
                draw(st.none() | TIMES),
                draw(st.floats(0, 10)),
            )
            for sid in draw(st.lists(st.sampled_from(SESSION_IDS), max_size=3, unique=True))
        },
    )


@settings(max_examples=150, deadline=None)
@given(view=views(), data=st.data())
def test_policies_answer_with_a_queued_task_deterministically(
    view: SchedulingView, data: st.DataObject
) -> None:
    shuffled = SchedulingView(
        now=view.now,
        resource=view.resource,
        queue=data.draw(st.permutations(view.queue)),
        sessions=data.draw(st.permutations(view.sessions)),
        reservations=data.draw(st.permutations(view.reservations)),
        usage=view.usage,
        shares=view.shares,
        last_batch_start=view.last_batch_start,
        rhythms=view.rhythms,
    )
    on_resource = [t for t in view.queue if t.resource == view.resource]
    for policy in ALL_POLICIES:
        chosen = policy.next_task(view)
        assert chosen is None or (chosen in view.queue and chosen.resource == view.resource)
        assert policy.next_task(view) == chosen
        assert policy.next_task(shuffled) == chosen, policy.name
        if isinstance(policy, FifoPolicy | PriorityPolicy | FairSharePolicy):
            assert (chosen is None) == (not on_resource)


# --- idle until the answer can change; unknown lengths ------------------------------------


def test_an_unknown_length_never_fits_a_gap_and_runs_once_the_session_is_ignored() -> None:
    policy = SessionPolicy(FifoPolicy())
    thinking = {"s1": SessionRhythm(released_at=99.0, submitted_at=98.0, think=2.0, spread=0.0)}
    unknown = task("b-unknown", 50.0, seconds=math.inf)
    kw: dict[str, Any] = {"sessions": [lease("s1")], "rhythms": thinking}
    # The session is expected at 101; its patience (think / 10) ends at 101.2.
    assert pick(policy, [unknown], 100.0, **kw) is None
    assert pick(policy, [task("b-short", 50.0, seconds=0.5)], 100.0, **kw) == "b-short"
    wake = revisit_at(policy, view([unknown], 100.0, **kw))
    assert wake == pytest.approx(101.2) and wake > 101.2
    assert pick(policy, [unknown], wake, **kw) == "b-unknown"
    # Nobody expected: an unknown length runs at once (a resource's first task).
    assert pick(policy, [unknown], 100.0, sessions=[lease("s1")]) == "b-unknown"


def test_revisit_at_names_window_edges_and_starvation_relief() -> None:
    reserved = ReservationPolicy(FifoPolicy())
    queue = [task("long", 90.0, "b", seconds=50.0)]
    kw: dict[str, Any] = {"reservations": [window("a", 120.0, 130.0)]}
    assert pick(reserved, queue, **kw) is None  # would overrun the window ahead
    assert revisit_at(reserved, view(queue, **kw)) == 120.0
    assert revisit_at(FifoPolicy(), view(queue)) == math.inf
    session = SessionPolicy(FifoPolicy(), starvation_limit=60.0)
    waiting = [task("b", 90.0), task("s", 95.0, session="s1")]
    assert pick(session, waiting, sessions=[lease("s1")]) == "s"
    due = revisit_at(session, view(waiting, sessions=[lease("s1")]))
    assert due == pytest.approx(150.0) and due > 150.0
    assert pick(session, waiting, due, sessions=[lease("s1")]) == "b"


@settings(max_examples=200, deadline=None)
@given(
    view=backfill_views(),
    limit=st.sampled_from([20.0, 60.0, math.inf]),
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_an_idle_answer_holds_until_revisit_at(
    view: SchedulingView, limit: float, fraction: float
) -> None:
    policy = SessionPolicy(FairSharePolicy(), starvation_limit=limit)
    if policy.next_task(view) is not None:
        return
    wake = revisit_at(policy, view)
    assert wake > view.now
    later = view.now + fraction * (min(wake, view.now + 1000.0) - view.now)
    # Rounding may land a fraction < 1 of a gap of a few ulps on ``wake`` itself (found
    # by hypothesis: now 99.99999999999999, wake 100.00000000000001): strictly before it.
    later = max(view.now, min(later, math.nextafter(wake, -math.inf)))
    assert policy.next_task(replace(view, now=later)) is None
