"""The ZeroMQ fast path against a real broker, over loopback TCP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
from qiskit.circuit import QuantumCircuit

from qhpc.api.fastpath import FastPathServer
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerResult, SamplerTask
from qhpc.security import Role
from qhpc.session import FastPathClient, FastPathError
from qhpc.session.fastpath import PROTOCOL
from qhpc.store import Store


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 1})])
    with Store.open(tmp_path / "fast.db") as store:
        service = Broker(store, registry, BrokerConfig(policy="fifo"))
        service.start()
        yield service
        service.stop()
    registry.close()


@pytest.fixture
def server(broker: Broker) -> Iterator[FastPathServer]:
    running = FastPathServer(broker).start()
    yield running
    running.stop()


def open_session(broker: Broker, seconds: float = 60) -> str:
    _, token = broker.open_session(
        user="u", account="a", resource="aer", deadline=time.time() + seconds
    )
    return token


def test_session_tasks_round_trip(
    broker: Broker, server: FastPathServer, bell: QuantumCircuit
) -> None:
    with FastPathClient(server.endpoint, open_session(broker), timeout=30) as client:
        assert client.resource == "aer"
        for _ in range(5):
            result = client.run(SamplerTask((bell,), shots=64))
            assert isinstance(result, SamplerResult)
            assert sum(result.circuits[0].counts.values()) == 64
    # Results are released before the journal's group commit (write-behind): the
    # broker shows the tasks final from memory, the store has them once committed.
    assert [t.state for t in broker.tasks_of_job(client.session_id)] == ["completed"] * 5
    assert broker.journal.flush(30)
    tasks = broker.store.tasks_of_job(client.session_id)
    assert [t.state for t in tasks] == ["completed"] * 5


def test_bad_tokens_and_bad_frames_get_errors_and_server_keeps_serving(
    broker: Broker, server: FastPathServer, bell: QuantumCircuit
) -> None:
    with pytest.raises(FastPathError) as caught:
        FastPathClient(server.endpoint, "qhpc_not-a-real-token", timeout=10)
    assert caught.value.status == 401
    _, user_token = broker.access.issue(Role.USER, "u")
    with pytest.raises(FastPathError, match="needs a session token"):
        FastPathClient(server.endpoint, user_token, timeout=10)

    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.endpoint)
    garbage: list[list[bytes]] = [
        [b"junk"],
        [b"HTTP/1.1", b"GET", b"/"],
        [PROTOCOL, b"FLY", b""],
        [PROTOCOL, b"RUN", b"short"],
        [PROTOCOL, b"RUN", b"12345678" + b"not a payload"],
    ]
    statuses = []
    for frames in garbage:
        raw.send_multipart(frames)
        assert raw.poll(5000), f"no answer to {frames}"
        reply = raw.recv_multipart()
        assert reply[0] == PROTOCOL
        assert reply[1] == b"ERROR"
        statuses.append(msgspec.msgpack.decode(reply[2])["status"])
    raw.close()
    assert statuses == [400, 400, 400, 400, 401]

    with FastPathClient(server.endpoint, open_session(broker), timeout=30) as client:
        with pytest.raises(FastPathError) as bad_payload:
            client.run_encoded(b"\x81\xa1v\x63")
        assert bad_payload.value.status == 422
        assert client.run(SamplerTask((bell,), shots=8)).kind == "sampler"


def test_closed_session_is_refused_and_its_connection_forgotten(
    broker: Broker, server: FastPathServer, bell: QuantumCircuit
) -> None:
    token = open_session(broker)
    with FastPathClient(server.endpoint, token, timeout=30) as client:
        client.run(SamplerTask((bell,), shots=8))
        assert server.tracked_connections == 1
        broker.close_session(client.session_id)
        with pytest.raises(FastPathError) as caught:
            client.run(SamplerTask((bell,), shots=8))
        assert caught.value.status == 409
        # The 409 left the server thread after the connection was forgotten.
        assert server.tracked_connections == 0
        with pytest.raises(FastPathError) as again:
            client.run(SamplerTask((bell,), shots=8))
        assert again.value.status == 401


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_connections_of_closed_sessions_are_swept(broker: Broker, bell: QuantumCircuit) -> None:
    server = FastPathServer(broker, sweep_interval=0.05).start()
    try:
        kept = FastPathClient(server.endpoint, open_session(broker), timeout=30)
        with FastPathClient(server.endpoint, open_session(broker), timeout=30) as gone:
            gone.run(SamplerTask((bell,), shots=8))
        kept.run(SamplerTask((bell,), shots=8))
        assert server.tracked_connections == 2
        # The peer went away without a word (ZeroMQ does not tell); its session closes.
        broker.close_session(gone.session_id)
        assert wait_until(lambda: server.tracked_connections == 1)
        assert kept.run(SamplerTask((bell,), shots=8)).kind == "sampler"
        kept.close()
    finally:
        server.stop()


def test_the_least_recently_used_connection_is_forgotten_beyond_the_cap(
    broker: Broker, bell: QuantumCircuit
) -> None:
    server = FastPathServer(broker, max_connections=2).start()
    task = SamplerTask((bell,), shots=8)
    try:
        first = FastPathClient(server.endpoint, open_session(broker), timeout=30)
        second = FastPathClient(server.endpoint, open_session(broker), timeout=30)
        first.run(task)  # second is now the least recently used
        third = FastPathClient(server.endpoint, open_session(broker), timeout=30)
        assert server.tracked_connections == 2
        assert first.run(task).kind == "sampler"
        assert third.run(task).kind == "sampler"
        with pytest.raises(FastPathError) as caught:
            second.run(task)
        assert caught.value.status == 401
        assert "send HELLO" in caught.value.detail
        for client in (first, second, third):
            client.close()
    finally:
        server.stop()


def test_pipelined_requests_come_back_in_order(
    broker: Broker, server: FastPathServer, bell: QuantumCircuit
) -> None:
    from qhpc.resources.codec import decode_result, encode_payload

    shots = [8, 16, 24, 32, 40, 48]
    payloads = [encode_payload(SamplerTask((bell,), shots=s)) for s in shots]
    with FastPathClient(server.endpoint, open_session(broker), timeout=30) as client:
        answers = client.run_many_encoded(payloads, window=4)
    totals = []
    for answer in answers:
        result = decode_result(answer)
        assert isinstance(result, SamplerResult)
        totals.append(sum(result.circuits[0].counts.values()))
    assert totals == shots


def test_short_tasks_run_on_the_server_thread_and_unknown_ones_are_queued(
    tmp_path: Path, bell: QuantumCircuit, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qhpc.api import fastpath as fastpath_module

    # Short: a small simulator step (a few ms at most), never a real device's task.
    assert fastpath_module.INLINE_BUDGET <= 0.005
    # What is tested is the decision, not this machine's speed: a null task measured
    # at 0.6 ms on a busy machine must not make the test fail.
    monkeypatch.setattr(fastpath_module, "INLINE_BUDGET", 0.05)

    registry = ResourceRegistry(
        [ResourceSpec("null", "null", {}), ResourceSpec("aer", "aer", {"seed": 1})]
    )
    with Store.open(tmp_path / "inline.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        server = FastPathServer(broker).start()
        ran_on: dict[str, list[str]] = {"null": [], "aer": []}
        for executor in broker.executors.values():
            original = executor.run_one

            def spy(task, running, inline=False, original=original):  # type: ignore[no-untyped-def]
                ran_on[task.resource].append(threading.current_thread().name)
                return original(task, running, inline)

            executor.run_one = spy  # type: ignore[method-assign]
        try:
            for resource in ("null", "aer"):
                _, token = broker.open_session(
                    user="u", account="a", resource=resource, deadline=time.time() + 60
                )
                with FastPathClient(server.endpoint, token, timeout=30) as client:
                    for shots in (5, 5, 5, 9):
                        result = client.run(SamplerTask((bell,), shots=shots))
                        assert isinstance(result, SamplerResult)
                        assert sum(result.circuits[0].counts.values()) == shots
                        # The reply may overtake the executor letting go of the resource:
                        # a task arriving before that is queued, rightly.
                        assert wait_until(lambda: not broker.is_busy(resource))  # noqa: B023
        finally:
            server.stop()
            broker.stop()
            registry.close()
    # An unknown duration is never assumed short: a payload shape's first task goes to
    # the executor. null's then turns out to take well under the budget, so the server
    # runs the same shape itself; a new shape (other shots) is timed on the executor
    # first, however short the resource's tasks have been: a tenant's first heavy task
    # cannot hold up every other connection.
    assert ran_on["null"] == [
        "qhpc-executor-null",
        "qhpc-fastpath",
        "qhpc-fastpath",
        "qhpc-executor-null",
    ]
    assert ran_on["aer"][0] == "qhpc-executor-aer"
    assert ran_on["aer"][3] == "qhpc-executor-aer"


def test_a_broker_that_does_not_answer_is_a_504_within_the_timeout() -> None:
    silent = zmq.Context.instance().socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind("tcp://127.0.0.1:*")
    endpoint = silent.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        started = time.monotonic()
        with pytest.raises(FastPathError) as caught:
            FastPathClient(endpoint, "qhpc_whatever", timeout=0.3)
        assert caught.value.status == 504
        assert "within 0.3 s" in caught.value.detail
        assert time.monotonic() - started < 30
    finally:
        silent.close()


def test_a_waiting_client_is_told_once_that_its_qpu_is_drained(
    broker: Broker, server: FastPathServer, bell: QuantumCircuit, capfd: pytest.CaptureFixture[str]
) -> None:
    from qhpc.broker import DrainRequest
    from qhpc.resources import encode_payload

    broker.drain("aer", DrainRequest("cryostat warm-up"), by="ops")
    payloads = [encode_payload(SamplerTask((bell,), shots=8))] * 3
    results: list[bytes] = []
    with FastPathClient(server.endpoint, open_session(broker), timeout=30) as client:
        worker = threading.Thread(target=lambda: results.extend(client.run_many_encoded(payloads)))
        worker.start()
        assert wait_until(lambda: broker.queue_length("aer") == 3)
        time.sleep(0.3)  # the three are held: none ran
        assert results == []
        broker.resume("aer", by="ops")
        worker.join(30)
    assert len(results) == 3
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("qhpc:")]
    assert lines == ["qhpc: QPU aer is drained until resumed (cryostat warm-up); your tasks wait"]
