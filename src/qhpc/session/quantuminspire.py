"""A Quantum Inspire runtime drives a qhpc session: QI's compute-runtime protocol over ZeroMQ.

Quantum Inspire's hybrid runtime (the *job processor*) talks to a backend's *control
software* over ZeroMQ with JSON messages (:mod:`qhpc.session.qi_messages` holds the
protocol, its source and its schema). :class:`QiEndpoint` plays the control software
for one qhpc session, so a QI-style runtime runs its circuits as that session's tasks::

    QI runtime ──REQ──▶ QiEndpoint (REP) ──session channel──▶ broker ─▶ resource
               ◀─SUB── QiEndpoint (PUB: publish_state)

``initialize`` takes the endpoint's lock for the request's ``session_id`` (a UUID the
runtime chose; with a token configured the request must carry it as
``payload.token``), ``execute`` runs one circuit (cQASM, or OpenQASM) as a session task,
``terminate`` releases the lock. ``terminate`` does **not** close the qhpc session: that
session belongs to its Slurm job (the epilog closes it), and the protocol's terminate
only ends one execution phase ("the system can resume normal operations").
``get_static`` describes the resource from its device target, ``get_dynamic`` gives its
error rates and the broker's view of it as metrics; both come from a
:class:`DeviceView`. A PUB socket publishes the state (``OFFLINE``, ``CALIBRATING``,
``EXECUTING``, ``IDLE``) every ``heartbeat`` seconds.

The trust boundary does not move: the endpoint runs with the session's own token (from
the environment, never an argument), so the runtime can do nothing the session cannot.
Who may talk to it is the other half. Loopback is no boundary on a shared node (every
user's programs reach 127.0.0.1), so a TCP endpoint, loopback included, refuses to
start without a token, which ``initialize`` must carry. Only an ``ipc://`` socket in a
directory no one else may enter (created 0700 here, or already ours and 0700) and
``inproc://`` go without one: there the file system is the boundary. Every incoming
frame is budgeted and validated before anything acts on it, and a bad one gets a
failure reply; the endpoint keeps serving.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq

from qhpc.errors import QhpcError
from qhpc.files import PRIVATE_DIR, NotPrivateError, private_dir
from qhpc.resources import DeviceTarget, SamplerResult, SamplerTask, load_circuit
from qhpc.resources.cqasm import cqasm_gate_names
from qhpc.resources.payload import Payload, TaskResult
from qhpc.session import qi_messages as qi

log = logging.getLogger(__name__)

#: how often the serving loop looks up from its socket to see whether to stop (ms)
_POLL_MS = 200
#: terminated session_ids remembered to tell "terminated" from "never initialized"
_REMEMBERED = 64
_OFFLINE = frozenset({"offline", "error", "maintenance"})


class SessionRunner(Protocol):
    """What the endpoint needs of a session channel (:data:`qhpc.session.SessionChannel`)."""

    resource: str
    session_id: str

    def run(self, payload: Payload) -> TaskResult: ...


@dataclass(frozen=True)
class DeviceStatus:
    """The broker's view of the session's resource: state in QDMI's words."""

    state: str
    reason: str = ""
    queue_length: int = 0
    pending: int = 0


class DeviceView(Protocol):
    """Where ``get_static`` / ``get_dynamic`` / the published state read the resource
    (:class:`qhpc.program.BrokerDevice`: the broker's REST API, with the session token)."""

    def target(self) -> DeviceTarget: ...

    def status(self) -> DeviceStatus: ...


@dataclass(frozen=True)
class EndpointConfig:
    """Where to listen and how much to take; ``token`` is read from a file or the
    environment by the caller (kept out of ``repr``)."""

    bind: str = f"tcp://127.0.0.1:{qi.REQUEST_PORT}"
    publish: str | None = f"tcp://127.0.0.1:{qi.PUBLISH_PORT}"
    heartbeat: float = 2.0
    limits: qi.MessageLimits = field(default_factory=qi.MessageLimits)
    token: str | None = field(default=None, repr=False)
    #: an initialize from another session_id takes over a lock idle this long (seconds)
    lock_idle_timeout: float = 900.0

    def __post_init__(self) -> None:
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        if self.token:
            return
        why = tokenless_refusal(self.bind)
        if why is not None:
            raise QhpcError(
                f"{self.bind} {why}: set a token (--token-file or QHPC_QI_TOKEN) that the "
                "runtime sends in initialize, or bind to ipc://DIR/NAME in a directory of "
                "your own"
            )
        if self.publish and not is_local(self.publish):
            raise QhpcError(
                f"{self.publish} is reachable from other hosts: set a token (QHPC_QI_TOKEN or "
                "--token-file) that the runtime sends in initialize, or publish on 127.0.0.1"
            )


