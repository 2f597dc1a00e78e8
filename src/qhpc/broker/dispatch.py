"""The broker's end of the direct dispatch channel (see :mod:`qhpc.session.direct`).

Co-located programs connect to a Unix stream socket in a directory the broker
made for it. Each connection is served by its own thread, which authenticates
the session token once and then, per frame, runs the task through
:meth:`Broker.run_session_task` — on this very thread when the resource is free.
One thread per connection keeps a round trip to two context switches.

The socket is world-connectable (programs run under an unprivileged uid): what
protects it is the session token, checked exactly as on the fast path. With a TCP
address it also listens there (``direct://HOST:PORT``), the same frames, threads and
limits: any host that reaches the port may connect, as on the ZeroMQ fast path. Since any
local user can connect, a connection must send its HELLO within
``hello_timeout`` seconds or it is closed, and at most ``max_connections`` are
open at once (authenticated or not); further ones are refused with an ERROR
frame (503) and a warning in the log.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from qhpc.errors import QhpcError
from qhpc.resources import (
    CircuitParseError,
    DecoderUnavailable,
    LimitExceeded,
    PayloadDecoder,
    PayloadError,
)
from qhpc.security import AuthError
from qhpc.session.direct import (
    DIRECT_VERSION,
    ERROR,
    HELLO,
    READY,
    RESULT,
    SCHEME,
    TASK,
    TCP_SCHEME,
    FrameReader,
    frame,
)

if TYPE_CHECKING:
    from qhpc.broker.ports import SessionRunner

log = logging.getLogger(__name__)

#: the largest HELLO frame (a token)
MAX_HELLO_BYTES = 4096
#: a connection that has not authenticated within this many seconds is closed
HELLO_TIMEOUT_S = 5.0
#: connections open at once, authenticated or not: each holds a broker thread
MAX_CONNECTIONS = 256
#: at most one "connections refused" warning per this many seconds
_REFUSAL_LOG_INTERVAL_S = 10.0


@dataclass
class DispatchStats:
    """What one session's direct calls cost, seen from the broker (seconds)."""

    calls: int = 0
    #: frame received → reply sent, summed
    busy_s: float = 0.0
    #: the device's own time, summed
    qpu_s: float = 0.0
    first_call_at: float | None = None
    last_reply_at: float | None = None

    @property
    def dispatch_overhead_s(self) -> float:
        """Time in the broker's dispatch path that was not device time."""
        return max(0.0, self.busy_s - self.qpu_s)


class _Refused(Exception):
    def __init__(self, status: int, detail: str, *, fatal: bool = False) -> None:
        super().__init__(detail)
        self.status, self.detail, self.fatal = status, detail, fatal


