"""Slow and numerous clients against a real ``qhpc serve`` process on loopback.

One server for the module, with short limits (header and body timeouts of 1 s, a
cap of 8 connections) so that every deadline is seen within a few seconds: a client
that stalls mid-body or mid-headers is answered 408 and disconnected while others
are served; more stalled connections than the cap get 503s only until they time
out; oversized heads and bodies are refused; and the server stays up throughout.
Every socket has its own timeout, so no test can hang.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import free_port, start_serve, wait_healthy

TIMEOUT = 1.0  # --header-timeout and --body-timeout of the server under test
CAP = 8  # --max-connections
#: how late a deadline may fire on a loaded 2-core machine before the test calls it missed
SLACK = 4.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    log = (tmp / "serve.log").open("wb")
    process = start_serve(
        tmp, port, "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
        "--max-connections", str(CAP), "--max-header-bytes", "4096",
        db=tmp / "limits.db", stdout=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, port
        assert process.poll() is None, "the server died under slow clients"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0, (tmp / "serve.log").read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def stalled(port: int, head: bytes) -> socket.socket:
    """A connection that sent ``head`` and then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + SLACK)
    sock.sendall(head)
    return sock


def answer_then_close(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    start = time.monotonic()
    received = b""
    with sock:
        while True:
            chunk = sock.recv(4096)  # the socket timeout bounds the wait
            if not chunk:
                return received, time.monotonic() - start
            received += chunk


HALF_BODY = (
    b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer qhpc_x\r\nContent-Length: 100\r\n\r\n"
    b'{"resource": "aer", '
)
HALF_HEADERS = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def health(url: str) -> int:
    return httpx.get(url + "/v1/health", timeout=5).status_code


def test_a_stalled_body_is_cut_off_while_others_are_served(server: tuple[str, int]) -> None:
    url, port = server
    slow = stalled(port, HALF_BODY)
    started = time.monotonic()
    assert health(url) == 200  # served meanwhile, not after the stalled one
    assert time.monotonic() - started < TIMEOUT
    received, waited = answer_then_close(slow)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"application/problem+json" in received and b"did not arrive" in received
    assert waited < TIMEOUT + SLACK
    assert health(url) == 200


def test_stalled_headers_are_cut_off(server: tuple[str, int]) -> None:
    url, port = server
    for head in (HALF_HEADERS, b""):  # half a request; a connection that says nothing
        received, waited = answer_then_close(stalled(port, head))
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert waited < TIMEOUT + SLACK
    assert health(url) == 200


def test_a_second_request_on_a_kept_alive_connection_is_on_the_clock_too(
    server: tuple[str, int],
) -> None:
    _, port = server
    sock = stalled(port, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = b""
    while not first.endswith(b'{"status":"ok"}'):  # the whole first answer, however split
        chunk = sock.recv(4096)
        assert chunk, first
        first += chunk
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]
    sock.sendall(HALF_HEADERS)
    received, waited = answer_then_close(sock)
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert waited < TIMEOUT + SLACK


def test_more_stalled_connections_than_the_cap_pass(server: tuple[str, int]) -> None:
    url, port = server
    # Stalled in their headers, so none is turned away before its deadline: all of
    # them hold a connection (a stalled body's request would be 503 once the cap is hit).
    flood = [stalled(port, HALF_HEADERS) for _ in range(CAP + 4)]
    late = stalled(port, HALF_BODY)
    try:
        # While they hold the server's connections, new requests are turned away at
        # once (503), not queued behind them.
        with httpx.Client(timeout=5) as client:
            assert client.get(url + "/v1/health").status_code == 503
        received, _ = answer_then_close(late)
        assert received.startswith(b"HTTP/1.1 503 "), received[:200]
        for sock in flood:
            received, waited = answer_then_close(sock)
            assert received.startswith(b"HTTP/1.1 408 "), received[:200]
            assert waited < TIMEOUT + SLACK
    finally:
        for sock in [*flood, late]:
            sock.close()
    deadline = time.monotonic() + SLACK
    while health(url) != 200:
        assert time.monotonic() < deadline, "health did not come back after the flood"
        time.sleep(0.1)


def test_oversized_heads_and_bodies_are_refused(server: tuple[str, int]) -> None:
    url, port = server
    # h11 bounds the head it buffers while waiting for the rest (4096 bytes here).
    big_head = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8192
    received, waited = answer_then_close(stalled(port, big_head))
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    assert waited < TIMEOUT  # at once, not at the header deadline
    huge = b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999999999\r\n\r\n{"
    received, _ = answer_then_close(stalled(port, huge))
    assert received.startswith(b"HTTP/1.1 413 "), received[:200]
    assert b"connection: close" in received.lower()
    assert health(url) == 200


def test_serve_refuses_nonsense_limits(tmp_path: Path) -> None:
    process = start_serve(
        tmp_path, free_port(), "--max-connections", "0", db=tmp_path / "x.db",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output.decode()
    assert b"max-connections" in output