def tokenless_refusal(address: str) -> str | None:
    """Why a request socket at ``address`` needs a token; ``None`` when the file system
    (an ``ipc://`` path, its directory checked at bind) or the process keeps others out."""
    scheme, _, path = address.partition("://")
    if scheme == "inproc":
        return None
    if scheme != "ipc":
        return "can be reached by every user of this host, loopback included"
    if path.startswith("@"):
        return "is an abstract socket: it has no file permissions, every local user reaches it"
    if path in ("", "*"):
        return "has no directory of its own (ZeroMQ would pick a shared one)"
    return None


def private_socket_dir(address: str) -> Path:
    """The directory of the ``ipc://`` socket ``address``, created 0700 if missing; an
    existing one must already be ours and 0700. It is not tightened: a program that
    entered it while it was open could still reach the socket from inside."""
    directory = Path(address.partition("://")[2]).expanduser().absolute().parent
    existed = directory.exists()
    try:
        private_dir(directory, tighten=False)
        info = directory.stat()
    except (NotPrivateError, OSError) as exc:
        raise QhpcError(f"cannot make {directory} private for {address}: {exc}") from None
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or mode != PRIVATE_DIR:
        raise QhpcError(
            f"{directory} (mode {mode:04o}, uid {info.st_uid}) is not a directory of this "
            f"user's alone (0700): without a token, {address} needs one; name a new "
            "directory and the endpoint creates it"
        )
    if not existed:
        log.info("created %s (0700) for %s", directory, address)
    return directory


def is_local(address: str) -> bool:
    """Whether a ZeroMQ address is reachable from this host only (loopback, ipc, inproc)."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name


def static_payload(target: DeviceTarget, name: str, starttime: float) -> dict[str, Any]:
    """``get_static``: the resource's shape and gate set in the protocol's terms."""
    qubits = range(target.num_qubits)
    edges = target.coupling_map
    if edges is None:  # all-to-all: every directed pair
        edges = tuple((a, b) for a in qubits for b in qubits if a != b)
    return {
        "protocol_version": qi.PROTOCOL_VERSION,
        "nqubits": target.num_qubits,
        "topology": [[int(a), int(b)] for a, b in edges],
        "name": name,
        "pgs": [g.upper() for g in cqasm_gate_names(target.basis_gates)],
        "starttime": starttime,
        "supports_raw_data": True,
        # qhpc's resources compile for their device themselves: nothing to do beforehand
        "default_compiler_config": {"decomposition": [], "mapping": [], "optimization": [],
                                    "routing": []},
    }  # fmt: skip


def dynamic_payload(target: DeviceTarget, status: DeviceStatus) -> dict[str, Any]:
    """``get_dynamic``: metrics (numbers, or labelled numbers, as the protocol has them)."""
    return {
        "resource_state": {"__labels__": ["state"], status.state: 1},
        "queue_length": status.queue_length,
        "pending_in_device": status.pending,
        "single_qubit_error": target.single_qubit_error,
        "two_qubit_error": target.two_qubit_error,
        "readout_error": target.readout_error,
        "t1_seconds": target.t1,
        "t2_seconds": target.t2,
    }


def hardware_state(status: DeviceStatus | None, executing: bool) -> str:
    """The published state: the first of the protocol's states that applies."""
    if status is None or status.state in _OFFLINE:
        return "OFFLINE"
    if status.state == "calibration":
        return "CALIBRATING"
    return "EXECUTING" if executing else "IDLE"


