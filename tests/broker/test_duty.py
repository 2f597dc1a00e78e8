"""The broker's measurement of each session's duty cycle (broker/duty.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qhpc.broker import DutyCycles, PolicyError


def loop(
    duties: DutyCycles,
    session: str,
    *,
    service: float,
    think: float,
    wait: float = 0.0,
    iterations: int,
    start: float = 0.0,
) -> float:
    """A hybrid loop: each task waits ``wait``, runs ``service``, then the program thinks
    ``think`` seconds before the next. Returns the time the last task finished."""
    now = start
    for _ in range(iterations):
        submitted, started = now, now + wait
        finished = started + service
        duties.finished(
            session, submitted_at=submitted, started_at=started, finished_at=finished,
            qpu_seconds=service,
        )  # fmt: skip
        now = finished + think
    return now - think


def bounds(service: float, think: float, wait: float, half_life: float) -> tuple[float, float]:
    """Where a steady loop's measured duty cycle S / (S + Z) lies, between just before
    and just after a task ends: the exponential weighting tilts it by at most e^{±λP},
    P the loop's period in wall time (waits included)."""
    period = service + think + wait
    rate = math.log(2) / half_life
    true = service / (service + think)
    return true * math.exp(-rate * period), min(1.0, true * math.exp(rate * period))


@settings(max_examples=60, deadline=None)
@given(
    service=st.floats(0.01, 5.0),
    think=st.floats(0.0, 10.0),
    wait=st.floats(0.0, 20.0),
)
def test_a_steady_loop_measures_service_over_service_plus_think_whatever_it_waits(
    service: float, think: float, wait: float
) -> None:
    duties = DutyCycles()
    period = service + think + wait
    # long enough for the start to have decayed to nothing (40 half-lives)
    iterations = max(10, math.ceil(40 * duties.half_life / period))
    end = loop(duties, "s", service=service, think=think, wait=wait, iterations=iterations)
    low, high = bounds(service, think, wait, duties.half_life)
    measured = duties.duty("s", end).duty
    assert measured is not None
    assert low * (1 - 1e-6) <= measured <= high * (1 + 1e-6)
    # Mid-think it is a little lower, never out of the band
    mid = duties.duty("s", end + think / 2).duty
    assert mid is not None and low * (1 - 1e-6) <= mid <= high * (1 + 1e-6)


def test_waits_in_the_queue_do_not_lighten_a_session() -> None:
    alone, crowded = DutyCycles(), DutyCycles()
    a = loop(alone, "s", service=1.0, think=2.0, iterations=200)
    b = loop(crowded, "s", service=1.0, think=2.0, wait=3.0, iterations=200)
    assert alone.duty("s", a).duty == pytest.approx(crowded.duty("s", b).duty, rel=0.05)
    # the plain ratio over wall time would have been 1/6, not 1/3
    assert crowded.duty("s", b).duty == pytest.approx(1 / 3, rel=0.05)


def test_a_pipelining_session_is_not_counted_as_waiting_while_its_own_task_runs() -> None:
    duties = DutyCycles(min_tasks=1)
    now = 0.0
    for _ in range(300):
        # two tasks sent together; the second queues behind the first, then a think
        duties.finished("s", submitted_at=now, started_at=now, finished_at=now + 1,
                        qpu_seconds=1.0)  # fmt: skip
        duties.finished("s", submitted_at=now, started_at=now + 1, finished_at=now + 2,
                        qpu_seconds=1.0)  # fmt: skip
        now += 4.0
    measured = duties.duty("s", now - 2).duty
    assert measured == pytest.approx(0.5, rel=0.05)


def test_unmeasured_until_min_tasks_have_finished() -> None:
    duties = DutyCycles(min_tasks=3)
    assert duties.duty("s", 0.0).duty is None and duties.duty("s", 0.0).tasks == 0
    end = loop(duties, "s", service=1.0, think=1.0, iterations=2)
    assert not duties.duty("s", end).measured
    end = loop(duties, "s", service=1.0, think=1.0, iterations=1, start=end + 1)
    got = duties.duty("s", end)
    assert got.measured and got.tasks == 3


def test_a_session_that_stops_sending_fades_by_its_half_life() -> None:
    duties = DutyCycles(half_life=10.0)
    end = loop(duties, "s", service=1.0, think=1.0, iterations=400)
    before = duties.duty("s", end + 1).duty
    later = duties.duty("s", end + 1 + 10.0).duty
    assert before is not None and later is not None
    assert later == pytest.approx(before / 2, rel=0.02)
    assert duties.duty("s", end + 1000.0).duty == pytest.approx(0.0, abs=1e-9)


def test_the_first_task_starts_the_clock_not_the_session_opening() -> None:
    duties = DutyCycles(min_tasks=1)
    loop(duties, "s", service=1.0, think=1.0, iterations=3, start=1000.0)
    # from t=1000: busy 3 of 5 seconds (weighted) — nothing of the 1000 s before counts
    assert duties.duty("s", 1005.0).duty == pytest.approx(0.6, rel=0.05)


