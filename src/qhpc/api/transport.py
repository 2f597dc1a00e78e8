"""The HTTP server's limits: how long and how much a client may take, how many at once.

A client that opens connections and then sends slowly (or not at all) must not hold
the server: each connection costs a socket and memory, and uvicorn has no timeout
for an unfinished request. The limits, all set from ``qhpc serve`` options
(:class:`ServerLimits`):

* request headers must be complete ``header_timeout`` seconds after the connection
  opened or the request's first byte arrived (:class:`GuardedH11Protocol`, uvicorn's
  h11 protocol plus that deadline), and be at most ``max_header_bytes`` long (h11's
  ``max_incomplete_event_size``; beyond it uvicorn answers 400 and closes);
* the whole body must arrive within ``body_timeout`` seconds and be at most the
  payload limit (408 / 413, then the connection is closed: ``api/limits.py``);
* an idle keep-alive connection is closed after ``keep_alive_timeout`` seconds;
* beyond ``max_connections`` open connections (or running requests), uvicorn answers
  503 at once instead of queueing (``limit_concurrency``).

So every connection either makes progress or is gone within a bounded time, and a
flood of stalled ones costs 503s only until their deadlines pass.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

#: problem body of the 408 written when headers come too slowly (no app involved)
_HEADERS_TIMEOUT_BODY = json.dumps(
    {
        "type": "urn:qhpc:problem:request-timeout",
        "title": "Request Timeout",
        "status": 408,
        "detail": "the request headers did not arrive in time",
    }
).encode()
_HEADERS_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/problem+json\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_HEADERS_TIMEOUT_BODY)).encode() + b"\r\n\r\n"
) + _HEADERS_TIMEOUT_BODY


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts (seconds) and sizes of the HTTP server; see the module doc."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    max_connections: int = 256
    max_header_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        if not (self.header_timeout > 0 and self.body_timeout > 0):
            raise ValueError("header and body timeouts must be positive")
        if self.keep_alive_timeout < 1 or self.max_connections < 1:
            raise ValueError("keep-alive timeout and connection cap must be at least 1")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes below 1024 would refuse ordinary requests")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that closes connections whose headers stall.

    The deadline runs while the connection waits for a request's headers (h11's
    client state IDLE): from the moment the connection opened, and again from the first
    byte of each later request (between requests, uvicorn's keep-alive timeout rules).
    """

    #: set per server by :func:`guarded_h11`
    header_timeout: float = ServerLimits.header_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()  # a request has begun, or may: its headers are on the clock
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._disarm()  # the next request starts under uvicorn's keep-alive timeout
        super().on_response_complete()

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            # Written raw: h11 cannot frame a response to a request it has not seen.
            self.transport.write(_HEADERS_TIMEOUT)
            self.transport.close()


def guarded_h11(header_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class with this header deadline (uvicorn instantiates it per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout})


def server_config(app: ASGIApp, host: str, port: int, limits: ServerLimits) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` under ``limits`` (h11, the guarded protocol)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn's records go to the process's handlers (qhpc.logcontext.configure),
        # in its format and with the request's id, instead of uvicorn's own set-up.
        log_config=None,
        log_level=None,
        http=guarded_h11(limits.header_timeout),
        timeout_keep_alive=limits.keep_alive_timeout,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
