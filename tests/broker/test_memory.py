"""Returning memory after a burst (broker/memory.py): only when idle and grown since
the last trim, never more often than the interval, and a real trim on glibc."""

from __future__ import annotations

import sys

import pytest

from qhpc.broker.memory import MemoryReturn, release_free_memory, resident_bytes


def test_trims_when_idle_and_grown_and_not_more_often_than_the_interval() -> None:
    now, size = [100.0], [100 << 20]
    calls: list[float] = []

    def release() -> bool:
        calls.append(now[0])
        size[0] = 110 << 20  # what the trim gave back
        return True

    memory = MemoryReturn(
        min_interval=30.0, clock=lambda: now[0], release=release, resident=lambda: size[0]
    )
    assert not memory.observe(False)  # the first look sets the baseline
    size[0] = 200 << 20
    assert not memory.observe(True)  # grown, but busy: later
    assert memory.observe(False)  # idle and grown: trimmed
    assert memory.baseline == 110 << 20
    assert not memory.observe(False)  # nothing grew since
    size[0] = 300 << 20
    now[0] += 10
    assert not memory.observe(False)  # grown again, but too soon after the last trim
    now[0] += 25
    assert memory.observe(False)
    assert calls == [100.0, 135.0] and memory.trims == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim, /proc")
def test_the_trim_really_runs_and_the_size_is_read() -> None:
    assert release_free_memory() is True
    assert resident_bytes() > 1 << 20
