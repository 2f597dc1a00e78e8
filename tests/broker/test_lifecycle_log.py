"""The operator's log of the broker (broker/lifecycle.py): each job, session and resource
state change logged once, at its level, with its ids; tasks only at DEBUG."""

from __future__ import annotations

import io
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from qiskit.circuit import QuantumCircuit

from helpers import LogCapture
from qhpc.broker import lifecycle
from qhpc.broker.lifecycle import JobLog, ResourceWatch
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.logcontext import TextFormatter, log_scope
from qhpc.resources import (
    ResourceRegistry,
    ResourceSpec,
    ResourceState,
    ResourceStatus,
    SamplerTask,
)
from qhpc.store import JobRecord, Store

SLOW = {"device": "line-5", "noise": False, "timing": {"task_overhead": 60.0}}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 3}),
            ResourceSpec("slow", "emulator", SLOW),
            ResourceSpec("held", "emulator", {"device": "line-5", "noise": False}),
        ]
    )
    store = Store.open(tmp_path / "log.db")
    service = Broker(store, registry, BrokerConfig(policy="fifo", max_task_seconds=0.3))
    service.start()
    try:
        yield service
    finally:
        service.stop()
        registry.close()
        store.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time limit"
        time.sleep(0.02)


def wait_job(broker: Broker, job_id: str) -> JobRecord:
    wait_for(lambda: broker.get_job(job_id).state in ("completed", "failed", "cancelled"))
    return broker.get_job(job_id)


def test_a_batch_job_is_logged_submitted_and_finished_once(
    broker: Broker, qhpc_log: LogCapture, bell: QuantumCircuit
) -> None:
    with log_scope(request_id="req-7", user="alice"):
        job = broker.submit(
            user="alice", account="chem", resource="aer", name="bell pair",
            payloads=[SamplerTask((bell,), 50), SamplerTask((bell,), 50)],
        )  # fmt: skip
    assert wait_job(broker, job.job_id).state == "completed"
    broker.cancel(job.job_id)  # a final job cancelled again: nothing new to log
    wait_for(lambda: len(qhpc_log.records("job_finished")) == 1)
    (submitted,) = qhpc_log.records("job_submitted")
    (finished,) = qhpc_log.records("job_finished")
    expected = {"job_id": job.job_id, "user": "alice", "account": "chem", "resource": "aer",
                "kind": "batch", "tasks": 2, "request_id": "req-7"}  # fmt: skip
    assert expected.items() <= submitted.items() and submitted["name"] == "bell pair"
    assert expected.items() <= finished.items()  # the submitting request, from another thread
    assert (finished["level"], finished["state"]) == ("INFO", "completed")
    assert not qhpc_log.records("task_finished")  # INFO: no record per task


def test_a_failed_job_is_a_warning(
    broker: Broker, qhpc_log: LogCapture, bell: QuantumCircuit
) -> None:
    job = broker.submit(
        user="bob", account="phys", resource="slow", payloads=[SamplerTask((bell,), 10)]
    )
    assert wait_job(broker, job.job_id).state == "failed"  # past max_task_seconds
    wait_for(lambda: bool(qhpc_log.records("job_finished")))
    (finished,) = qhpc_log.records("job_finished")
    assert (finished["level"], finished["state"], finished["job_id"]) == (
        "WARNING",
        "failed",
        job.job_id,
    )
    assert "request_id" not in finished  # none was known


def test_a_cancelled_job_is_logged_once_by_the_request_that_cancelled(
    broker: Broker, qhpc_log: LogCapture, bell: QuantumCircuit
) -> None:
    broker.resources.get("held").pause()  # type: ignore[attr-defined]
    job = broker.submit(
        user="bob", account="phys", resource="held",
        payloads=[SamplerTask((bell,), 10) for _ in range(3)],
    )  # fmt: skip
    with log_scope(request_id="cancel-1"):
        broker.cancel(job.job_id)
        broker.cancel(job.job_id)
    assert broker.get_job(job.job_id).state == "cancelled"
    (finished,) = qhpc_log.records("job_finished")
    assert (finished["state"], finished["tasks"], finished["request_id"]) == (
        "cancelled",
        3,
        "cancel-1",
    )


def test_sessions_are_logged_opened_and_closed_or_expired_once(
    broker: Broker, qhpc_log: LogCapture, bell: QuantumCircuit
) -> None:
    kept, secret = broker.open_session(
        user="carol", account="bio", resource="aer", deadline=time.time() + 600,
        slurm_job_id="4242",
    )  # fmt: skip
    short, _ = broker.open_session(
        user="dave", account="bio", resource="aer", deadline=time.time() + 0.3
    )
    task = broker.submit_session_task(kept.session_id, SamplerTask((bell,), 20))
    assert broker.wait_task(task, timeout=60).state == "completed"
    broker.close_session(kept.session_id)
    wait_for(lambda: bool(qhpc_log.records("session_expired")))
    broker.close_expired_sessions()  # nothing left to expire: nothing more to log
    opened = {r["session_id"]: r for r in qhpc_log.records("session_opened")}
    assert set(opened) == {kept.session_id, short.session_id}
    assert opened[kept.session_id]["slurm_job_id"] == "4242"
    assert opened[kept.session_id]["deadline"].endswith("Z")
    (closed,) = qhpc_log.records("session_closed")
    (expired,) = qhpc_log.records("session_expired")
    assert {k: closed[k] for k in ("session_id", "job_id", "user", "resource", "slurm_job_id")} == {
        "session_id": kept.session_id, "job_id": kept.session_id, "user": "carol",
        "resource": "aer", "slurm_job_id": "4242",
    }  # fmt: skip
    assert (closed["state"], closed["tasks"]) == ("completed", 1)
    assert (expired["session_id"], expired["user"]) == (short.session_id, "dave")
    assert not qhpc_log.records("job_finished")  # a session's job ends with the session
    assert secret not in qhpc_log.stream.getvalue()


