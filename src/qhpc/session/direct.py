"""The direct dispatch channel: a program's QPU calls over one stream socket (Unix or TCP).

This module is the protocol's frames and the program's end (:class:`DirectClient`);
the broker's end (``qhpc.broker``'s dispatcher) imports the frames from here, so
both ends share one definition and the import points down.

A program that runs in the broker's runtime pool reaches its session through a
Unix stream socket the broker listens on (``unix:///…/dispatch.sock``), not
through ZeroMQ: one ``sendall`` and one ``recv`` per iteration, no broker/dealer
framing, no extra I/O thread on either side. The broker serves each connection
on its own thread and runs the task right there when the resource is free (see
``Broker.run_session_task``), so an iteration costs about one Unix-socket round
trip plus the codec.

The same frames also travel over TCP (``direct://HOST:PORT``, when the broker is
started with ``--direct-bind``): a client-driven program on another node then
skips ZeroMQ's I/O threads too (about half of a fast-path round trip in
``bench/bench_fastpath_stages.py``). Like the ZeroMQ fast path, the TCP form is
plain text: for a cluster's private network, with the session token as the only
credential.

Frames, both ways: ``!IB`` (body length, kind) then the body.

========  =========  ==========================================================
kind      direction  body
========  =========  ==========================================================
``H``     → broker   msgpack ``{"version": 1, "token": <session token>}``, once
``R``     ← broker   msgpack ``{"session_id", "resource"}`` (ready)
``T``     → broker   a codec-encoded payload (one task)
``O``     ← broker   the codec-encoded result
``E``     ← broker   msgpack ``{"status", "detail"}`` (HTTP-like status)
========  =========  ==========================================================

A malformed frame gets an ``E`` (400) and the broker closes the connection; a
task error (422 payload, 409 session closed, 500 task failed) leaves it open.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Final

import msgspec

from qhpc.resources import Payload, TaskResult, decode_result, encode_payload
from qhpc.session.errors import FastPathError

DIRECT_VERSION: Final = 1
FRAME_HEADER: Final = struct.Struct("!IB")
HELLO: Final = ord("H")
READY: Final = ord("R")
TASK: Final = ord("T")
RESULT: Final = ord("O")
ERROR: Final = ord("E")
#: endpoints of this channel look like ``unix:///run/qhpc/dispatch.sock``
SCHEME: Final = "unix://"
#: largest reply a client accepts (results with per-shot memory can be large)
MAX_REPLY_BYTES: Final = 512 << 20
#: bytes asked for by the first ``recv`` of a frame: most frames fit, so one call reads one
READ_AHEAD: Final = 64 << 10


#: the same protocol over TCP: ``direct://HOST:PORT`` (a client-driven program on another
#: node, or a data plane on a QPU's control host); no ZeroMQ I/O threads on either side
TCP_SCHEME: Final = "direct://"


def socket_path(endpoint: str) -> str:
    """The filesystem path of a ``unix://`` endpoint."""
    if not endpoint.startswith(SCHEME):
        raise ValueError(f"not a direct dispatch endpoint (expected {SCHEME}PATH): {endpoint!r}")
    return endpoint[len(SCHEME) :]


def split_host_port(text: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[::1]:PORT`` for IPv6); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def tcp_address(endpoint: str) -> tuple[str, int]:
    """``(host, port)`` of a ``direct://HOST:PORT`` endpoint."""
    try:
        if not endpoint.startswith(TCP_SCHEME):
            raise ValueError
        return split_host_port(endpoint[len(TCP_SCHEME) :])
    except ValueError:
        raise ValueError(f"not a direct TCP endpoint (expected {TCP_SCHEME}HOST:PORT)") from None


def is_direct(endpoint: str) -> bool:
    """Whether ``endpoint`` names this channel (Unix socket or TCP), not ZeroMQ's."""
    return endpoint.startswith((SCHEME, TCP_SCHEME))


def connect_stream(endpoint: str, timeout: float) -> socket.socket:
    """A connected stream socket for a ``unix://`` or ``direct://`` endpoint."""
    if endpoint.startswith(TCP_SCHEME):
        sock = socket.create_connection(tcp_address(endpoint), timeout=timeout)
        # A frame is one write: without this, Nagle holds a small frame back until
        # the previous one is acknowledged, tens of milliseconds on some stacks.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path(endpoint))
    except OSError:
        sock.close()
        raise
    return sock


def frame(kind: int, body: bytes) -> bytes:
    return FRAME_HEADER.pack(len(body), kind) + body