def test_prior_is_the_median_of_closed_and_measured_open_sessions() -> None:
    duties = DutyCycles(min_tasks=2)
    assert duties.prior(0.0) is None
    for name, think in (("a", 9.0), ("b", 3.0), ("c", 1.0)):
        end = loop(duties, name, service=1.0, think=think, iterations=400)
        duties.forget(name, end)
    duties.forget("never-seen", 0.0)  # nothing to remember
    assert duties.prior(0.0) == pytest.approx(0.25, rel=0.05)  # median of 0.1, 0.25, 0.5
    end = loop(duties, "open", service=1.0, think=0.0, iterations=400)
    # four values now: 0.1, 0.25, 0.5, 1.0
    assert duties.prior(end) == pytest.approx((0.25 + 0.5) / 2, rel=0.05)
    loop(duties, "young", service=1.0, think=0.0, iterations=1)  # unmeasured: left out
    assert duties.prior(end) == pytest.approx((0.25 + 0.5) / 2, rel=0.05)


def test_history_keeps_only_the_latest_sessions() -> None:
    duties = DutyCycles(min_tasks=1, history=2)
    for index, think in enumerate((0.0, 1.0, 3.0)):  # duties 1, 0.5, 0.25
        end = loop(duties, f"s{index}", service=1.0, think=think, iterations=400)
        duties.forget(f"s{index}", end)
    assert duties.prior(0.0) == pytest.approx((0.5 + 0.25) / 2, rel=0.05)


def test_each_group_has_its_own_prior() -> None:
    duties = DutyCycles(min_tasks=1)

    def session(name: str, think: float, group: str) -> None:
        now = 0.0
        for _ in range(200):
            duties.finished(name, submitted_at=now, started_at=now, finished_at=now + 1,
                            qpu_seconds=1.0, group=group)  # fmt: skip
            now += 1 + think
        duties.forget(name, now - think)

    session("a", 1.0, "fast-qpu")
    session("b", 9.0, "slow-qpu")
    assert duties.prior(0.0, "fast-qpu") == pytest.approx(0.5, rel=0.05)
    assert duties.prior(0.0, "slow-qpu") == pytest.approx(0.1, rel=0.1)
    assert duties.prior(0.0) is None  # the default group saw nothing


def test_snapshot_keeps_the_order_asked() -> None:
    duties = DutyCycles(min_tasks=1)
    loop(duties, "b", service=1.0, think=1.0, iterations=5)
    got = duties.snapshot(["x", "b"], 10.0)
    assert [d.session_id for d in got] == ["x", "b"]
    assert got[0].duty is None and got[1].duty is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"half_life": 0.0},
        {"half_life": -1.0},
        {"half_life": math.inf},
        {"half_life": math.nan},
        {"min_tasks": 0},
        {"history": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(PolicyError):
        DutyCycles(**kwargs)  # type: ignore[arg-type]


def test_times_that_are_not_numbers_are_ignored() -> None:
    duties = DutyCycles(min_tasks=1)
    duties.finished("s", submitted_at=math.nan, started_at=0.0, finished_at=1.0, qpu_seconds=1)
    duties.finished("s", submitted_at=0.0, started_at=0.0, finished_at=math.inf, qpu_seconds=1)
    assert duties.duty("s", 5.0).tasks == 0
    # a task that never started used nothing; its session is still seen
    duties.finished("s", submitted_at=0.0, started_at=math.nan, finished_at=1.0, qpu_seconds=0)
    assert duties.duty("s", 1.0).tasks == 1


event = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.floats(0.0, 1e4),  # submitted
    st.floats(0.0, 100.0),  # waited
    st.floats(0.0, 100.0),  # ran
    st.floats(-1.0, 200.0),  # qpu seconds reported (may disagree with the run, or be < 0)
)


@settings(max_examples=100, deadline=None)
@given(events=st.lists(event, max_size=40), later=st.floats(0.0, 1e5))
def test_any_sequence_of_events_gives_a_fraction(
    events: list[tuple[str, float, float, float, float]], later: float
) -> None:
    """Out-of-order ends, reported device time longer than the run, negative reports:
    a duty cycle is always in [0, 1] and the prior too."""
    duties = DutyCycles(min_tasks=1)
    for session, submitted, waited, ran, qpu in events:
        duties.finished(
            session, submitted_at=submitted, started_at=submitted + waited,
            finished_at=submitted + waited + ran, qpu_seconds=qpu,
        )  # fmt: skip
    for session in "abc":
        duty = duties.duty(session, later).duty
        assert duty is None or 0.0 <= duty <= 1.0
    prior = duties.prior(later)
    assert prior is None or 0.0 <= prior <= 1.0
