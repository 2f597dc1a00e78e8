"""The durability contract of session tasks (docs/broker.md, "Write-behind of session tasks").

A session task's result is released once the journal has *logged* it, before the
group commit; a crash of the broker between the two loses neither the task nor its
usage: the next start replays the log, and books every task exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.broker import journal
from qhpc.broker.service import Broker, BrokerConfig, journal_dir
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask, TaskStatus
from qhpc.resources.null import NullResource
from qhpc.store import Store, StoreError

TASKS = 25

#: a broker that releases TASKS results and is then killed before any group commit
CRASHING_BROKER = """
import sys, time, json
from qiskit.circuit import QuantumCircuit
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask
from qhpc.store import Store

store = Store.open(sys.argv[1])
registry = ResourceRegistry([ResourceSpec("null", "null", {})])
# No commit for an hour: everything released below exists only in the journal's log.
broker = Broker(store, registry, BrokerConfig(policy="fifo", journal_commit_interval=3600))
broker.start()
session, _ = broker.open_session(
    user="ada", account="physics", resource="null", deadline=time.time() + 3600
)
circuit = QuantumCircuit(1, 1)
circuit.measure(0, 0)
released = []
for _ in range(int(sys.argv[2])):
    outcome = broker.run_session_task(session.session_id, SamplerTask((circuit,), shots=7))
    assert outcome.state == "completed" and outcome.result is not None
    released.append(outcome.task_id)