class FrameReader:
    """Frames from one stream socket, one ``recv`` per frame in the usual case.

    A small frame arrives whole, so reading up to :data:`READ_AHEAD` bytes at once
    gets header and body in one system call; bytes past the frame (a peer that
    pipelines) are kept for the next one.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._rest = b""
        #: a monotonic time by which the whole frame must have arrived (None: no limit
        #: beyond the socket's own timeout); ``TimeoutError`` past it
        self.deadline: float | None = None

    def read(self, limit: int) -> tuple[int, bytes] | None:
        """One frame, ``None`` at a clean end of stream; ``ValueError`` if oversized,
        ``ConnectionError`` if the stream ends inside a frame."""
        data = self._rest or self._recv(READ_AHEAD)
        self._rest = b""
        if not data:
            return None
        while len(data) < FRAME_HEADER.size:
            data += self._more()
        size, kind = FRAME_HEADER.unpack_from(data)
        if size > limit:
            raise ValueError(f"frame of {size} bytes exceeds the limit of {limit}")
        end = FRAME_HEADER.size + size
        if len(data) < end:
            parts, got = [data], len(data)
            while got < end:
                chunk = self._more(min(end - got, 1 << 20))
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
        if len(data) > end:
            self._rest = data[end:]
        return kind, data[FRAME_HEADER.size : end]

    def _recv(self, size: int) -> bytes:
        if self.deadline is not None:
            # A per-recv timeout alone lets a peer trickle a byte at a time for ever.
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the frame did not arrive in time")
            self._sock.settimeout(left)
        return self._sock.recv(size)

    def _more(self, size: int = READ_AHEAD) -> bytes:
        chunk = self._recv(size)
        if not chunk:
            raise ConnectionError("the peer closed the connection in the middle of a frame")
        return chunk


def read_frame(sock: socket.socket, limit: int) -> tuple[int, bytes] | None:
    """One frame from a socket nobody else reads ahead on (see :class:`FrameReader`)."""
    head = _read_exact(sock, FRAME_HEADER.size, allow_eof=True)
    if head is None:
        return None
    size, kind = FRAME_HEADER.unpack(head)
    if size > limit:
        raise ValueError(f"frame of {size} bytes exceeds the limit of {limit}")
    body = _read_exact(sock, size, allow_eof=False) if size else b""
    assert body is not None
    return kind, body


def _read_exact(sock: socket.socket, size: int, *, allow_eof: bool) -> bytes | None:
    data = sock.recv(size)
    if not data:
        if allow_eof:
            return None
        raise ConnectionError("the peer closed the connection in the middle of a frame")
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection in the middle of a frame")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class DirectClient:
    """A session's QPU side for a co-located program: ``run(payload)`` → result.

    Same surface as :class:`~qhpc.session.FastPathClient` (``run``,
    ``run_encoded``, ``session_id``, ``resource``, ``close``); errors are
    :class:`~qhpc.session.FastPathError` with the broker's status.
    """

    def __init__(self, endpoint: str, session_token: str, timeout: float = 600.0) -> None:
        self.timeout = timeout
        try:
            self._sock = connect_stream(endpoint, timeout)
        except OSError as exc:
            raise FastPathError(503, f"cannot reach the broker at {endpoint}: {exc}") from None
        self._sock.settimeout(timeout)
        self._reader = FrameReader(self._sock)
        hello = msgspec.msgpack.encode({"version": DIRECT_VERSION, "token": session_token})
        info: dict[str, Any] = msgspec.msgpack.decode(self._call(HELLO, hello, READY))
        self.session_id: str = info["session_id"]
        self.resource: str = info["resource"]

    def run(self, payload: Payload) -> TaskResult:
        return decode_result(self.run_encoded(encode_payload(payload)))

    def run_encoded(self, payload: bytes) -> bytes:
        """Send an encoded payload; returns the encoded result."""
        return self._call(TASK, payload, RESULT)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DirectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, kind: int, body: bytes, expected: int) -> bytes:
        try:
            self._sock.sendall(frame(kind, body))
            reply = self._reader.read(MAX_REPLY_BYTES)
        except TimeoutError:
            raise FastPathError(
                504, f"no answer from the broker within {self.timeout:g} s"
            ) from None
        except (OSError, ValueError) as exc:
            raise FastPathError(503, f"the broker's dispatch channel failed: {exc}") from None
        if reply is None:
            raise FastPathError(503, "the broker closed the dispatch channel")
        reply_kind, reply_body = reply
        if reply_kind == expected:
            return reply_body
        if reply_kind == ERROR:
            error: dict[str, Any] = msgspec.msgpack.decode(reply_body)
            raise FastPathError(int(error["status"]), str(error["detail"]))
        raise FastPathError(400, f"unexpected reply kind {reply_kind} from the broker")
