"""The ZeroMQ fast path, the session's end: the protocol's frames and :class:`FastPathClient`.

Both ends import this module: the client here, the server
(:class:`qhpc.api.FastPathServer`) from above, so the frame names are defined
once and point down. It lives in the session room, not in ``qhpc.api``, because
hybrid programs import it: a user program must reach its session without loading
the broker or FastAPI. The protocol (version 1) is described in
:mod:`qhpc.api.fastpath`.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
import zmq

from qhpc.resources import Payload, TaskResult, decode_result, encode_payload
from qhpc.session.errors import FastPathError

PROTOCOL = b"QHPC/1"
HELLO = b"HELLO"
READY = b"READY"
RUN = b"RUN"
RESULT = b"RESULT"
ERROR = b"ERROR"
#: a line for the user while a task waits (its QPU is drained); the answer still follows
NOTICE = b"NOTICE"
REQUEST_ID_BYTES = 8


class FastPathClient:
    """A session's quantum side: ``run(payload)`` → result, over one ZeroMQ connection."""

    def __init__(self, endpoint: str, session_token: str, timeout: float = 600.0) -> None:
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # A receive timeout instead of a poll before each receive: one call fewer.
        self._socket.setsockopt(zmq.RCVTIMEO, max(1, int(timeout * 1000)))
        self._socket.connect(endpoint)
        self.timeout = timeout
        self._counter = 0
        try:
            _, body = self._call(HELLO, session_token.encode())
        except FastPathError:
            self._socket.close()
            raise
        info: dict[str, Any] = msgspec.msgpack.decode(body)
        self.session_id: str = info["session_id"]
        self.resource: str = info["resource"]

    def run(self, payload: Payload) -> TaskResult:
        return decode_result(self.run_encoded(encode_payload(payload)))

    def run_encoded(self, payload: bytes) -> bytes:
        """Send an already encoded payload; returns the encoded result (no decode cost)."""
        self._counter += 1
        request_id = self._counter.to_bytes(REQUEST_ID_BYTES, "big")
        _, body = self._call(RUN, request_id + payload)
        if body[:REQUEST_ID_BYTES] != request_id:
            raise FastPathError(400, "reply for another request")
        return body[REQUEST_ID_BYTES:]

    def run_many_encoded(self, payloads: list[bytes], window: int = 64) -> list[bytes]:
        """Pipeline encoded payloads (up to ``window`` in flight); results in order.

        Tasks of one session still run one after another, but the broker overlaps
        their transport and commits them together, so throughput is far higher than
        with ``run_encoded`` in a loop.
        """
        results: dict[bytes, bytes] = {}
        order: list[bytes] = []
        sent = 0
        while len(results) < len(payloads):
            while sent < len(payloads) and sent - len(results) < window:
                self._counter += 1
                request_id = self._counter.to_bytes(REQUEST_ID_BYTES, "big")
                order.append(request_id)
                self._socket.send_multipart([PROTOCOL, RUN, request_id + payloads[sent]])
                sent += 1
            _, body = self._receive()
            results[body[:REQUEST_ID_BYTES]] = body[REQUEST_ID_BYTES:]
        return [results[r] for r in order]

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> FastPathClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, command: bytes, body: bytes) -> tuple[bytes, bytes]:
        self._socket.send_multipart([PROTOCOL, command, body])
        return self._receive()

    def _receive(self) -> tuple[bytes, bytes]:
        while True:
            try:
                frames = self._socket.recv_multipart()
            except zmq.Again:
                raise FastPathError(
                    504, f"no answer from the broker within {self.timeout:g} s"
                ) from None
            if len(frames) != 3 or frames[0] != PROTOCOL:
                raise FastPathError(400, "malformed reply from the broker")
            if frames[1] != NOTICE:
                break
            # Into the job's output (stderr), as text the broker composed: printable only.
            text = frames[2][REQUEST_ID_BYTES:].decode("utf-8", "replace")
            print("".join(c for c in text if c.isprintable())[:500], file=sys.stderr, flush=True)
        if frames[1] == ERROR:
            error: dict[str, Any] = msgspec.msgpack.decode(frames[2])
            raise FastPathError(int(error["status"]), str(error["detail"]))
        return frames[1], frames[2]
