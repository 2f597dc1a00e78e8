"""Operator drains: a resource out of service with a reason and an end, on a real store."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.broker import Broker, BrokerConfig, DrainRequest, InvalidDrain, NotDrained
from qhpc.resources import (
    ResourceRegistry,
    ResourceSpec,
    ResourceState,
    SamplerTask,
    UnknownResourceError,
)
from qhpc.store import Store

WAIT = 60.0


def _registry(task_seconds: float = 0.0) -> ResourceRegistry:
    timing = {"task_overhead": task_seconds, "circuit_overhead": 0.0, "shot_time": 0.0}
    return ResourceRegistry(
        [ResourceSpec("qpu", "emulator", {"noise": False, "timing": timing, "seed": 1})]
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "drains.db") as opened:
        yield opened


def _broker(store: Store, registry: ResourceRegistry) -> Broker:
    broker = Broker(store, registry, BrokerConfig(policy="fifo"))
    broker.start()
    return broker


@pytest.fixture
def quick(store: Store) -> Iterator[Broker]:
    registry = _registry()
    broker = _broker(store, registry)
    yield broker
    broker.stop()
    registry.close()


def _submit(broker: Broker, bell: QuantumCircuit, count: int = 1) -> list[str]:
    job = broker.submit(
        user="alice", account="chem", resource="qpu",
        payloads=[SamplerTask((bell,), shots=10) for _ in range(count)],
    )  # fmt: skip
    return [t.task_id for t in broker.tasks_of_job(job.job_id)]


def _wait_state(broker: Broker, task_id: str, state: str) -> None:
    deadline = time.monotonic() + WAIT
    while broker.get_task(task_id).state != state:
        assert time.monotonic() < deadline, f"task never {state}"
        time.sleep(0.01)


def test_a_drained_resource_shows_maintenance_and_queued_work_waits_for_resume(
    quick: Broker, bell: QuantumCircuit
) -> None:
    drain = quick.drain("qpu", DrainRequest("cryostat warm-up"), by="ops")
    assert (drain.resource, drain.reason, drain.until, drain.drained_by) == (
        "qpu", "cryostat warm-up", None, "ops",
    )  # fmt: skip
    status = quick.resource_status("qpu")
    assert status.state is ResourceState.MAINTENANCE
    assert status.reason == "drained: cryostat warm-up" and status.until is None
    (task,) = _submit(quick, bell)
    time.sleep(1.0)  # two executor rechecks: it must not start
    assert quick.get_task(task).state == "queued"
    ((_, eta),) = quick.queue("qpu")
    assert math.isinf(eta)  # until resumed: not known
    quick.resume("qpu", by="ops")
    assert quick.wait_task(task, timeout=WAIT).state == "completed"
    # busy until the executor has booked the task (a moment after its waiter wakes)
    deadline = time.monotonic() + WAIT
    while quick.resource_status("qpu").state is not ResourceState.IDLE:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_drain_with_an_end_counts_in_the_eta_and_lapses_by_itself(
    quick: Broker, bell: QuantumCircuit
) -> None:
    quick.drain("qpu", DrainRequest("firmware", until=time.time() + 2.0), by="ops")
    (task,) = _submit(quick, bell)
    ((_, eta),) = quick.queue("qpu")
    assert 0.5 < eta <= 2.0
    assert quick.resource_status("qpu").until is not None
    assert quick.get_task(task).state == "queued"
    assert quick.wait_task(task, timeout=WAIT).state == "completed"
    deadline = time.monotonic() + WAIT
    while quick.drains.all():  # the reaper deletes it from memory and the store
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert quick.store.list_drains() == []


def test_running_work_finishes_unless_drained_now(store: Store, bell: QuantumCircuit) -> None:
    registry = _registry(task_seconds=1.0)
    broker = _broker(store, registry)
    try:
        first, second = _submit(broker, bell, 2)
        _wait_state(broker, first, "running")
        broker.drain("qpu", DrainRequest("let it finish"), by="ops")
        assert broker.wait_task(first, timeout=WAIT).state == "completed"
        time.sleep(0.6)
        assert broker.get_task(second).state == "queued"
        broker.resume("qpu", by="ops")
        assert broker.wait_task(second, timeout=WAIT).state == "completed"
    finally:
        broker.stop()
        registry.close()


def test_drain_now_stops_running_work_and_queues_it_again(
    store: Store, bell: QuantumCircuit
) -> None:
    registry = _registry(task_seconds=4.0)
    broker = _broker(store, registry)
    try:
        (task,) = _submit(broker, bell)
        _wait_state(broker, task, "running")
        started = time.monotonic()
        broker.drain("qpu", DrainRequest("quench", now=True), by="ops")
        _wait_state(broker, task, "queued")
        assert time.monotonic() - started < 3.5  # stopped, not run to its end
        assert store.get_task(task).started_at is None
        broker.resume("qpu", by="ops")  # it runs again, whole: nothing was lost
        assert broker.wait_task(task, timeout=WAIT).state == "completed"
    finally:
        broker.stop()
        registry.close()


def test_session_tasks_wait_through_a_drain(quick: Broker, bell: QuantumCircuit) -> None:
    session, _ = quick.open_session(
        user="bob", account="phys", resource="qpu", deadline=time.time() + 600
    )
    quick.drain("qpu", DrainRequest("calibration by hand"), by="ops")
    task = quick.submit_session_task(session.session_id, SamplerTask((bell,), shots=5))
    time.sleep(0.6)
    assert quick.get_task(task).state == "queued"
    quick.resume("qpu", by="ops")
    assert quick.wait_task(task, timeout=WAIT).state == "completed"


def test_a_drain_outlives_a_broker_restart(tmp_path: Path, bell: QuantumCircuit) -> None:
    path = tmp_path / "restart.db"
    registry = _registry()
    with Store.open(path) as store:
        broker = _broker(store, registry)
        broker.drain("qpu", DrainRequest("overnight"), by="ops")
        (task,) = _submit(broker, bell)
        broker.stop()
    with Store.open(path) as store:
        again = _broker(store, registry)
        try:
            assert again.resource_status("qpu").state is ResourceState.MAINTENANCE
            time.sleep(0.6)
            assert again.get_task(task).state == "queued"
            again.resume("qpu", by="ops")
            assert again.wait_task(task, timeout=WAIT).state == "completed"
        finally:
            again.stop()
    registry.close()


@pytest.mark.parametrize(
    ("request_of", "message"),
    [
        (lambda now: DrainRequest("past", until=now - 10), "in the past"),
        (lambda now: DrainRequest("now", until=now), "in the past"),
        (lambda now: DrainRequest("   "), "needs a reason"),
        (lambda now: DrainRequest("x" * 501), "at most 500"),
        (lambda now: DrainRequest("two\nlines"), "one line"),
        (lambda now: DrainRequest("nan", until=math.nan), "finite"),
        (lambda now: DrainRequest("far", until=now + 20 * 365 * 86400), "ten years"),
    ],
)
def test_bad_drains_are_refused_and_change_nothing(
    quick: Broker, request_of: object, message: str
) -> None:
    assert callable(request_of)
    with pytest.raises(InvalidDrain, match=message):
        quick.drain("qpu", request_of(time.time()), by="ops")
    assert quick.drains.all() == [] and quick.store.list_drains() == []
    assert quick.resource_status("qpu").state is ResourceState.IDLE


def test_unknown_resources_and_resuming_what_is_not_drained(quick: Broker) -> None:
    with pytest.raises(UnknownResourceError):
        quick.drain("nope", DrainRequest("x"), by="ops")
    with pytest.raises(UnknownResourceError):
        quick.resume("nope", by="ops")
    with pytest.raises(NotDrained, match="qpu is not drained"):
        quick.resume("qpu", by="ops")
    assert quick.store.list_drains() == []
