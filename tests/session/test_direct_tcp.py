"""The direct channel over TCP (``direct://HOST:PORT``, ``qhpc serve --direct-bind``):
the same frames, token check and limits as the Unix socket, on loopback only."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.broker.dispatch import DirectDispatcher
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerResult, SamplerTask
from qhpc.session import FastPathError, open_channel
from qhpc.session.direct import (
    ERROR,
    HELLO,
    TASK,
    DirectClient,
    FrameReader,
    frame,
    tcp_address,
)
from qhpc.store import Store


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    with Store.open(tmp_path / "tcp.db") as store:
        service = Broker(store, registry, BrokerConfig(policy="fifo"))
        service.start()
        yield service
        service.stop()
    registry.close()


@pytest.fixture
def dispatcher(broker: Broker) -> Iterator[DirectDispatcher]:
    served = DirectDispatcher(broker, tcp=("127.0.0.1", 0), hello_timeout=0.5, unix=False)
    yield served
    served.stop()


def token_of(broker: Broker, seconds: float = 60) -> tuple[str, str]:
    session, token = broker.open_session(
        user="u", account="a", resource="null", deadline=time.time() + seconds
    )
    return session.session_id, token


def error_of(conn: socket.socket) -> dict[str, object]:
    received = FrameReader(conn).read(4096)
    assert received is not None and received[0] == ERROR
    decoded: dict[str, object] = msgspec.msgpack.decode(received[1])
    return decoded


def test_a_program_runs_its_tasks_over_tcp_and_open_channel_picks_the_channel(
    broker: Broker, dispatcher: DirectDispatcher, bell: QuantumCircuit
) -> None:
    assert dispatcher.tcp_endpoint is not None
    assert dispatcher.tcp_endpoint.startswith("direct://127.0.0.1:")
    assert dispatcher.endpoint == dispatcher.tcp_endpoint  # TCP only: no Unix socket made
    session_id, token = token_of(broker)
    with open_channel(dispatcher.tcp_endpoint, token, timeout=30) as client:
        assert isinstance(client, DirectClient)
        assert (client.session_id, client.resource) == (session_id, "null")
        for _ in range(20):
            result = client.run(SamplerTask((bell,), shots=10))
            assert isinstance(result, SamplerResult)
            assert sum(result.circuits[0].counts.values()) == 10
    assert broker.journal.flush(30)
    assert len(broker.store.tasks_of_job(session_id)) == 20


def test_ipv6_loopback(broker: Broker, bell: QuantumCircuit) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        served = DirectDispatcher(broker, tcp=("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    try:
        assert served.tcp_endpoint is not None and served.tcp_endpoint.startswith("direct://[::1]:")
        with DirectClient(served.tcp_endpoint, token_of(broker)[1], timeout=30) as client:
            assert isinstance(client.run(SamplerTask((bell,), shots=5)), SamplerResult)
    finally:
        served.stop()


def test_bad_tokens_closed_sessions_and_garbage_get_clear_errors_and_the_port_keeps_serving(
    broker: Broker, dispatcher: DirectDispatcher, bell: QuantumCircuit
) -> None:
    endpoint = dispatcher.tcp_endpoint
    assert endpoint is not None
    with pytest.raises(FastPathError) as refused:
        DirectClient(endpoint, "not-a-token", timeout=30)
    assert refused.value.status == 401
    assert "not-a-token" not in str(refused.value)  # the error does not echo the token

    session_id, token = token_of(broker)
    client = DirectClient(endpoint, token, timeout=30)
    broker.close_session(session_id)
    with pytest.raises(FastPathError) as closed:
        client.run(SamplerTask((bell,), shots=5))
    assert closed.value.status == 409
    client.close()

    host, port = tcp_address(endpoint)
    with socket.create_connection((host, port), timeout=10) as raw:  # not a frame at all
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert error_of(raw)["status"] in (400, 413)
    with socket.create_connection((host, port), timeout=10) as raw:  # a task before HELLO
        raw.sendall(frame(TASK, b"\x80"))
        assert error_of(raw)["status"] in (400, 401)
    with socket.create_connection((host, port), timeout=10) as raw:  # HELLO that is not msgpack
        raw.sendall(frame(HELLO, b"\xc1garbage"))
        assert error_of(raw)["status"] == 400
    with socket.create_connection((host, port), timeout=10) as idle:  # never says HELLO
        assert error_of(idle)["status"] == 408

    with DirectClient(endpoint, token_of(broker)[1], timeout=30) as fresh:  # still serving
        assert isinstance(fresh.run(SamplerTask((bell,), shots=5)), SamplerResult)


@pytest.mark.parametrize(
    "endpoint",
    ["direct://", "direct://host", "direct://host:0", "direct://host:99999", "direct://:80",
     "tcp://127.0.0.1:80"],
)  # fmt: skip
def test_malformed_tcp_endpoints_are_refused_by_name(endpoint: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        tcp_address(endpoint)


def test_serve_refuses_a_malformed_direct_bind_naming_the_option() -> None:
    import typer

    from qhpc.cli.serve import bind_address

    assert bind_address("127.0.0.1:7070", "--direct-bind") == ("127.0.0.1", 7070)
    assert bind_address("[::1]:7070", "--direct-bind") == ("::1", 7070)
    with pytest.raises(typer.BadParameter) as bad:
        bind_address("7070", "--direct-bind")
    assert bad.value.param_hint == "--direct-bind"


def test_a_hello_trickled_a_byte_at_a_time_is_cut_off_at_the_hello_timeout(
    dispatcher: DirectDispatcher,
) -> None:
    """A per-recv timeout alone would let a peer hold a slot for ever by sending one
    byte just before each timeout; the HELLO has one deadline for the whole frame."""
    assert dispatcher.tcp_endpoint is not None
    hello = frame(HELLO, msgspec.msgpack.encode({"version": 1, "token": "x" * 200}))
    started = time.monotonic()
    closed_after = None
    with socket.create_connection(tcp_address(dispatcher.tcp_endpoint), timeout=10) as slow:
        for byte in hello:
            if select.select([slow], [], [], 0.1)[0]:  # the broker answered (and closes)
                try:
                    error = error_of(slow)
                    assert error["status"] == 408
                except ConnectionResetError:
                    pass  # its answer was lost to our late bytes: closed all the same
                closed_after = time.monotonic() - started
                break
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "the trickling peer was never cut off"
    assert closed_after < 2.5  # ~0.5 s (the HELLO timeout), not 0.1 s x 200 bytes
