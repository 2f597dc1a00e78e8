"""Shot chunks of batch tasks: split and merge properties, and the live broker's
cooperative pre-emption at chunk boundaries."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit.circuit import QuantumCircuit

import qhpc.broker.chunking as chunking
import qhpc.broker.executor as executor_module
from qhpc.broker.chunking import chunk_seed, merge_results, plan_chunks, shot_chunks
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import (
    EstimatorResult,
    EstimatorTask,
    ResourceRegistry,
    ResourceSpec,
    SampledCircuit,
    SamplerResult,
    SamplerTask,
)
from qhpc.store import Store


def _flip() -> QuantumCircuit:
    circuit = QuantumCircuit(1, 1)
    circuit.x(0)
    circuit.measure(0, 0)
    return circuit


# -- split ---------------------------------------------------------------------
@given(
    shots=st.integers(1, 200_000),
    fixed=st.floats(0, 0.05),
    per_shot=st.floats(1e-6, 1e-3),
    bound=st.floats(0.01, 2.0),
)
def test_chunks_keep_every_shot_and_respect_the_bound(
    shots: int, fixed: float, per_shot: float, bound: float
) -> None:
    sizes = shot_chunks(shots, fixed, per_shot, bound)
    assert sum(sizes) == shots
    assert all(s >= 1 for s in sizes)
    assert max(sizes) - min(sizes) <= 1
    assert len(sizes) <= chunking.MAX_CHUNKS
    if len(sizes) > 1 and len(sizes) < chunking.MAX_CHUNKS:
        assert fixed + per_shot * max(sizes) <= bound * (1 + 1e-9)
    if fixed + per_shot * shots <= bound:
        assert sizes == [shots]


def test_no_chunks_when_off_or_when_the_overhead_alone_exceeds_the_bound() -> None:
    assert shot_chunks(10_000, 0.02, 1e-4, None) == [10_000]
    assert shot_chunks(10_000, 0.5, 1e-4, 0.1) == [10_000]
    assert len(shot_chunks(10_000, 0.02, 1e-4, 0.1)) > 1


@given(seed=st.one_of(st.none(), st.integers(-(2**40), 2**40)), count=st.integers(1, 64))
def test_chunk_seeds_are_deterministic_and_distinct(seed: int | None, count: int) -> None:
    seeds = [chunk_seed(seed, i) for i in range(count)]
    assert seeds == [chunk_seed(seed, i) for i in range(count)]
    assert seeds[0] == seed
    if seed is None:
        assert all(s is None for s in seeds)
    else:
        assert len(set(seeds)) == count


def test_plan_splits_by_the_resources_estimate_and_keeps_exact_tasks_whole() -> None:
    task = SamplerTask((_flip(),), shots=10_000, seed=5)

    def estimate(payload: Any) -> float:
        return 0.02 + payload.shots * 1e-4

    chunks = plan_chunks(task, estimate, 0.1)
    assert len(chunks) > 1
    assert sum(c.shots for c in chunks if isinstance(c, SamplerTask)) == 10_000
    assert all(estimate(c) <= 0.1 + 1e-12 for c in chunks)
    assert [c.seed for c in chunks] == [chunk_seed(5, i) for i in range(len(chunks))]
    exact = EstimatorTask.create(_flip().remove_final_measurements(inplace=False), "Z")
    assert plan_chunks(exact, lambda _: 100.0, 0.1) == [exact]
    assert plan_chunks(task, lambda _: None, 0.1) == [task]


# -- merge ---------------------------------------------------------------------
counts_st = st.dictionaries(
    st.sampled_from(["00", "01", "10", "11"]), st.integers(1, 50), min_size=1
)


@given(parts=st.lists(counts_st, min_size=1, max_size=6))
def test_merged_counts_are_the_sums_and_memory_is_concatenated(
    parts: list[dict[str, int]],
) -> None:
    results = []
    for part in parts:
        memory = tuple(k for k, v in sorted(part.items()) for _ in range(v))
        shots = sum(part.values())
        results.append(SamplerResult((SampledCircuit(part, shots, 2, memory),)))
    chunks = [SamplerTask((_flip(),), shots=sum(p.values())) for p in parts]
    merged = merge_results(chunks, results)
    assert isinstance(merged, SamplerResult)
    circuit = merged.circuits[0]
    assert circuit.shots == sum(sum(p.values()) for p in parts)
    for key in {k for p in parts for k in p}:
        assert circuit.counts[key] == sum(p.get(key, 0) for p in parts)
    assert circuit.memory == tuple(m for r in results for m in (r.circuits[0].memory or ()))
    assert merged.metadata["chunks"] == len(parts)


@settings(max_examples=50)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 5000), st.floats(-1, 1), st.floats(0, 0.5)),
        min_size=1,
        max_size=6,
    )
)
def test_estimator_values_are_shot_weighted_and_errors_combine(
    rows: list[tuple[int, float, float]],
) -> None:
    circuit = _flip().remove_final_measurements(inplace=False)
    chunks = [EstimatorTask.create(circuit, "Z", shots=n) for n, _, _ in rows]
    results = [EstimatorResult(((v,),), ((e,),), n) for n, v, e in rows]
    merged = merge_results(chunks, results)
    assert isinstance(merged, EstimatorResult)
    total = sum(n for n, _, _ in rows)
    mean = sum(n * v for n, v, _ in rows) / total
    # Variance of a weighted mean of independent estimates: sum(w_i^2 var_i).
    error = math.sqrt(sum((n / total) ** 2 * e**2 for n, _, e in rows))
    assert merged.values[0][0] == pytest.approx(mean, abs=1e-12)
    assert merged.std_errors[0][0] == pytest.approx(error, abs=1e-12)
    assert merged.shots == total


def test_estimator_chunks_of_equal_shots_shrink_the_error_like_more_shots() -> None:
    circuit = _flip().remove_final_measurements(inplace=False)
    chunks = [EstimatorTask.create(circuit, "Z", shots=1000) for _ in range(4)]
    results = [EstimatorResult(((0.5,),), ((0.02,),), 1000) for _ in range(4)]
    merged = merge_results(chunks, results)
    assert isinstance(merged, EstimatorResult)
    assert merged.std_errors[0][0] == pytest.approx(0.02 / 2)


# -- the live broker -------------------------------------------------------------
#: a 100 000-shot task is 20 modelled seconds on the emulator; at this scale 0.2 s real
TIME_SCALE = 100.0
#: real seconds per chunk: 1 modelled second, about 21 chunks for such a task
CHUNK = 0.01


@pytest.fixture
def chunked(tmp_path: Path) -> Iterator[tuple[Broker, Store]]:
    spec = ResourceSpec("qpu", "emulator", {"noise": False, "time_scale": TIME_SCALE, "seed": 7})
    registry = ResourceRegistry([spec])
    with Store.open(tmp_path / "chunks.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo", chunk_seconds=CHUNK))
        broker.start()
        try:
            yield broker, store
        finally:
            broker.stop()
    registry.close()


class _Events:
    """Order of chunk starts and session-task starts, as the executor saw them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.items: list[str] = []
        self.lock = threading.Lock()
        chunk_run, session_run = chunking.run_task, executor_module.run_task

        def chunk(*args: Any, **kwargs: Any) -> Any:
            self.add("chunk")
            return chunk_run(*args, **kwargs)

        def whole(*args: Any, **kwargs: Any) -> Any:
            self.add("whole")
            return session_run(*args, **kwargs)

        monkeypatch.setattr(chunking, "run_task", chunk)
        monkeypatch.setattr(executor_module, "run_task", whole)

    def add(self, what: str) -> None:
        with self.lock:
            self.items.append(what)

    def wait_for(self, what: str, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.items.count(what) >= count:
                    return
            assert time.monotonic() < deadline, f"never saw {count} × {what}: {self.items}"
            time.sleep(0.001)


def test_session_task_runs_after_at_most_one_chunk_of_a_long_batch_task(
    chunked: tuple[Broker, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, store = chunked
    events = _Events(monkeypatch)
    job = broker.submit(
        user="u", account="batch", resource="qpu",
        payloads=[SamplerTask((_flip(),), shots=100_000, memory=False)],
    )  # fmt: skip
    events.wait_for("chunk", 2)
    session, _ = broker.open_session(
        user="s", account="hybrid", resource="qpu", deadline=time.time() + 600
    )
    events.add("submitted")
    task_id = broker.submit_session_task(session.session_id, SamplerTask((_flip(),), shots=10))
    assert broker.wait_task(task_id, timeout=30).state == "completed"
    (batch_task,) = store.tasks_of_job(job.job_id)
    done = broker.wait_task(batch_task.task_id, timeout=30)
    assert done.state == "completed"
    with events.lock:
        order = list(events.items)
    after = order[order.index("submitted") :]
    assert "whole" in after, order
    # Between the submission and the session task's start at most one chunk began.
    assert after[: after.index("whole")].count("chunk") <= 1, order
    assert after.count("chunk") >= 1, "the batch task resumed after the session task"
    result = broker.task_result(batch_task.task_id)
    assert isinstance(result, SamplerResult)
    # Deterministic circuit: the chunked result equals the unchunked one exactly.
    assert result.circuits[0].counts == {"1": 100_000}
    assert result.circuits[0].shots == 100_000
    assert result.metadata["chunks"] == order.count("chunk") > 1
    rollup = store.usage_rollup("account")
    batch_usage = next(r for r in rollup if r["group"] == "batch")
    assert batch_usage["tasks"] == 1  # booked once, for all its chunks
    assert batch_usage["shots"] == 100_000
    assert batch_usage["qpu_seconds"] == pytest.approx(result.metadata["qpu_seconds"])
    broker.close_session(session.session_id)


def test_seeded_bell_keeps_its_shot_total_and_distribution(
    chunked: tuple[Broker, Store], bell: QuantumCircuit
) -> None:
    broker, store = chunked
    job = broker.submit(
        user="u", account="batch", resource="qpu",
        payloads=[SamplerTask((bell,), shots=50_000, seed=11, memory=True)],
    )  # fmt: skip
    (task,) = store.tasks_of_job(job.job_id)
    assert broker.wait_task(task.task_id, timeout=30).state == "completed"
    result = broker.task_result(task.task_id)
    assert isinstance(result, SamplerResult)
    counts = result.circuits[0].counts
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 50_000
    assert counts["00"] / 50_000 == pytest.approx(0.5, abs=0.02)
    assert result.circuits[0].memory is not None and len(result.circuits[0].memory) == 50_000
    assert result.metadata["chunks"] > 1


def test_cancel_between_chunks_books_the_chunks_run_once(
    chunked: tuple[Broker, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, store = chunked
    events = _Events(monkeypatch)
    job = broker.submit(
        user="u", account="batch", resource="qpu",
        payloads=[SamplerTask((_flip(),), shots=100_000)],
    )  # fmt: skip
    events.wait_for("chunk", 3)
    broker.cancel(job.job_id)
    (task,) = store.tasks_of_job(job.job_id)
    done = broker.wait_task(task.task_id, timeout=30)
    assert done.state == "cancelled"
    with events.lock:
        started = events.items.count("chunk")
    assert started < 21, "cancelled before its last chunk"
    rollup = [r for r in store.usage_rollup("account") if r["group"] == "batch"]
    assert len(rollup) == 1 and rollup[0]["tasks"] == 1
    assert rollup[0]["qpu_seconds"] > 0
    # The shots of the chunks that ran are accounted, not 0 (nor the whole task's).
    assert 0 < rollup[0]["shots"] < 100_000
    assert broker.task_result(task.task_id) is None
