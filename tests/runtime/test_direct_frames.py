"""Frames of the direct dispatch channel read whole, split, pipelined or broken; the
broker's end of the channel against idle and excess connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit.circuit import QuantumCircuit

from qhpc.broker.dispatch import DirectDispatcher
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerResult, SamplerTask
from qhpc.session.direct import ERROR, TASK, DirectClient, FrameReader, frame, socket_path
from qhpc.store import Store


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(10)
    b.settimeout(10)
    return a, b


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=8),
    st.lists(st.integers(1, 700), min_size=1, max_size=20),
)
def test_any_split_of_a_stream_of_frames_reads_back_the_same_frames(
    bodies: list[bytes], cuts: list[int]
) -> None:
    ours, theirs = pair()
    stream = b"".join(frame(TASK, body) for body in bodies)
    pieces, offset, index = [], 0, 0
    while offset < len(stream):  # the peer writes in arbitrary pieces
        size = cuts[index % len(cuts)]
        pieces.append(stream[offset : offset + size])
        offset += size
        index += 1

    def write() -> None:
        for piece in pieces:
            theirs.sendall(piece)
        theirs.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write)
    writer.start()
    reader = FrameReader(ours)
    try:
        got = [reader.read(1 << 20) for _ in bodies]
        assert got == [(TASK, body) for body in bodies]
        assert reader.read(1 << 20) is None  # clean end of stream after the last frame
    finally:
        writer.join(10)
        ours.close()
        theirs.close()


def test_oversized_and_truncated_frames_are_errors() -> None:
    ours, theirs = pair()
    try:
        theirs.sendall(frame(TASK, b"x" * 100))
        with pytest.raises(ValueError, match="exceeds the limit of 10"):
            FrameReader(ours).read(10)
    finally:
        ours.close()
        theirs.close()
    ours, theirs = pair()
    try:
        theirs.sendall(frame(TASK, b"x" * 100)[:50])
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError, match="middle of a frame"):
            FrameReader(ours).read(1000)
    finally:
        ours.close()
        theirs.close()


# -- the broker's end: connections that never authenticate, too many connections --------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    with Store.open(tmp_path / "direct.db") as store:
        service = Broker(store, registry, BrokerConfig(policy="fifo"))
        service.start()
        yield service
        service.stop()
    registry.close()


def session_token(broker: Broker) -> str:
    _, token = broker.open_session(
        user="u", account="a", resource="null", deadline=time.time() + 60
    )
    return token


def idle_connection(dispatcher: DirectDispatcher) -> socket.socket:
    """A connection that never sends HELLO (what a hostile local user would hold open)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(socket_path(dispatcher.endpoint))
    return conn


def refusal(conn: socket.socket) -> dict[str, object]:
    """The ERROR frame the broker sent before closing ``conn`` (which must then be closed)."""
    reader = FrameReader(conn)
    received = reader.read(4096)
    assert received is not None, "the broker closed the connection without saying why"
    kind, body = received
    assert kind == ERROR
    assert reader.read(4096) is None  # and then it closed the connection
    error: dict[str, object] = msgspec.msgpack.decode(body)
    return error


def run_one(dispatcher: DirectDispatcher, token: str, circuit: QuantumCircuit) -> None:
    with DirectClient(dispatcher.endpoint, token, timeout=30) as client:
        result = client.run(SamplerTask((circuit,), shots=10))
        assert isinstance(result, SamplerResult)
        assert sum(result.circuits[0].counts.values()) == 10


def test_connections_that_never_send_hello_are_closed(broker: Broker, bell: QuantumCircuit) -> None:
    dispatcher = DirectDispatcher(broker, hello_timeout=0.2)
    try:
        idle = [idle_connection(dispatcher) for _ in range(3)]
        for conn in idle:  # without the timeout this blocks until conn's own 30 s
            error = refusal(conn)
            assert error["status"] == 408
            assert "no HELLO frame within 0.2 s" in str(error["detail"])
            conn.close()
        # An authenticated connection is not subject to the HELLO timeout.
        with DirectClient(dispatcher.endpoint, session_token(broker), timeout=30) as client:
            time.sleep(0.4)
            result = client.run(SamplerTask((bell,), shots=10))
            assert isinstance(result, SamplerResult)
    finally:
        dispatcher.stop()


def test_connections_beyond_the_cap_are_refused_and_programs_still_run(
    broker: Broker, bell: QuantumCircuit, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = DirectDispatcher(broker, max_connections=3)
    token = session_token(broker)
    try:
        idle = [idle_connection(dispatcher) for _ in range(3)]
        over = idle_connection(dispatcher)
        error = refusal(over)
        over.close()
        assert error["status"] == 503
        assert "3 connections open" in str(error["detail"])
        assert any("max_connections" in r.getMessage() for r in caplog.records)
        # Freeing a slot lets a proper program in again.
        idle.pop().close()
        deadline = time.monotonic() + 30
        while True:
            try:
                run_one(dispatcher, token, bell)
                break
            except Exception:  # the broker may not have seen the close yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for conn in idle:
            conn.close()
    finally:
        dispatcher.stop()