class QiEndpoint:
    """One session's control-software end of the protocol: a REP socket and a PUB socket,
    each owned by one thread (ZeroMQ sockets are not thread-safe)."""

    def __init__(
        self, session: SessionRunner, device: DeviceView, config: EndpointConfig | None = None
    ) -> None:
        self.session = session
        self.device = device
        self.config = config or EndpointConfig()
        self.starttime = time.time()
        self.endpoint = self.config.bind
        self.publish_endpoint = self.config.publish
        self._holder: str | None = None
        self._last_seen = 0.0
        self._ended: deque[str] = deque(maxlen=_REMEMBERED)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> QiEndpoint:
        """Bind both sockets, then serve; :class:`QhpcError` if either cannot be bound
        (a port another program holds: the runtime must not be pointed at it)."""
        if not self.config.token and self.config.bind.startswith("ipc://"):
            private_socket_dir(self.config.bind)
        rep = self._socket(zmq.REP, self.config.bind, self.config.limits.frame_cap)
        self.endpoint = rep.getsockopt_string(zmq.LAST_ENDPOINT)
        self._threads = [threading.Thread(target=self._serve, args=(rep,), daemon=True,
                                          name="qi-endpoint")]  # fmt: skip
        if self.config.publish:
            try:
                pub = self._socket(zmq.PUB, self.config.publish)
            except BaseException:
                rep.close()
                raise
            self.publish_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self._threads.append(threading.Thread(target=self._publish, args=(pub,),
                                                  daemon=True, name="qi-publish"))  # fmt: skip
        for thread in self._threads:
            thread.start()
        log.info("Quantum Inspire endpoint for session %s on %s (state on %s)",
                 self.session.session_id, self.endpoint, self.publish_endpoint)  # fmt: skip
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def wait(self) -> None:
        """Block until :meth:`stop` (or Ctrl-C in the caller)."""
        while not self._stop.wait(1.0):
            pass

    @property
    def initialized_by(self) -> str | None:
        """The session_id holding the lock (between its initialize and terminate)."""
        with self._lock:
            return self._holder

    # -- the protocol ----------------------------------------------------------------------
    def handle(self, frames: list[bytes]) -> dict[str, Any]:
        """The reply to one request (its frames): always a schema-valid message."""
        session_id, command = qi.NIL_SESSION, "request"
        try:
            if len(frames) != 1:
                raise qi.QiProtocolError(f"{len(frames)} frames; a request is one JSON frame")
            message = qi.decode(frames[0], self.config.limits)
            command = qi.check_request(message)
            session_id = str(message["session_id"])
            reply = self._dispatch(command, session_id, message.get("payload") or {})
        except qi.QiProtocolError as exc:
            return self._failure(exc.session_id, exc.message)
        except QhpcError as exc:  # a circuit, payload or session refusal, worded by qhpc
            return self._failure(session_id, str(exc))
        except Exception:
            log.exception("Quantum Inspire endpoint: %s failed", command)
            return self._failure(session_id, "internal error in the qhpc endpoint")
        try:
            qi.check(reply, qi.SUCCESS_REPLY[command])
        except qi.QiProtocolError as exc:  # a bug here, not the peer's: say so, send nothing bad
            log.error("Quantum Inspire endpoint: own %s reply broke the schema: %s", command, exc)
            return self._failure(session_id, f"internal error: the {command} reply was invalid")
        return reply

    @staticmethod
    def _failure(session_id: str, text: str) -> dict[str, Any]:
        reply = qi.failure(session_id, text)
        qi.check(reply, "FailureReply")
        return reply

    def _dispatch(self, command: str, session_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if command == "initialize":
            return self._initialize(session_id, payload)
        self._authorize(session_id, command)
        if command == "terminate":
            return self._terminate(session_id)
        if command == "execute":
            return qi.success(session_id, self._execute(session_id, payload))
        target = self.device.target()
        if command == "get_static":
            return qi.success(session_id, static_payload(target, self.session.resource,
                                                         self.starttime))  # fmt: skip
        return qi.success(session_id, dynamic_payload(target, self.device.status()))

    def _initialize(self, session_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        expected = self.config.token
        if expected is not None:
            given = str(payload.get("token", ""))
            if not hmac.compare_digest(given.encode(), expected.encode()):
                raise qi.QiProtocolError(
                    "initialize needs this endpoint's token in payload.token (missing or wrong)",
                    session_id,
                )
        with self._lock:
            now = time.monotonic()
            idle = now - self._last_seen
            if self._holder not in (None, session_id) and idle < self.config.lock_idle_timeout:
                raise qi.QiProtocolError(
                    "initialized by another session_id: it must terminate first "
                    f"(or stay idle {self.config.lock_idle_timeout:g} s)",
                    session_id,
                )
            self._holder, self._last_seen = session_id, now
        return qi.success(session_id)

    def _authorize(self, session_id: str, command: str) -> None:
        with self._lock:
            holds = self._holder == session_id
            if holds:
                self._last_seen = time.monotonic()
            ended = session_id in self._ended
        needs_lock = command in ("execute", "terminate") or self.config.token is not None
        if holds or not needs_lock:
            return
        if command == "terminate" and self.config.token is None:
            return  # terminating what is not initialized changes nothing: success
        if ended:
            why = "was terminated; send initialize again before"
        else:
            why = "is not initialized; send initialize with it before"
        raise qi.QiProtocolError(f"session_id {session_id} {why} {command}", session_id)

    def _terminate(self, session_id: str) -> dict[str, Any]:
        with self._lock:
            if self._holder == session_id:
                self._holder = None
                self._ended.append(session_id)
        return qi.success(session_id)

    def _execute(self, session_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        raw = bool(payload.get("include_raw_data", False))
        circuit = load_circuit(str(payload["circuit"]))
        task = SamplerTask((circuit,), shots=int(payload["number_of_shots"]), memory=raw)
        result = self.session.run(task)
        if not isinstance(result, SamplerResult):
            raise QhpcError(f"the session answered a sampler task with a {result.kind} result")
        sampled = result.circuits[0]
        return {
            "job_id": payload["job_id"],
            "results": {key.replace(" ", ""): int(n) for key, n in sampled.counts.items()},
            "raw_data": list(sampled.memory) if raw and sampled.memory is not None else None,
        }

    # -- the threads ---------------------------------------------------------------------
    def _socket(self, kind: int, address: str, max_frame: int = -1) -> zmq.Socket[bytes]:
        socket = self._context.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        # before bind: the listener copies the options its connections will have
        socket.setsockopt(zmq.MAXMSGSIZE, max_frame)
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            socket.close()
            raise QhpcError(
                f"cannot listen on {address}: {exc.strerror} (if another program holds it, "
                "a runtime sent there would talk to that program: choose another address)"
            ) from None
        return socket

    def _serve(self, rep: zmq.Socket[bytes]) -> None:
        try:
            while not self._stop.is_set():
                if not rep.poll(_POLL_MS):
                    continue
                reply = self.handle(rep.recv_multipart())
                rep.send(qi.encode(reply))
        except Exception:  # the socket itself failed: no point beating on, say so and end
            log.exception("Quantum Inspire endpoint stopped serving")
        finally:
            rep.close()
            self._stop.set()  # wait() returns: the command ends rather than hang unserved

    def _publish(self, pub: zmq.Socket[bytes]) -> None:
        last = None
        try:
            while True:
                try:
                    status: DeviceStatus | None = self.device.status()
                except Exception as exc:  # the broker unreachable: say OFFLINE, keep beating
                    log.debug("device status unavailable: %s", exc)
                    status = None
                state = hardware_state(status, self.initialized_by is not None)
                if state != last:
                    log.info("Quantum Inspire endpoint state: %s", state)
                    last = state
                message = qi.state_message(state, time.time())
                qi.check(message, "PublishState")
                pub.send(qi.encode(message))
                if self._stop.wait(self.config.heartbeat):
                    break
        finally:
            pub.close()


__all__ = [
    "DeviceStatus",
    "DeviceView",
    "EndpointConfig",
    "QiEndpoint",
    "SessionRunner",
    "dynamic_payload",
    "hardware_state",
    "is_local",
    "private_socket_dir",
    "static_payload",
    "tokenless_refusal",
]
