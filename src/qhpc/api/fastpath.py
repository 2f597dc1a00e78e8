"""The ZeroMQ fast path: session task → result without HTTP.

This is the broker's end. The session's end (:class:`~qhpc.session.FastPathClient`)
and the frame names both ends share live below, in :mod:`qhpc.session.fastpath`,
which user programs import; ``qhpc.api.fastpath.FastPathClient`` still works and
warns.

Wire protocol (version 1). The client is a DEALER, the broker a ROUTER; every
message is three frames::

    [PROTOCOL, command, body]          client → broker
    [PROTOCOL, reply, body]            broker → client

``PROTOCOL`` is ``b"QHPC/1"``: a peer speaking another version gets an ERROR
at once. Commands:

- ``HELLO`` — body: the session token (UTF-8). Binds this connection to the
  session; reply ``READY`` with msgpack ``{"session_id", "resource"}``.
  The token is checked once, not per task.
- ``RUN`` — body: 8-byte request id + a codec-encoded payload. Reply ``RESULT``
  with the same request id + a codec-encoded result, or ``ERROR``.
- ``NOTICE`` (broker → client only, before a ``RESULT``) — body: the request id +
  one line of UTF-8 text for the user, sent once per drain to a connection whose
  task waits because its QPU is drained; the client prints it to stderr (the job's
  output) and goes on waiting for the answer.

``ERROR`` bodies are msgpack ``{"request_id", "status", "detail"}`` with HTTP-like
statuses (400 bad frame, 401 token, 409 session closed, 422 payload, 500
task failed). A bad frame never stops the server.

The server runs one thread that owns the socket (ZeroMQ sockets are not
thread-safe); executors hand finished task ids over through a queue and wake
the thread with an eventfd registered in the same poller.

A ROUTER never learns that a peer went away, so what the server keeps per
connection (its session and a cache of decoded circuits) is dropped when a task
of it is refused with 409 (its session is closed), by a sweep every
``sweep_interval`` seconds over connections whose session has closed, and, least
recently used first, beyond ``max_connections``. A dropped connection must send
HELLO again (its next RUN gets 401).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from qhpc.errors import QhpcError
from qhpc.resources import (
    CircuitParseError,
    DecoderUnavailable,
    LimitExceeded,
    Payload,
    PayloadDecoder,
    PayloadError,
    SamplerTask,
)
from qhpc.security import AuthError
from qhpc.session import FastPathError as _FastPathError
from qhpc.session.fastpath import (
    ERROR,
    HELLO,
    NOTICE,
    PROTOCOL,
    READY,
    REQUEST_ID_BYTES,
    RESULT,
    RUN,
)
from qhpc.session.fastpath import FastPathClient as _FastPathClient
from qhpc.store import NotFoundError

if TYPE_CHECKING:  # the client side (user programs) must not import the broker
    from qhpc.broker import Broker

log = logging.getLogger(__name__)

__all__ = ["FastPathServer"]


def __getattr__(name: str) -> Any:
    # The client's names were re-exported here; old imports still work, and warn.
    moved = {"FastPathClient": _FastPathClient, "FastPathError": _FastPathError}
    if name not in moved:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"qhpc.api.fastpath.{name} moved: import it from qhpc.session",
        DeprecationWarning,
        stacklevel=2,
    )
    return moved[name]


#: a session task runs on the server's own thread, when its resource is idle, if the
#: same payload shape (its circuits, shots and parameter-set count; see _shape) already
#: ran within this many seconds on this connection: two thread hand-offs fewer. Any
#: other task is queued for the executor and timed, so a tenant's new, heavy task never
#: holds up the other connections' messages, and what runs inline has shown it takes
#: at most about this long. 5 ms covers a small exact estimator step on Aer (H2's VQE
#: step: ~0.75 ms of device time, 1-3 ms admission to answer through the executor on a
#: loaded machine), whose hand-offs cost more than the step itself (bench/bench_vqe.py)
INLINE_BUDGET = 0.005
#: connections remembered at once (each may hold a cache of decoded circuits)
MAX_CONNECTIONS = 1024
#: how often (seconds) connections of closed sessions are forgotten
SWEEP_INTERVAL_S = 30.0


@dataclass
class _Pending:
    identity: bytes
    request_id: bytes
    #: the payload's shape and when it was admitted: its time, hand-offs included,
    #: decides whether the same shape may run inline next time
    shape: tuple[Any, ...] | None = None
    started: float = 0.0
    payload: Payload | None = None


@dataclass
class _Connection:
    session_id: str
    #: its session's circuits repeat: decode them once
    decoder: PayloadDecoder
    resource: str
    #: the notice this connection was last sent (one per drain, not one per task)
    told: str = ""
    #: payload shapes this connection has run, and how long each took (see _shape)
    timed: dict[tuple[Any, ...], tuple[float, Payload]] = field(default_factory=dict)

    def may_run_inline(self, shape: tuple[Any, ...] | None) -> bool:
        """Only a shape already seen to finish within the budget runs on the server's
        thread: a tenant's first heavy task, whatever the resource's average, goes to
        the executor, so one session cannot hold up every other connection."""
        known = None if shape is None else self.timed.get(shape)
        return known is not None and known[0] <= INLINE_BUDGET

    def timed_shape(self, shape: tuple[Any, ...] | None, seconds: float, payload: Payload) -> None:
        if shape is None:
            return
        if shape not in self.timed and len(self.timed) >= MAX_TIMED_SHAPES:
            del self.timed[next(iter(self.timed))]  # the oldest
        # The payload is kept with its figure: the shape names its circuits by id, and
        # holding them keeps those ids from being reused by other circuits.
        self.timed[shape] = (seconds, payload)


#: payload shapes each connection remembers the run time of
MAX_TIMED_SHAPES = 64


def _shape(payload: Payload) -> tuple[Any, ...] | None:
    """What a task's run time depends on, for a payload the connection's decoder served
    from its caches: the very circuit (and observable) objects, the shots and the number
    of parameter sets; not the parameter values (a variational loop's steps share a
    shape). Fresh circuits get a fresh shape, so they are timed before they inline."""
    if isinstance(payload, SamplerTask):
        return ("sampler", *map(id, payload.circuits), payload.shots)
    return (
        "estimator", id(payload.circuit), id(payload.observables), payload.shots,
        len(payload.parameter_values),
    )  # fmt: skip


class FastPathServer:
    """Serves session tasks over ZeroMQ for one broker."""

    def __init__(
        self,
        broker: Broker,
        endpoint: str = "tcp://127.0.0.1:0",
        *,
        max_connections: int = MAX_CONNECTIONS,
        sweep_interval: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.broker = broker
        self.max_connections = max_connections
        self.sweep_interval = sweep_interval
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._socket.bind(endpoint)
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        #: by ZeroMQ identity, least recently used first (owned by the server thread)
        self._connections: OrderedDict[bytes, _Connection] = OrderedDict()
        self._swept_at = time.monotonic()
        self._pending: dict[str, _Pending] = {}
        self._done: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="qhpc-fastpath", daemon=True)

    def start(self) -> FastPathServer:
        self._thread.start()
        return self

    @property
    def tracked_connections(self) -> int:
        """How many connections the server holds a session (and a decoder) for."""
        return len(self._connections)

    def stop(self) -> None:
        self._stop.set()
        os.eventfd_write(self._wake, 1)
        self._thread.join(timeout=10)
        self._socket.close()
        os.close(self._wake)

    # -- loop ------------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(1000))
            if self._wake in events:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
                self._send_finished()
            if self._socket in events:
                for _ in range(1000):  # drain what is there, then look at completions again
                    # Asking is cheaper than the exception an empty receive raises.
                    if not int(self._socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                        break
                    try:
                        frames = self._socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(frames)
            if time.monotonic() - self._swept_at >= self.sweep_interval:
                try:
                    self._sweep()
                except Exception:  # a store hiccup must not stop the fast path
                    log.exception("fast path: sweeping closed sessions failed")

    def _handle(self, frames: list[bytes]) -> None:
        identity = frames[0]
        try:
            if len(frames) != 4 or frames[1] != PROTOCOL:
                raise _Reject(400, b"", f"expected 3 frames starting with {PROTOCOL.decode()}")
            command, body = frames[2], frames[3]
            if command == HELLO:
                self._hello(identity, body)
            elif command == RUN:
                self._run(identity, body)
            else:
                raise _Reject(400, b"", f"unknown command {command[:20]!r}")
        except _Reject as reject:
            self._error(identity, reject.request_id, reject.status, reject.detail)
        except Exception:  # the loop must survive anything a client sends
            log.exception("fast path: unexpected error")
            self._error(identity, b"", 500, "internal error")

    def _hello(self, identity: bytes, body: bytes) -> None:
        try:
            principal = self.broker.access.authenticate(body.decode("utf-8", "replace"))
        except AuthError as exc:
            raise _Reject(401, b"", str(exc)) from None
        if principal.session_id is None:
            raise _Reject(401, b"", "the fast path needs a session token")
        self._connections[identity] = _Connection(
            principal.session_id, self.broker.payload_decoder(), principal.resource or ""
        )
        self._connections.move_to_end(identity)
        while len(self._connections) > self.max_connections:
            self._connections.popitem(last=False)
            log.info(
                "fast path: over %d connections, forgot the least recently used one",
                self.max_connections,
            )
        reply = {"session_id": principal.session_id, "resource": principal.resource}
        self._socket.send_multipart([identity, PROTOCOL, READY, msgspec.msgpack.encode(reply)])

    def _run(self, identity: bytes, body: bytes) -> None:
        request_id = body[:REQUEST_ID_BYTES]
        if len(request_id) != REQUEST_ID_BYTES:
            raise _Reject(400, b"", "RUN body must start with an 8-byte request id")
        connection = self._connections.get(identity)
        if connection is None:
            raise _Reject(
                401, request_id,
                "this connection holds no session (no HELLO yet, or it was idle and "
                "forgotten): send HELLO with a session token first",
            )  # fmt: skip
        self._connections.move_to_end(identity)
        session_id = connection.session_id
        try:
            data = body[REQUEST_ID_BYTES:]
            payload = connection.decoder.decode(data)
            shape = _shape(payload)
            # A short task on an idle resource runs right here (no executor hand-off);
            # anything else is queued and answered when it has finished.
            budget = INLINE_BUDGET if connection.may_run_inline(shape) else -1.0
            started = time.perf_counter()
            task_id, outcome = self.broker.start_session_task(
                session_id, payload, data, on_done=self._finished, inline_budget=budget
            )
        except LimitExceeded as exc:
            raise _Reject(413, request_id, str(exc)) from None
        except (PayloadError, CircuitParseError) as exc:
            raise _Reject(422, request_id, str(exc)) from None
        except DecoderUnavailable as exc:
            raise _Reject(503, request_id, str(exc)) from None
        except QhpcError as exc:
            self._connections.pop(identity, None)  # its session is closed (or unknown)
            raise _Reject(409, request_id, str(exc)) from None
        if outcome is not None:
            connection.timed_shape(shape, time.perf_counter() - started, payload)
            self._reply(identity, request_id, task_id, outcome.state, outcome.result, outcome.error)
        else:
            self._pending[task_id] = _Pending(identity, request_id, shape, started, payload)
            self._notify(identity, request_id, connection)

    def _notify(self, identity: bytes, request_id: bytes, connection: _Connection) -> None:
        """Tell a waiting client, once per drain, that its QPU is drained (it prints it
        into the job's output: a user should not have to guess why a step stalls)."""
        notice = self.broker.operators.notice(connection.resource)
        if notice is not None and notice != connection.told:
            connection.told = notice
            self._socket.send_multipart([identity, PROTOCOL, NOTICE, request_id + notice.encode()])

    def _sweep(self) -> None:
        """Forget the connections whose session has closed (their peers may be gone)."""
        self._swept_at = time.monotonic()
        closed: set[str] = set()
        for session_id in {c.session_id for c in self._connections.values()}:
            try:
                record = self.broker.records.session(session_id)
            except NotFoundError:
                closed.add(session_id)
                continue
            if record.closed_at is not None or record.deadline <= self.broker.clock():
                closed.add(session_id)
        for identity in [i for i, c in self._connections.items() if c.session_id in closed]:
            del self._connections[identity]

    def _finished(self, task_id: str) -> None:
        # Runs on an executor thread: only hand over, never touch the socket.
        self._done.put(task_id)
        os.eventfd_write(self._wake, 1)

    def _send_finished(self) -> None:
        while True:
            try:
                task_id = self._done.get_nowait()
            except queue.Empty:
                return
            pending = self._pending.pop(task_id, None)
            if pending is None:
                continue
            ended = self.broker.take_outcome(task_id)
            connection = self._connections.get(pending.identity)
            if connection is not None and pending.payload is not None:
                # From admission to here, queueing and hand-offs included: an upper
                # bound of what the same shape costs inline.
                took = time.perf_counter() - pending.started
                connection.timed_shape(pending.shape, took, pending.payload)
            self._reply(
                pending.identity, pending.request_id, task_id, ended.state, ended.result,
                ended.error,
            )  # fmt: skip

    def _reply(
        self,
        identity: bytes,
        request_id: bytes,
        task_id: str,
        state: str,
        data: bytes | None,
        error: str | None,
    ) -> None:
        if data is None:
            detail = f"task {task_id} {state}: {error or 'no result'}"
            self._error(identity, request_id, 500, detail)
        else:
            self._socket.send_multipart([identity, PROTOCOL, RESULT, request_id + data])

    def _error(self, identity: bytes, request_id: bytes, status: int, detail: str) -> None:
        body = msgspec.msgpack.encode(
            {"request_id": request_id, "status": status, "detail": detail}
        )
        self._socket.send_multipart([identity, PROTOCOL, ERROR, body])


class _Reject(Exception):
    def __init__(self, status: int, request_id: bytes, detail: str) -> None:
        self.status = status
        self.request_id = request_id
        self.detail = detail