#: TCP keepalive of direct:// connections: first probe after 60 s idle, then every 10 s,
#: given up after 6 (a dead peer's slot is free within about two minutes)
_KEEPALIVE = tuple(
    (getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6))
    if hasattr(socket, name)
)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class DirectDispatcher:
    """Listens on ``unix://<private dir>/dispatch.sock`` for co-located programs, and
    with ``tcp=(host, port)`` on ``direct://host:port`` for programs elsewhere."""

    def __init__(
        self,
        broker: SessionRunner,
        directory: str | None = None,
        *,
        hello_timeout: float = HELLO_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        tcp: tuple[str, int] | None = None,
        unix: bool = True,
    ) -> None:
        self.broker = broker
        self.hello_timeout = hello_timeout
        self.max_connections = max_connections
        #: per-session figures for co-located programs' timings; a TCP-only dispatcher
        #: (``qhpc serve --direct-bind``) has no program to report them to, keeps none
        self.keeps_stats = unix
        self._listeners: list[socket.socket] = []
        self._dir: str | None = None
        self.path = ""
        self.endpoint = ""
        if unix:
            self._dir = directory or tempfile.mkdtemp(prefix="qhpc-dispatch-")
            # Traversable by the programs' unprivileged uid, not listable.
            os.chmod(self._dir, 0o711)
            self.path = os.path.join(self._dir, "dispatch.sock")
            if os.path.exists(self.path):
                os.unlink(self.path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.path)
            os.chmod(self.path, 0o666)
            listener.listen(64)
            self._listeners.append(listener)
            self.endpoint = SCHEME + self.path
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stats: dict[str, DispatchStats] = {}
        self._stopped = False
        self._refused = 0
        self._refusal_logged_at = float("-inf")
        self._max_frame = broker.config.max_payload_bytes + 1024
        #: ``direct://HOST:PORT`` when also listening on TCP (see qhpc.session.direct)
        self.tcp_endpoint: str | None = None
        if tcp is not None:
            listener = socket.create_server(tcp, family=_family(tcp[0]), backlog=64)
            host, port = listener.getsockname()[:2]
            self.tcp_endpoint = f"{TCP_SCHEME}{f'[{host}]' if ':' in host else host}:{port}"
            self._listeners.append(listener)
            self.endpoint = self.endpoint or self.tcp_endpoint
        if not self._listeners:
            raise ValueError("a dispatcher needs a Unix socket, a TCP address or both")
        self._threads = [
            threading.Thread(target=self._accept, args=(listener,), name="qhpc-dispatch",
                             daemon=True)
            for listener in self._listeners
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()

    def stats(self, session_id: str) -> DispatchStats:
        """The session's figures so far (a copy; zeros if it made no direct call)."""
        with self._lock:
            found = self._stats.get(session_id)
            return DispatchStats(**vars(found)) if found else DispatchStats()

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._stats.pop(session_id, None)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            connections = list(self._connections)
        for listener in self._listeners:
            try:  # wakes the thread blocked in accept() (close() alone would not, on Linux)
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(5)
        if self._dir is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            os.rmdir(self._dir)
        except OSError:
            pass

    # -- serving ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A peer gone without a FIN (a node that died) must free its slot.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in _KEEPALIVE:
                    conn.setsockopt(socket.IPPROTO_TCP, option, value)
            with self._lock:
                if self._stopped:
                    conn.close()
                    return
                full = len(self._connections) >= self.max_connections
                if not full:
                    self._connections.add(conn)
            if full:
                self._refuse_over_cap(conn)
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="qhpc-dispatch-conn", daemon=True
            ).start()

    def _refuse_over_cap(self, conn: socket.socket) -> None:
        detail = f"the broker's dispatch channel has {self.max_connections} connections open"
        now = time.monotonic()
        self._refused += 1
        if now - self._refusal_logged_at >= _REFUSAL_LOG_INTERVAL_S:
            log.warning(
                "direct dispatch: refused %d connection(s): %s (max_connections) on %s",
                self._refused, detail, self.endpoint,
            )  # fmt: skip
            self._refused, self._refusal_logged_at = 0, now
        conn.setblocking(False)  # a fresh socket's buffer takes the small frame at once
        self._refuse(conn, _Refused(503, detail + ": try again later", fatal=True))
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            reader = FrameReader(conn)
            # Anyone on the host (or the network) may connect: an unauthenticated one
            # must not hold this thread for long, however slowly it trickles its HELLO.
            conn.settimeout(self.hello_timeout)
            reader.deadline = time.monotonic() + self.hello_timeout
            session_id = self._hello(conn, reader)
            if session_id is not None:
                reader.deadline = None
                conn.settimeout(None)
                self._loop(conn, reader, session_id)
        except (OSError, ConnectionError):
            pass  # the program ended or was killed
        except Exception:
            log.exception("direct dispatch: unexpected error")
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _hello(self, conn: socket.socket, reader: FrameReader) -> str | None:
        try:
            received = reader.read(MAX_HELLO_BYTES)
            if received is None:
                return None
            kind, body = received
            if kind != HELLO:
                raise _Refused(400, "send a HELLO frame with a session token first", fatal=True)
            try:
                hello: dict[str, Any] = msgspec.msgpack.decode(body, type=dict)
                version, token = hello["version"], str(hello["token"])
            except (msgspec.DecodeError, KeyError, TypeError):
                raise _Refused(400, "malformed HELLO frame", fatal=True) from None
            if version != DIRECT_VERSION:
                detail = f"dispatch protocol {version!r} is not {DIRECT_VERSION}"
                raise _Refused(400, detail, fatal=True)
            try:
                principal = self.broker.access.authenticate(token)
            except AuthError as exc:
                raise _Refused(401, str(exc), fatal=True) from None
            if principal.session_id is None:
                raise _Refused(401, "the dispatch channel needs a session token", fatal=True)
        except ValueError as exc:  # reader.read: oversized
            self._refuse(conn, _Refused(400, str(exc), fatal=True))
            return None
        except TimeoutError:
            detail = f"no HELLO frame within {self.hello_timeout:g} s"
            self._refuse(conn, _Refused(408, detail, fatal=True))
            return None
        except _Refused as refused:
            self._refuse(conn, refused)
            return None
        reply = {"session_id": principal.session_id, "resource": principal.resource}
        conn.sendall(frame(READY, msgspec.msgpack.encode(reply)))
        return principal.session_id

    def _loop(self, conn: socket.socket, reader: FrameReader, session_id: str) -> None:
        with self._lock:
            stats = (
                self._stats.setdefault(session_id, DispatchStats())
                if self.keeps_stats
                else DispatchStats()
            )
        decoder = self.broker.payload_decoder()  # the program resends its circuits
        while True:
            try:
                received = reader.read(self._max_frame)
            except ValueError as exc:
                self._refuse(conn, _Refused(400, str(exc), fatal=True))
                return
            if received is None:
                return
            began = time.monotonic()
            kind, data = received
            try:
                qpu_s = self._run_frame(conn, decoder, session_id, kind, data)
            except _Refused as refused:
                self._refuse(conn, refused)
                if refused.fatal:
                    return
                qpu_s = 0.0
            replied = time.monotonic()
            with self._lock:
                stats.calls += 1
                stats.busy_s += replied - began
                stats.qpu_s += qpu_s
                if stats.first_call_at is None:
                    stats.first_call_at = began
                stats.last_reply_at = replied

    def _run_frame(
        self, conn: socket.socket, decoder: PayloadDecoder, session_id: str, kind: int, data: bytes
    ) -> float:
        """Run one TASK frame and send its result; the device seconds it took."""
        if kind != TASK:
            raise _Refused(400, f"unexpected frame kind {kind}", fatal=True)
        try:
            payload = decoder.decode(data)
            outcome = self.broker.run_session_task(session_id, payload, encoded=data)
        except LimitExceeded as exc:
            raise _Refused(413, str(exc)) from None
        except (PayloadError, CircuitParseError) as exc:
            raise _Refused(422, str(exc)) from None
        except DecoderUnavailable as exc:
            raise _Refused(503, str(exc)) from None
        except QhpcError as exc:
            raise _Refused(409, str(exc)) from None
        if outcome.result is None:
            why = outcome.error or "no result"
            raise _Refused(500, f"task {outcome.task_id} {outcome.state}: {why}")
        conn.sendall(frame(RESULT, outcome.result))
        return outcome.qpu_seconds

    @staticmethod
    def _refuse(conn: socket.socket, refused: _Refused) -> None:
        body = msgspec.msgpack.encode({"status": refused.status, "detail": refused.detail})
        try:
            conn.sendall(frame(ERROR, body))
        except OSError:
            pass
