"""The broker core on a real store and real local resources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import (
    AerResource,
    PayloadError,
    ResourceRegistry,
    ResourceSpec,
    SamplerResult,
    SamplerTask,
    UnknownResourceError,
)
from qhpc.store import AccountRecord, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "broker.db") as opened:
        yield opened


@pytest.fixture
def broker(store: Store) -> Iterator[Broker]:
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 3})])
    service = Broker(store, registry, BrokerConfig(policy="fifo"))
    service.start()
    yield service
    service.stop()
    registry.close()


def test_batch_job_runs_and_is_accounted(
    broker: Broker, store: Store, bell: QuantumCircuit
) -> None:
    store.upsert_account(AccountRecord("chem", 1.0, None))
    job = broker.submit(
        user="alice", account="chem", resource="aer",
        payloads=[SamplerTask((bell,), shots=100) for _ in range(5)],
    )  # fmt: skip
    tasks = store.tasks_of_job(job.job_id)
    assert len(tasks) == 5
    for task in tasks:
        done = broker.wait_task(task.task_id, timeout=60)
        assert done.state == "completed"
        result = broker.task_result(task.task_id)
        assert isinstance(result, SamplerResult)
        assert sum(result.circuits[0].counts.values()) == 100
    assert store.get_job(job.job_id).state == "completed"
    rollup = store.usage_rollup("account")
    assert rollup[0]["group"] == "chem"
    assert rollup[0]["tasks"] == 5
    assert rollup[0]["shots"] == 500


def test_admission_errors_leave_nothing_behind(
    broker: Broker, store: Store, bell: QuantumCircuit
) -> None:
    wide = QuantumCircuit(40, 1)
    wide.measure(0, 0)
    with pytest.raises(UnknownResourceError):
        broker.submit(user="a", account="x", resource="nope", payloads=[SamplerTask((bell,), 1)])
    with pytest.raises(PayloadError, match="task 1: shots=2000000 exceeds"):
        broker.submit(
            user="a", account="x", resource="aer",
            payloads=[SamplerTask((bell,), 1), SamplerTask((bell,), 2_000_000)],
        )  # fmt: skip
    assert store.list_jobs() == []


def test_cancel_stops_queued_work(broker: Broker, store: Store, bell: QuantumCircuit) -> None:
    big = tuple(bell.copy(name=f"c{i}") for i in range(2000))
    job = broker.submit(
        user="a", account="x", resource="aer",
        payloads=[SamplerTask(big, shots=500) for _ in range(4)],
    )  # fmt: skip
    affected = broker.cancel(job.job_id)
    assert affected
    for task in store.tasks_of_job(job.job_id):
        assert broker.wait_task(task.task_id, timeout=60).state in ("cancelled", "completed")
    assert store.get_job(job.job_id).state in ("cancelled", "completed")


def test_restart_requeues_and_finishes(tmp_path: Path, bell: QuantumCircuit) -> None:
    path = tmp_path / "restart.db"
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {})])
    with Store.open(path) as store:
        first = Broker(store, registry)  # not started: nothing executes
        job = first.submit(
            user="a", account="x", resource="aer", payloads=[SamplerTask((bell,), 10)] * 3
        )
    with Store.open(path) as store:
        second = Broker(store, registry)
        second.start()
        try:
            for task in store.tasks_of_job(job.job_id):
                assert second.wait_task(task.task_id, timeout=60).state == "completed"
        finally:
            second.stop()
    registry.close()
    assert isinstance(AerResource, type)


def test_session_tasks_tokens_and_close(broker: Broker, store: Store, bell: QuantumCircuit) -> None:
    import time as _time

    from qhpc.broker.scheduler import SessionMode
    from qhpc.security import AuthError, Role, TokenRevoked

    session, secret = broker.open_session(
        user="bob", account="phys", resource="aer", deadline=_time.time() + 60,
        mode=SessionMode.MULTIPLEX, slurm_job_id="42",
    )  # fmt: skip
    principal = broker.access.authenticate(secret)
    assert principal.role is Role.SESSION
    assert principal.session_id == session.session_id
    assert principal.resource == "aer"
    ids = [
        broker.submit_session_task(session.session_id, SamplerTask((bell,), 20)) for _ in range(3)
    ]
    for task_id in ids:
        assert broker.wait_task(task_id, timeout=60).state == "completed"
    assert [t.index for t in store.tasks_of_job(session.session_id)] == [0, 1, 2]
    broker.close_session(session.session_id)
    with pytest.raises(TokenRevoked, match="revoked"):  # an AuthError, typed for clients
        broker.access.authenticate(secret)
    assert issubclass(TokenRevoked, AuthError)
    assert store.get_job(session.session_id).state == "completed"
    from qhpc.broker import BrokerError, SessionClosed

    with pytest.raises(SessionClosed, match="closed"):  # a BrokerError: still 409
        broker.submit_session_task(session.session_id, SamplerTask((bell,), 1))
    assert issubclass(SessionClosed, BrokerError)


def test_expired_sessions_are_closed(broker: Broker, store: Store) -> None:
    import time as _time

    from qhpc.security import AuthError

    session, secret = broker.open_session(
        user="bob", account="phys", resource="aer", deadline=_time.time() + 0.2
    )
    _time.sleep(0.3)
    with pytest.raises(AuthError, match="expired"):
        broker.access.authenticate(secret)
    broker.close_expired_sessions()  # the broker's reaper may have been first; both end closed
    assert store.get_session(session.session_id).closed_at is not None


def test_exclusive_session_is_single(broker: Broker) -> None:
    import time as _time

    from qhpc.broker import BrokerError
    from qhpc.broker.scheduler import SessionMode

    deadline = _time.time() + 60
    broker.open_session(
        user="a", account="x", resource="aer", deadline=deadline, mode=SessionMode.EXCLUSIVE
    )
    with pytest.raises(BrokerError, match="already held by an exclusive session"):
        broker.open_session(
            user="b", account="y", resource="aer", deadline=deadline, mode=SessionMode.EXCLUSIVE
        )


def test_clean_stop_requeues_the_running_task_instead_of_cancelling_it(
    tmp_path: Path, bell: QuantumCircuit
) -> None:
    import time as _time

    path = tmp_path / "stop.db"
    timing = {"task_overhead": 30.0, "circuit_overhead": 0.0, "shot_time": 0.0}
    slow = ResourceSpec("qpu", "emulator", {"noise": False, "timing": timing})
    registry = ResourceRegistry([slow])
    with Store.open(path) as store:
        first = Broker(store, registry)
        first.start()
        job = first.submit(
            user="a", account="x", resource="qpu", payloads=[SamplerTask((bell,), 5)]
        )
        (task,) = store.tasks_of_job(job.job_id)
        deadline = _time.monotonic() + 30
        while store.get_task(task.task_id).state != "running":
            assert _time.monotonic() < deadline
            _time.sleep(0.01)
        first.stop()
        assert store.get_task(task.task_id).state == "running"  # not cancelled
        assert store.get_job(job.job_id).state != "cancelled"
    registry.close()
    fast = ResourceSpec("qpu", "emulator", {"noise": False, "time_scale": 1e6})
    registry = ResourceRegistry([fast])
    with Store.open(path) as store:
        second = Broker(store, registry)
        second.start()
        try:
            assert second.wait_task(task.task_id, timeout=60).state == "completed"
        finally:
            second.stop()
    registry.close()


def test_restart_stops_orphaned_runs_on_devices_that_outlive_the_broker(
    tmp_path: Path, bell: QuantumCircuit
) -> None:
    from qhpc.resources import NullResource
    from qhpc.resources.codec import encode_payload
    from qhpc.store import JobRecord, TaskRecord

    class RemoteLike(NullResource):
        remembers_tasks = True
        stopped: ClassVar[list[str]] = []

        def task_stop(self, task_id: str) -> None:
            if task_id.startswith("vendor-"):
                self.stopped.append(task_id)
                return
            super().task_stop(task_id)

    path = tmp_path / "orphans.db"
    with Store.open(path) as store:
        job = JobRecord("j1", "a", "x", None, "dev", "batch", 0, "queued", 1.0, None, None, None, 1)
        task = TaskRecord(
            "t1", "j1", "dev", 0, "queued", encode_payload(SamplerTask((bell,), 5)), "sampler",
            1.0, None, None, None, None, 0, None, "x", "a", 0, 0.0,
        )  # fmt: skip
        store.create_job(job, [task])
        store.mark_task_running("t1", None, 2.0)
        store.set_resource_task_id("t1", "vendor-42")  # then the broker "crashed"
    registry = ResourceRegistry([])
    device = RemoteLike("dev")
    registry._specs["dev"] = ResourceSpec("dev", "null", {})
    registry._built["dev"] = device
    with Store.open(path) as store:
        broker = Broker(store, registry)
        broker.start()
        try:
            assert broker.wait_task("t1", timeout=30).state == "completed"
        finally:
            broker.stop()
    assert device.stopped == ["vendor-42"]
    registry.close()


def test_stop_ends_session_tasks_in_memory_and_books_the_interrupted_one(
    tmp_path: Path, bell: QuantumCircuit
) -> None:
    import threading
    import time as _time

    timing = {"task_overhead": 30.0, "circuit_overhead": 0.0, "shot_time": 0.0}
    slow = ResourceSpec("qpu", "emulator", {"noise": False, "timing": timing})
    registry = ResourceRegistry([slow])
    with Store.open(tmp_path / "stop-sessions.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        session, _ = broker.open_session(
            user="u", account="a", resource="qpu", deadline=_time.time() + 600
        )
        outcomes: list[object] = []

        def run() -> None:
            outcomes.append(broker.run_session_task(session.session_id, SamplerTask((bell,), 5)))

        first = threading.Thread(target=run)
        first.start()
        deadline = _time.monotonic() + 30
        while not broker.is_busy("qpu"):  # the first one runs ...
            assert _time.monotonic() < deadline
            _time.sleep(0.01)
        second = threading.Thread(target=run)
        second.start()
        while broker.queue_length("qpu") == 0:  # ... and the second one waits for it
            assert _time.monotonic() < deadline
            _time.sleep(0.01)
        _time.sleep(0.2)  # the running one has used some device time
        broker.stop()
        first.join(30)
        second.join(30)
        assert not first.is_alive() and not second.is_alive(), "a session task was stranded"
        assert sorted(o.state for o in outcomes) == ["cancelled", "cancelled"]  # type: ignore[attr-defined]
        tasks = store.tasks_of_job(session.session_id)
        assert sorted(t.state for t in tasks) == ["cancelled", "cancelled"]
        (booked,) = store.usage()  # the interrupted one; the queued one used nothing
        assert booked.qpu_seconds > 0.1
    registry.close()


def test_an_executor_survives_a_failing_scheduling_decision(
    broker: Broker, store: Store, bell: QuantumCircuit
) -> None:
    real = broker.policy
    calls = {"n": 0}

    class FailsOnce:
        name = "fails-once"

        def next_task(self, view):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return real.next_task(view)

    broker.policy = FailsOnce()  # type: ignore[assignment]
    job = broker.submit(user="u", account="a", resource="aer", payloads=[SamplerTask((bell,), 5)])
    (task,) = store.tasks_of_job(job.job_id)
    assert broker.wait_task(task.task_id, timeout=30).state == "completed"
    assert calls["n"] >= 2


def test_usage_is_safe_to_record_while_the_scheduler_reads_it() -> None:
    import threading

    from qhpc.broker.usage import UsageTracker

    tracker = UsageTracker(3600.0)
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                tracker.snapshot(1.0)
        except BaseException as error:  # reported below
            failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(20_000):  # new accounts resize the mapping
            tracker.record(f"account-{index}", 1.0, 1.0)
    finally:
        done.set()
        reader.join(30)
    assert failures == []
    assert len(tracker.snapshot(1.0)) == 20_000


def test_closing_a_session_waits_for_a_task_slow_to_stop_and_stores_it(
    tmp_path: Path, bell: QuantumCircuit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time as _time

    from qhpc.broker import leases

    monkeypatch.setattr(leases, "CLOSE_WAIT_REPORT", 0.05)  # well below the task's 1 s
    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    device = registry.get("null")
    original = device._sample  # type: ignore[attr-defined]

    def deaf_to_stop(*args: object) -> object:
        _time.sleep(1.0)  # a device that finishes its run whatever it is told
        return original(*args)

    device._sample = deaf_to_stop  # type: ignore[attr-defined]
    with Store.open(tmp_path / "close.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=_time.time() + 600
            )
            runner = threading.Thread(
                target=broker.run_session_task, args=(session.session_id, SamplerTask((bell,), 5))
            )
            runner.start()
            deadline = _time.monotonic() + 30
            while not broker.is_busy("null"):
                assert _time.monotonic() < deadline
                _time.sleep(0.01)
            broker.close_session(session.session_id)
            runner.join(30)
            (task,) = store.tasks_of_job(session.session_id)
            assert task.state == "completed"  # it ran to its end despite the stop request
            assert [(u.task_id, u.shots) for u in store.usage()] == [(task.task_id, 5)]
            assert store.get_job(session.session_id).state in ("completed", "cancelled")
        finally:
            broker.stop()
            registry.close()


def test_an_unknown_length_batch_task_waits_out_a_thinking_session_then_runs(
    tmp_path: Path, bell: QuantumCircuit
) -> None:
    import time as _time

    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    with Store.open(tmp_path / "unknown.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=_time.time() + 600
            )
            with broker.shared.cond:  # a session that thinks 0.4 s ± 0.2 s, thinking since now
                now = _time.time()
                broker.rhythms.submitted(session.session_id, now - 1.0)
                broker.rhythms.released(session.session_id, now - 0.9)
                broker.rhythms.submitted(session.session_id, now - 0.5)
                broker.rhythms.released(session.session_id, now)
            # Nothing has run on null yet: the batch task's length is unknown, so it
            # does not fit the expected gap; it runs once the session's patience is over
            # (think 0.4 + patience 0.2), and it runs at all (no deadlock).
            job = broker.submit(
                user="u", account="b", resource="null", payloads=[SamplerTask((bell,), 5)]
            )
            (task,) = store.tasks_of_job(job.job_id)
            done = broker.wait_task(task.task_id, timeout=30)
            assert done.state == "completed"
            assert done.started_at is not None and done.started_at >= now + 0.6
        finally:
            broker.stop()
            registry.close()


def test_reservations_and_shares_changed_through_the_broker_count_at_the_next_decision(
    store: Store,
) -> None:
    """Not after the policy-input cache expires: the clock stands still here, so a
    cached read would be served for ever if the change did not invalidate it."""
    from qhpc.store import ReservationRecord

    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 3})])
    broker = Broker(store, registry, BrokerConfig(policy="fairshare"), clock=lambda: 1000.0)
    try:
        with broker.shared.cond:
            _, reservations, shares = broker.inputs.read(1000.0)  # fills the cache
        assert reservations == [] and "chem" not in shares
        broker.records.create_reservation(
            ReservationRecord("r1", "aer", "chem", 900.0, 2000.0, False, "admin")
        )
        broker.records.upsert_account(AccountRecord("chem", 3.0, None))
        with broker.shared.cond:
            _, reservations, shares = broker.inputs.read(1000.0)
        assert [r.reservation_id for r in reservations] == ["r1"]
        assert shares["chem"] == 3.0
        broker.records.delete_reservation("r1")
        with broker.shared.cond:
            assert broker.inputs.read(1000.0)[1] == []
    finally:
        registry.close()
