"""The run-time limit's watchdog (broker/runner.py): one thread that is woken only
when a new deadline is earlier than the one it sleeps on, and a heap that does not
grow with finished tasks."""

from __future__ import annotations

import threading
import time

from qhpc.broker.runner import _Watchdog


def test_an_earlier_deadline_registered_later_still_fires_on_time() -> None:
    watchdog = _Watchdog()
    late, soon = threading.Event(), threading.Event()
    far = watchdog.watch(3600, late)
    started = time.monotonic()
    near = watchdog.watch(0.2, soon)
    assert soon.wait(5)
    assert 0.15 <= time.monotonic() - started < 3
    assert near.passed and not far.passed and not late.is_set()


def test_finished_tasks_leave_the_heap_without_waking_the_thread() -> None:
    watchdog = _Watchdog()
    for _ in range(10_000):
        deadline = watchdog.watch(600, threading.Event())
        deadline.done = True  # the task finished well inside its limit
    assert len(watchdog._heap) == 1  # only the newest, not yet seen finished
    stop = threading.Event()
    watchdog.watch(0.1, stop)
    assert stop.wait(5)  # still watching after all that


def test_a_deadline_after_the_one_it_sleeps_on_fires_when_its_turn_comes() -> None:
    watchdog = _Watchdog()
    first, second = threading.Event(), threading.Event()
    watchdog.watch(0.1, first)
    watchdog.watch(0.3, second)  # later than the thread's wake-up: no notify needed
    assert first.wait(5)
    assert not second.is_set()
    assert second.wait(5)


def test_a_task_that_finished_before_the_thread_looked_does_not_make_it_wake_per_task() -> None:
    """The watchdog's thread often finds the heap empty (inline tasks finish in
    microseconds); it must not then need a notify from every next task."""
    watchdog = _Watchdog()
    wakes = 0
    notify = watchdog._cond.notify

    def counted(n: int = 1) -> None:
        nonlocal wakes
        wakes += 1
        notify(n)

    watchdog._cond.notify = counted  # type: ignore[method-assign]
    first = watchdog.watch(600, threading.Event())
    first.done = True
    deadline = time.monotonic() + 5
    while watchdog._wakes_at > time.monotonic() + 3600:  # until the thread has slept once
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(1000):
        watchdog.watch(600, threading.Event()).done = True
        time.sleep(0)
    assert wakes <= 2


def test_finished_tasks_behind_a_long_one_do_not_pile_up() -> None:
    """A long task at the top of the heap (a 10-minute QPU task) must not keep every
    finished session step below it for as long as it runs."""
    watchdog = _Watchdog()
    long_running = watchdog.watch(600, threading.Event())
    for _ in range(100_000):
        watchdog.watch(600, threading.Event()).done = True
    assert len(watchdog._heap) <= 2048
    assert any(entry[2] is long_running for entry in watchdog._heap)  # still watched