def test_per_task_records_only_at_debug(
    broker: Broker, qhpc_log: LogCapture, bell: QuantumCircuit
) -> None:
    logging.getLogger("qhpc.broker.executor").setLevel(logging.DEBUG)
    try:
        job = broker.submit(
            user="alice", account="chem", resource="aer",
            payloads=[SamplerTask((bell,), 10) for _ in range(3)],
        )  # fmt: skip
        wait_job(broker, job.job_id)
    finally:
        logging.getLogger("qhpc.broker.executor").setLevel(logging.NOTSET)
    tasks = qhpc_log.records("task_finished")
    assert len(tasks) == 3 and {t["job_id"] for t in tasks} == {job.job_id}
    assert all(t["level"] == "DEBUG" and t["resource"] == "aer" for t in tasks)


def test_a_job_name_cannot_forge_a_text_line(
    broker: Broker, bell: QuantumCircuit, qhpc_log: LogCapture
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logging.getLogger("qhpc").addHandler(handler)
    forged = "x\n2030-01-01T00:00:00.000Z WARNING qhpc.broker.lifecycle job failed\u2028y\x85z"
    try:
        job = broker.submit(
            user="eve", account="a", resource="aer", name=forged,
            payloads=[SamplerTask((bell,), 5)],
        )  # fmt: skip
        wait_job(broker, job.job_id)
        wait_for(lambda: "job completed" in stream.getvalue())
    finally:
        logging.getLogger("qhpc").removeHandler(handler)
    text = stream.getvalue()
    lines = text.split("\n")[:-1]
    assert text.splitlines() == lines  # no U+2028, U+0085 or the like splits a line either
    assert not any(line.startswith("2030-") for line in lines)
    (submitted,) = [line for line in lines if "job submitted" in line]
    assert 'name="x\\n2030-01-01T00:00:00.000Z WARNING' in submitted
    assert "\\u2028y\\x85z" in submitted


class Scripted:
    """A resource's status() answers, one per call."""

    def __init__(self, *answers: ResourceState | Exception) -> None:
        self.answers = list(answers)

    def __call__(self) -> ResourceStatus:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        reason = "calibrating" if answer is ResourceState.CALIBRATION else ""
        return ResourceStatus(answer, answer is ResourceState.BUSY, 0, reason)


def test_each_resource_state_change_is_logged_once(qhpc_log: LogCapture) -> None:
    s = ResourceState
    read = Scripted(
        s.IDLE, s.BUSY, s.IDLE, s.BUSY, s.CALIBRATION, s.CALIBRATION, s.BUSY, s.IDLE,
        s.OFFLINE, s.OFFLINE, ConnectionError("device gone"), ConnectionError("still"), s.IDLE,
    )  # fmt: skip
    watch = ResourceWatch()
    while read.answers:
        watch.observe("qpu", read)
    seen = [(r["level"], r.get("previous"), r["state"]) for r in qhpc_log.records()]
    assert seen == [
        ("INFO", None, "idle"),
        ("INFO", "idle", "calibration"),
        ("INFO", "calibration", "busy"),  # busy and idle are one state: it flips per task
        ("WARNING", "idle", "offline"),
        ("WARNING", "offline", "error"),
        ("INFO", "error", "idle"),
    ]
    records = qhpc_log.records("resource_state")
    assert records[1]["reason"] == "calibrating" and records[1]["resource"] == "qpu"
    assert "ConnectionError: device gone" in records[4]["exc"]


def test_the_broker_watches_an_idle_resource_calibrate(
    tmp_path: Path, qhpc_log: LogCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "WATCH_SECONDS", 0.02)
    calibrating = {"device": "line-5", "noise": False,
                   "calibration": {"every": 0.6, "duration": 0.3, "first": 0.3}}  # fmt: skip
    registry = ResourceRegistry([ResourceSpec("cal", "emulator", calibrating)])
    with Store.open(tmp_path / "cal.db") as store:
        broker = Broker(store, registry)
        broker.start()
        try:
            wait_for(lambda: len(qhpc_log.records("resource_state")) >= 3)
        finally:
            broker.stop()
            registry.close()
    states = [r["state"] for r in qhpc_log.records("resource_state")]
    assert states[:3] in (["idle", "calibration", "idle"], ["calibration", "idle", "calibration"])
    assert all(a != b for a, b in itertools.pairwise(states))


def test_a_job_end_seen_from_two_threads_is_logged_once(
    tmp_path: Path, qhpc_log: LogCapture
) -> None:
    with Store.open(tmp_path / "once.db") as store:
        job = JobRecord(
            job_id="j1", user="u", account="a", centre=None, resource="aer", kind="batch",
            priority=0, state="completed", created_at=1.0, finished_at=2.0, session_id=None,
            name=None, task_count=0,
        )  # fmt: skip
        store.create_job(job, [])
        log = JobLog(store)
        threads = [threading.Thread(target=log.settled, args=("j1",)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log.settled("j1")
    assert len(qhpc_log.records("job_finished")) == 1