print(json.dumps({"session": session.session_id, "released": released}), flush=True)
time.sleep(3600)
"""


def null_broker(store: Store, **config: object) -> tuple[Broker, ResourceRegistry]:
    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    broker = Broker(store, registry, BrokerConfig(policy="fifo", **config))  # type: ignore[arg-type]
    broker.start()
    return broker, registry


def measured() -> QuantumCircuit:
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    return circuit


def test_results_released_before_the_commit_survive_kill_9_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "broker.db"
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHING_BROKER, str(db), str(TASKS)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, "the broker process ended before releasing its results"
        report = json.loads(line)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    released = report["released"]
    assert len(released) == TASKS

    with Store.open(db) as store:
        # The kill came before any commit: the store alone would have lost them all.
        assert store.tasks_of_job(report["session"]) == []
        assert store.usage() == []
        assert list((tmp_path / "broker.db.journal").glob("*.log"))

        broker, registry = null_broker(store)  # start() replays the log
        try:
            tasks = store.tasks_of_job(report["session"])
            assert sorted(t.task_id for t in tasks) == sorted(released)
            assert {t.state for t in tasks} == {"completed"}
            assert all(store.task_result(t.task_id) is not None for t in tasks)
            booked = [u.task_id for u in store.usage()]
            assert sorted(booked) == sorted(released)
            assert sum(u.shots for u in store.usage()) == 7 * TASKS
            assert store.get_job(report["session"]).task_count == TASKS
        finally:
            broker.stop()
            registry.close()
        assert not list((tmp_path / "broker.db.journal").glob("*.log"))

        broker, registry = null_broker(store)  # a second start books nothing twice
        broker.stop()
        registry.close()
        assert sorted(u.task_id for u in store.usage()) == sorted(released)


def test_the_log_is_deleted_once_committed_and_a_live_segment_is_never_replayed(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "b.db") as store:
        broker, registry = null_broker(store)
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=time.time() + 600
            )
            for _ in range(5):
                broker.run_session_task(session.session_id, SamplerTask((measured(),), shots=1))
            log_dir = broker.journal.log_dir
            assert log_dir == tmp_path / "b.db.journal"
            # Another broker starting on the same directory now must not take over the
            # segment this one is still writing (it holds an flock on it).
            assert broker.journal.recover() == 0
            assert broker.journal.flush(30)
            assert broker.journal.uncommitted == 0
            # Committed segments are gone; at most an empty one opened ahead is left.
            assert [p.stat().st_size for p in log_dir.glob("*.log")] in ([], [0])
            assert len(store.tasks_of_job(session.session_id)) == 5
        finally:
            broker.stop()
            registry.close()


def test_without_a_writable_log_results_wait_for_the_commit(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with Store.open(tmp_path / "c.db") as store:
        broker, registry = null_broker(
            store, journal_dir=str(blocker / "journal"), journal_commit_interval=3600
        )
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=time.time() + 600
            )
            outcome = broker.run_session_task(
                session.session_id, SamplerTask((measured(),), shots=3)
            )
            assert outcome.state == "completed"
            # Released only after the commit: the store has it already.
            assert [t.task_id for t in store.tasks_of_job(session.session_id)] == [outcome.task_id]
            assert [u.task_id for u in store.usage()] == [outcome.task_id]
        finally:
            broker.stop()
            registry.close()


def test_journal_directory_defaults(tmp_path: Path) -> None:
    with Store.open(tmp_path / "x.db") as store:
        assert journal_dir(store, None) == tmp_path / "x.db.journal"
        assert journal_dir(store, str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    with Store.open(":memory:") as memory:
        assert journal_dir(memory, None) is None


# -- the synchronous execution entry point of local resources ------------------------


@pytest.fixture
def null() -> Iterator[NullResource]:
    resource = NullResource("null")
    yield resource
    resource.close()


def test_an_idle_local_resource_runs_a_task_on_the_callers_thread(null: NullResource) -> None:
    done = null.run_now(SamplerTask((measured(),), shots=5), threading.Event())
    assert done is not None
    status, result, error = done
    assert status is TaskStatus.COMPLETED and error is None
    assert result is not None and result.circuits[0].counts == {"0": 5}  # type: ignore[union-attr]
    assert null._worker is None  # no worker thread was needed
    assert not null.status().busy


def test_a_busy_local_resource_declines_and_a_stop_request_cancels(null: NullResource) -> None:
    gate = threading.Event()
    original = null._sample

    def slow_sample(*args: object) -> object:
        gate.wait(10)
        return original(*args)  # type: ignore[arg-type]

    null._sample = slow_sample  # type: ignore[assignment,method-assign]
    queued = null.task_start(SamplerTask((measured(),), shots=1))
    deadline = time.monotonic() + 10
    while not null.status().busy:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert null.run_now(SamplerTask((measured(),), shots=1), threading.Event()) is None
    gate.set()
    assert null.task_wait(queued, timeout=10) is TaskStatus.COMPLETED

    stop = threading.Event()
    stop.set()
    done = null.run_now(SamplerTask((measured(),), shots=1), stop)
    assert done is not None and done[0] is TaskStatus.CANCELLED


# -- a failing store: nothing released is dropped --------------------------------------


class FlakyCommits:
    """Makes the journal's writer (the store in process, or the committer process)
    fail ``failures`` times, then work."""

    def __init__(self, writer: journal.Writer, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self._real = writer.record_finished_tasks
        writer.record_finished_tasks = self  # type: ignore[method-assign]

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreError("database error (test): the server restarted")
        return self._real(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("in_process", [True, False], ids=["in-process", "committer"])
@pytest.mark.parametrize("failures", [1, 4])
def test_a_failing_commit_is_retried_and_nothing_released_is_lost(
    tmp_path: Path, failures: int, in_process: bool
) -> None:
    with Store.open(tmp_path / "f.db") as store:
        broker, registry = null_broker(store, commit_in_process=in_process)
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=time.time() + 600
            )
            flaky = FlakyCommits(broker.journal.writer, failures)
            outcome = broker.run_session_task(
                session.session_id, SamplerTask((measured(),), shots=3)
            )
            assert outcome.state == "completed"  # released from the log
            assert broker.journal.flush(30)
            assert flaky.calls > failures
            assert [t.task_id for t in store.tasks_of_job(session.session_id)] == [outcome.task_id]
            assert [u.task_id for u in store.usage()] == [outcome.task_id]
            assert broker.journal.uncommitted == 0
            assert not (tmp_path / "f.db.journal" / "dead-letter.msgpack").exists()
        finally:
            broker.stop()
            registry.close()


def test_while_the_store_fails_the_log_and_the_task_in_memory_are_kept(tmp_path: Path) -> None:
    with Store.open(tmp_path / "g.db") as store:
        broker, registry = null_broker(store)
        log_dir = tmp_path / "g.db.journal"
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=time.time() + 600
            )
            flaky = FlakyCommits(broker.journal.writer, 10**9)  # down for good
            outcome = broker.run_session_task(
                session.session_id, SamplerTask((measured(),), shots=3)
            )
            deadline = time.monotonic() + 30
            while flaky.calls < 3:  # retried, again and again
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert broker.journal.uncommitted == 1
            assert broker.get_task(outcome.task_id).state == "completed"  # still in memory
            assert sum(p.stat().st_size for p in log_dir.glob("*.log")) > 0
        finally:
            broker.stop()  # gives up: the log stays for the next start
            registry.close()
        assert store.tasks_of_job(session.session_id) == []
        assert sum(p.stat().st_size for p in log_dir.glob("*.log")) > 0

        broker, registry = null_broker(store)  # recover() stores it
        broker.stop()
        registry.close()
        assert [u.task_id for u in store.usage()] == [outcome.task_id]
        assert [p.stat().st_size for p in log_dir.glob("*.log")] in ([], [0])


def test_a_task_the_store_refuses_for_good_goes_to_the_dead_letter_file(tmp_path: Path) -> None:
    with Store.open(tmp_path / "h.db") as store:
        broker, registry = null_broker(store, journal_commit_interval=3600)
        log_dir = tmp_path / "h.db.journal"
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=time.time() + 600
            )
            outcome = broker.run_session_task(
                session.session_id, SamplerTask((measured(),), shots=3)
            )
            # The session's job ends behind the journal's back: the store refuses the task.
            store.set_job_state(session.session_id, "completed", finished_at=time.time())
            assert broker.journal.flush(30)
            assert broker.journal.uncommitted == 0
        finally:
            broker.stop()
            registry.close()
        assert store.tasks_of_job(session.session_id) == []
        dead = list(journal._read_segment(log_dir / journal.DEAD_LETTER))
        assert [(t.task_id, o.state, o.shots) for t, o in dead] == [
            (outcome.task_id, "completed", 3)
        ]
        assert [p.stat().st_size for p in log_dir.glob("*.log")] in ([], [0])
