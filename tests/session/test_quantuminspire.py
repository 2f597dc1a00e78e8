"""Quantum Inspire's compute-runtime protocol driving a real qhpc session.

A real ``qhpc serve`` (aer, loopback) holds a session; ``qhpc session qi-endpoint`` runs
as its own process with the session in its environment, as inside a Slurm job (on an
``ipc://`` socket in a directory of its own, the one place it serves without a token;
over TCP it always has one, generated into a file when not given). The
client here is written from the protocol's schema (QuTech's published v3 messages, as
qhpc's ``compute_runtime_v3.schema.json`` states them): a REQ socket for requests and a
SUB socket for ``publish_state``, every message it sends and every one it gets checked
against the schema with ``jsonschema`` directly, not through the endpoint's own code.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from jsonschema import Draft202012Validator

from helpers import free_port, run_cli, start_serve, wait_healthy
from qhpc.client import connect
from qhpc.errors import QhpcError
from qhpc.program import BrokerDevice, RemoteError
from qhpc.session import EndpointConfig, QiEndpoint, open_channel
from qhpc.session.qi_messages import MessageLimits, schema
from qhpc.session.quantuminspire import is_local, tokenless_refusal

SHOTS = 4000


def validator(entry: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$defs": schema()["$defs"], "$ref": f"#/$defs/{entry}"},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


REPLY_FOR = {
    "initialize": "SimpleSuccessReply", "terminate": "SimpleSuccessReply",
    "execute": "ExecuteReply", "get_static": "StaticDataReply", "get_dynamic": "DynamicDataReply",
}  # fmt: skip
REQUEST_FOR = {
    "initialize": "InitializeRequest", "terminate": "TerminateRequest",
    "execute": "ExecuteRequest", "get_static": "StaticDataRequest",
    "get_dynamic": "DynamicDataRequest",
}  # fmt: skip


class SchemaClient:
    """The job processor's end: one REQ socket; every request and reply schema-checked."""

    def __init__(self, endpoint: str, timeout_ms: int = 60_000) -> None:
        self.socket = zmq.Context.instance().socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.socket.connect(endpoint)
        self.session_id = str(uuid.uuid4())

    def request(self, command: str, payload: dict[str, Any] | None = None, **extra: Any) -> Any:
        message: dict[str, Any] = {"session_id": self.session_id, "command": command, **extra}
        if payload is not None:
            message["payload"] = payload
        validator(REQUEST_FOR[command]).validate(message)
        reply = self.raw(json.dumps(message).encode())
        assert reply["session_id"] == message["session_id"]
        if reply["status"] == "success":
            validator(REPLY_FOR[command]).validate(reply)
        return reply

    def raw(self, *frames: bytes) -> Any:
        """Send any frames; the reply must be a message of the protocol."""
        self.socket.send_multipart(list(frames))
        reply = json.loads(self.socket.recv())
        entry = "FailureReply" if reply.get("status") == "failure" else "SimpleSuccessReply"
        validator(entry).validate(reply)
        return reply

    def execute(self, job_id: int, circuit: str, shots: int = SHOTS, raw: bool = False) -> Any:
        payload = {"job_id": job_id, "circuit": circuit, "number_of_shots": shots,
                   "include_raw_data": raw}  # fmt: skip
        return self.request("execute", payload)

    def close(self) -> None:
        self.socket.close()


def ry_circuit(theta: float) -> str:
    return f"version 3.0\nqubit[1] q\nbit[1] b\nRy({theta!r}) q[0]\nb = measure q\n"


class Bridge:
    def __init__(self, url: str, admin: str, session: dict[str, Any], endpoint: str, pub: str):
        self.url, self.admin, self.session = url, admin, session
        self.endpoint, self.publish = endpoint, pub


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    tmp = tmp_path_factory.mktemp("qi-served")
    config = tmp / "resources.toml"
    config.write_text('[resources.aer]\ntype = "aer"\nseed = 11\n')
    port, fastpath = free_port(), f"tcp://127.0.0.1:{free_port()}"
    log = (tmp / "serve.log").open("wb")
    process = start_serve(
        tmp, port, "--config", str(config), "--fastpath", fastpath, db=tmp / "broker.db",
        stdout=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        admin = (tmp / "admin.token").read_text().strip()
        with connect(url, admin) as client:
            client.set_account("qi", 1.0)
        yield url, fastpath, admin
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


def open_session(url: str, admin: str) -> dict[str, Any]:
    with connect(url, admin) as client:
        return client.open_session("aer", duration_seconds=600, user="qi-user", account="qi")


@pytest.fixture(scope="module")
def bridge(
    served: tuple[str, str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bridge]:
    """``qhpc session qi-endpoint`` as a process, the session in its environment only."""
    url, fastpath, admin = served
    session = open_session(url, admin)
    tmp = tmp_path_factory.mktemp("qi-bridge")
    # tokenless: an ipc socket in a directory the endpoint creates, owner-only
    endpoint, pub = f"ipc://{tmp}/sockets/qi-req", f"tcp://127.0.0.1:{free_port()}"
    env = session_env(url, fastpath, session["token"])
    log_path = tmp / "bridge.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "qhpc.cli", "session", "qi-endpoint", "--bind", endpoint,
             "--publish", pub, "--heartbeat", "0.2", "--max-message-bytes", "65536"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            wait_for(lambda: (tmp / "sockets" / "qi-req").exists(), process, log_path)
            assert stat.S_IMODE((tmp / "sockets").stat().st_mode) == 0o700
            yield Bridge(url, admin, session, endpoint, pub)
        finally:
            code = stop(process)
    output = log_path.read_text()
    assert code == 0, output  # SIGTERM (scancel, the job's end) stops it cleanly
    assert session["token"] not in output


def session_env(url: str, fastpath: str, session_token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QHPC_")}
    return env | {"QHPC_URL": url, "QHPC_FASTPATH": fastpath, "QHPC_SESSION": session_token,
                  "QHPC_RESOURCE": "aer"}  # fmt: skip


def wait_for(ready: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.fixture
def client(bridge: Bridge) -> Iterator[SchemaClient]:
    running = SchemaClient(bridge.endpoint)
    yield running
    running.close()


def test_static_and_dynamic_data_describe_the_sessions_resource(
    bridge: Bridge, client: SchemaClient
) -> None:
    with connect(bridge.url, bridge.admin) as admin:
        target = admin.resource("aer")["target"]
    static = client.request("get_static")["payload"]
    assert static["protocol_version"] == 3
    assert static["name"] == "aer" and static["nqubits"] == target["num_qubits"]
    assert {"CNOT", "H", "RY", "X90"} <= set(static["pgs"])
    assert static["supports_raw_data"] is True and static["starttime"] <= time.time()
    assert len(static["topology"]) == static["nqubits"] * (static["nqubits"] - 1)  # all-to-all
    dynamic = client.request("get_dynamic")["payload"]
    assert dynamic["resource_state"]["__labels__"] == ["state"]
    assert set(dynamic["resource_state"]) - {"__labels__"} <= {"idle", "busy"}
    assert dynamic["queue_length"] >= 0 and dynamic["readout_error"] == 0.0


def test_a_hybrid_loop_runs_as_session_tasks_and_ends_with_terminate(
    bridge: Bridge, client: SchemaClient
) -> None:
    assert client.request("initialize")["status"] == "success"

    # A VQE-like loop: minimise <Z> = cos(theta) by parameter-shift gradient descent,
    # every energy one execute of a cQASM circuit with the new parameter.
    def energy(theta: float, job_id: int) -> float:
        reply = client.execute(job_id, ry_circuit(theta))
        assert reply["status"] == "success", reply
        assert reply["payload"]["job_id"] == job_id and reply["payload"]["raw_data"] is None
        counts = reply["payload"]["results"]
        assert sum(counts.values()) == SHOTS and set(counts) <= {"0", "1"}
        seen = (counts.get("0", 0) - counts.get("1", 0)) / SHOTS
        assert seen == pytest.approx(math.cos(theta), abs=0.06)  # 4000 shots: ~4 sigma
        return seen

    theta, job_id = 0.3, 0
    for _ in range(6):
        job_id += 2
        plus, minus = energy(theta + math.pi / 2, job_id), energy(theta - math.pi / 2, job_id + 1)
        theta -= (plus - minus) / 2
    assert energy(theta, 100) < -0.9  # near the minimum at theta = pi

    bell = "version 3.0\nqubit[2] q\nbit[2] b\nH q[0]\nCNOT q[0], q[1]\nb = measure q\n"
    reply = client.execute(101, bell, shots=256, raw=True)["payload"]
    assert set(reply["results"]) <= {"00", "11"} and len(reply["raw_data"]) == 256
    assert {s: reply["raw_data"].count(s) for s in set(reply["raw_data"])} == reply["results"]
    qasm = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\ncreg c[1];\nx q[0];\nmeasure q -> c;'
    assert client.execute(102, qasm, shots=16)["payload"]["results"] == {"1": 16}

    assert client.request("terminate")["status"] == "success"
    after = client.execute(103, ry_circuit(0.0))
    assert after["status"] == "failure"
    assert "was terminated; send initialize again" in after["payload"]["error_msg"]
    with connect(bridge.url, bridge.admin) as admin:
        session = admin.session(bridge.session["session_id"])
        tasks = admin.job(bridge.session["session_id"])["tasks"]
    assert session["closed_at"] is None  # terminate ends the phase, not the Slurm-held session
    assert len(tasks) >= 2 * 6 + 3 and {t["state"] for t in tasks} == {"completed"}


def test_publish_state_beats_and_follows_initialize_and_terminate(
    bridge: Bridge, client: SchemaClient
) -> None:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 10_000)
    sub.subscribe(b"")
    sub.connect(bridge.publish)

    def next_state(wanted: str) -> float:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = json.loads(sub.recv())
            validator("PublishState").validate(message)
            if message["payload"]["state"] == wanted:
                return float(message["payload"]["timestamp"])
        raise AssertionError(f"no {wanted} published")

    try:
        first = next_state("IDLE")
        client.request("initialize")
        assert next_state("EXECUTING") > first
        client.request("terminate")
        next_state("IDLE")
    finally:
        sub.close()


BAD_FRAMES: list[tuple[str, list[bytes], str]] = [
    ("not JSON", [b"{ nope"], "not valid JSON"),
    ("not UTF-8", [b"\xff\xfe{}"], "not UTF-8"),
    ("unended string", [b'{"command": "' + b'\\"' * 30_000], "a string at byte 12 never ends"),
    ("NaN", [b'{"command": "get_static", "x": NaN}'], "not JSON (NaN"),
    ("an array", [b"[1, 2]"], "JSON list, not an object"),
    ("too deep", [b'{"payload": ' + b"[" * 40 + b"]" * 40 + b"}"], "nested deeper than 16"),
    ("two frames", [b"{}", b"{}"], "2 frames; a request is one JSON frame"),
    ("unknown command", [b'{"command": "reboot", "session_id": "%s"}'], "unknown command 'reboot'"),
    ("publish_state", [b'{"command": "publish_state"}'], "published by this endpoint"),
    ("no session_id", [b'{"command": "get_static"}'], "message: missing 'session_id'"),
    ("bad uuid", [b'{"command": "get_static", "session_id": "abc"}'], "session_id: must be a uuid"),
    ("zero shots", [b'{"command": "execute", "session_id": "%s", "payload": {"job_id": 1, '
                    b'"circuit": "x", "number_of_shots": 0}}'],
     "payload.number_of_shots: must be greater than 0"),
    ("wrong type", [b'{"command": "execute", "session_id": "%s", "payload": {"job_id": "1", '
                    b'"circuit": "x", "number_of_shots": 1}}'],
     "payload.job_id: must be of type integer"),
    ("oversized", [b'{"command": "get_static", "pad": "' + b"x" * 70_000 + b'"}'],
     "message of 70036 bytes; the limit is 65536"),
    ("not initialized", [b'{"command": "execute", "session_id": "%s", "payload": {"job_id": 1, '
                         b'"circuit": "version 3.0\\nqubit q", "number_of_shots": 1}}'],
     "is not initialized; send initialize"),
]  # fmt: skip


@pytest.mark.parametrize(("frames", "expected"), [b[1:] for b in BAD_FRAMES],
                         ids=[b[0] for b in BAD_FRAMES])  # fmt: skip
def test_bad_messages_get_a_failure_reply_and_the_endpoint_keeps_serving(
    client: SchemaClient, frames: list[bytes], expected: str
) -> None:
    frames = [f.replace(b"%s", client.session_id.encode()) for f in frames]
    reply = client.raw(*frames)
    assert reply["status"] == "failure"
    assert expected in reply["payload"]["error_msg"]
    assert len(reply["payload"]["error_msg"]) <= 300  # nothing large echoed
    assert "xxxxxxxx" not in reply["payload"]["error_msg"]
    assert client.request("get_static")["status"] == "success"


def test_a_bad_circuit_fails_its_execute_and_the_lock_stays(client: SchemaClient) -> None:
    client.request("initialize")
    try:
        broken = client.execute(1, "version 3.0\nqubit[1] q\nbit[1] b\nFLY q[0]\nb = measure q\n")
        assert broken["status"] == "failure" and "FLY" in broken["payload"]["error_msg"]
        nothing = client.execute(2, "version 3.0\nqubit[1] q\nH q[0]\n")
        assert (
            nothing["status"] == "failure" and "measures nothing" in nothing["payload"]["error_msg"]
        )
        assert client.execute(3, ry_circuit(math.pi), shots=8)["payload"]["results"] == {"1": 8}
        other = SchemaClient(client.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        try:
            taken = other.request("initialize")
            assert (
                taken["status"] == "failure"
                and "another session_id" in taken["payload"]["error_msg"]
            )
        finally:
            other.close()
    finally:
        client.request("terminate")


def test_a_frame_past_the_hard_cap_drops_only_that_peer(bridge: Bridge) -> None:
    """Past MAXMSGSIZE (twice the answered limit) ZeroMQ drops the peer before the
    endpoint sees a byte: that peer gets no reply, everyone else is served."""
    greedy = SchemaClient(bridge.endpoint, timeout_ms=2000)
    greedy.socket.send(b"{" + b" " * (3 * 65536) + b"}")
    with pytest.raises(zmq.Again):
        greedy.socket.recv()
    greedy.close()
    fresh = SchemaClient(bridge.endpoint)
    try:
        assert fresh.request("get_static")["status"] == "success"
    finally:
        fresh.close()


def test_only_a_private_ipc_socket_goes_without_a_token() -> None:
    """127.0.0.1 is no boundary on a shared node: every TCP bind needs a token."""
    assert is_local("tcp://127.0.0.1:4203") and is_local("tcp://[::1]:1") and is_local("ipc:///x")
    assert is_local("tcp://localhost:4203")
    assert not is_local("tcp://*:4203") and not is_local("tcp://10.1.2.3:4203")
    assert not is_local("tcp://eth0:4203")
    for address in ("tcp://127.0.0.1:4203", "tcp://[::1]:4203", "tcp://*:4203"):
        with pytest.raises(QhpcError, match="every user of this host, loopback included"):
            EndpointConfig(bind=address, publish=None)
    with pytest.raises(QhpcError, match="set a token"):
        EndpointConfig()  # the default (the protocol's port on loopback) is not open to all
    with pytest.raises(QhpcError, match="abstract socket"):
        EndpointConfig(bind="ipc://@qi-endpoint", publish=None)
    with pytest.raises(QhpcError, match="no directory of its own"):
        EndpointConfig(bind="ipc://*", publish=None)
    with pytest.raises(QhpcError, match=r"tcp://0\.0\.0\.0:4204 is reachable from other hosts"):
        EndpointConfig(bind="ipc:///run/x/qi", publish="tcp://0.0.0.0:4204")
    assert tokenless_refusal("ipc:///run/x/qi") is None and tokenless_refusal("inproc://x") is None
    EndpointConfig(bind="ipc:///run/x/qi")  # checked again, on disk, when it binds
    assert "secret" not in repr(EndpointConfig(bind="tcp://*:1", token="secret"))


@pytest.fixture(scope="module")
def live(served: tuple[str, str, str]) -> Iterator[tuple[Any, BrokerDevice]]:
    """A real session channel and device for endpoints started in this process."""
    url, fastpath, admin = served
    session = open_session(url, admin)
    channel = open_channel(fastpath, session["token"], timeout=60)
    device = BrokerDevice(connect(url, session["token"]), "aer")
    try:
        yield channel, device
    finally:
        device.close()
        channel.close()


def test_a_tokenless_ipc_socket_gets_a_directory_no_one_else_may_enter(
    live: tuple[Any, BrokerDevice], tmp_path: Path
) -> None:
    channel, device = live
    fresh = tmp_path / "new" / "qi"
    endpoint = QiEndpoint(channel, device, EndpointConfig(bind=f"ipc://{fresh}/req",
                                                          publish=None)).start()  # fmt: skip
    client = SchemaClient(endpoint.endpoint)
    try:
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
        assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700
        assert client.request("get_static")["status"] == "success"
    finally:
        client.close()
        endpoint.stop()
    # an open directory is refused, not tightened: who is inside already stays inside
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    for address in (f"ipc://{shared}/req", "ipc:///tmp/qhpc-qi-test-req"):
        with pytest.raises(QhpcError, match=r"not a directory of this user's alone \(0700\)"):
            QiEndpoint(channel, device, EndpointConfig(bind=address, publish=None)).start()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755 and not list(shared.iterdir())
    assert not Path("/tmp/qhpc-qi-test-req").exists()


def test_a_hostile_frame_of_the_full_size_is_answered_in_linear_time(
    live: tuple[Any, BrokerDevice],
) -> None:
    """An unterminated string of escaped quotes: the depth scan once retried its string
    rule at every quote, quadratic (about 40 min of the one serving thread at 1 MiB)."""
    channel, device = live
    config = EndpointConfig(bind=f"tcp://127.0.0.1:{free_port()}", publish=None, token="t0k")
    endpoint = QiEndpoint(channel, device, config).start()
    client = SchemaClient(endpoint.endpoint, timeout_ms=30_000)
    try:
        frame = b'"' + b'\\"' * ((config.limits.max_bytes - 1) // 2)
        assert len(frame) == config.limits.max_bytes - 1  # the full budget, to a byte
        began = time.perf_counter()
        reply = client.raw(frame)
        assert time.perf_counter() - began < 2.0
        assert reply["status"] == "failure"
        assert reply["payload"]["error_msg"].endswith("a string at byte 0 never ends)")
        assert client.request("initialize", {"token": "t0k"})["status"] == "success"
        assert client.request("get_static")["status"] == "success"
    finally:
        client.close()
        endpoint.stop()


def test_over_tcp_the_command_generates_a_token_into_an_owner_only_file(
    served: tuple[str, str, str], tmp_path: Path
) -> None:
    url, fastpath, admin = served
    session = open_session(url, admin)
    endpoint, token_file = f"tcp://127.0.0.1:{free_port()}", tmp_path / "keys" / "qi.token"
    log_path = tmp_path / "endpoint.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "qhpc.cli", "session", "qi-endpoint", "--bind", endpoint,
             "--publish", "", "--token-out", str(token_file)],
            stdout=log, stderr=subprocess.STDOUT, env=session_env(url, fastpath, session["token"]),
        )  # fmt: skip
        client = SchemaClient(endpoint)
        try:
            wait_for(token_file.exists, process, log_path)
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
            token = token_file.read_text().strip()
            assert len(token) >= 32
            # another user of the node reaches 127.0.0.1, but not without the token
            assert client.request("get_static")["status"] == "failure"
            for payload in (None, {"token": "guess"}):
                refused = client.request("initialize", payload)
                assert refused["status"] == "failure"
                assert "payload.token" in refused["payload"]["error_msg"]
            denied = client.execute(1, ry_circuit(math.pi), shots=4)
            assert "is not initialized" in denied["payload"]["error_msg"]
            assert client.request("initialize", {"token": token})["status"] == "success"
            assert client.execute(2, ry_circuit(math.pi), shots=4)["payload"]["results"] == {"1": 4}
        finally:
            client.close()
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
    output = log_path.read_text()
    assert code == 0, output
    assert str(token_file) in output and token not in output
    assert not token_file.exists()  # removed with the endpoint


def test_a_port_someone_else_holds_is_refused_and_no_token_is_written(
    served: tuple[str, str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another user binding the protocol's port first would receive the runtime's
    circuits and token: the endpoint fails, and no token file tells a runtime to go."""
    url, fastpath, admin = served
    session = open_session(url, admin)
    for name, value in session_env(url, fastpath, session["token"]).items():
        if name.startswith("QHPC_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("QHPC_QI_TOKEN", raising=False)
    squatter = zmq.Context.instance().socket(zmq.REP)
    squatter.setsockopt(zmq.LINGER, 0)
    port = squatter.bind_to_random_port("tcp://127.0.0.1")
    token_file = tmp_path / "qi.token"
    try:
        args = ["session", "qi-endpoint", "--bind", f"tcp://127.0.0.1:{port}", "--publish", "",
                "--token-out", str(token_file)]  # fmt: skip
        code, _, err = run_cli(args, capsys)
    finally:
        squatter.close()
    assert code == 1 and f"cannot listen on tcp://127.0.0.1:{port}" in err
    assert "Address already in use" in err and not token_file.exists()


def test_with_a_token_only_an_initialized_session_id_is_served(
    served: tuple[str, str, str],
) -> None:
    url, fastpath, admin = served
    session = open_session(url, admin)
    channel = open_channel(fastpath, session["token"], timeout=60)
    device = BrokerDevice(connect(url, session["token"]), "aer")
    config = EndpointConfig(
        bind=f"tcp://127.0.0.1:{free_port()}", publish=None, token="s3cret",
        limits=MessageLimits(max_bytes=4096),
    )  # fmt: skip
    endpoint = QiEndpoint(channel, device, config).start()
    client = SchemaClient(endpoint.endpoint)
    try:
        refused = client.request("get_static")
        assert (
            refused["status"] == "failure"
            and "is not initialized" in refused["payload"]["error_msg"]
        )
        for payload in (None, {"token": "wrong"}):
            bad = client.request("initialize", payload)
            assert bad["status"] == "failure" and "payload.token" in bad["payload"]["error_msg"]
            assert "s3cret" not in bad["payload"]["error_msg"] and endpoint.initialized_by is None
        assert client.request("initialize", {"token": "s3cret"})["status"] == "success"
        assert endpoint.initialized_by == client.session_id
        assert client.request("get_static")["status"] == "success"
        assert client.execute(1, ry_circuit(math.pi), shots=4)["payload"]["results"] == {"1": 4}
        client.request("terminate")
        assert client.request("get_dynamic")["status"] == "failure"
        with connect(url, admin) as client_admin:
            client_admin.close_session(session["session_id"])
        client.request("initialize", {"token": "s3cret"})
        closed = client.execute(2, ry_circuit(0.0), shots=4)
        assert closed["status"] == "failure" and "409" in closed["payload"]["error_msg"]
    finally:
        client.close()
        endpoint.stop()
        device.close()
        channel.close()


def test_static_data_keeps_a_devices_coupling_map_and_states_map_in_protocol_order() -> None:
    from qhpc.resources import device_target
    from qhpc.session import DeviceStatus
    from qhpc.session.quantuminspire import dynamic_payload, hardware_state, static_payload

    line = device_target("line-5")
    static = static_payload(line, "line", 1.0)
    assert static["topology"] == [list(edge) for edge in line.coupling_map or ()]
    assert static["pgs"] == ["I", "RZ", "X90", "X", "CZ"] and static["nqubits"] == 5
    metrics = dynamic_payload(line, DeviceStatus("calibration", queue_length=3))
    assert metrics["resource_state"] == {"__labels__": ["state"], "calibration": 1}
    assert metrics["queue_length"] == 3 and metrics["two_qubit_error"] > 0
    validator("StaticData").validate(static)
    for state, executing, published in [
        ("maintenance", True, "OFFLINE"), ("error", False, "OFFLINE"),
        ("calibration", True, "CALIBRATING"), ("busy", True, "EXECUTING"),
        ("busy", False, "IDLE"), ("idle", False, "IDLE"),
    ]:  # fmt: skip
        assert hardware_state(DeviceStatus(state), executing) == published
    assert hardware_state(None, True) == "OFFLINE"  # the broker out of reach


def test_the_command_refuses_an_open_publish_without_a_token_and_a_missing_session(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("QHPC_FASTPATH", "QHPC_SESSION", "QHPC_URL", "QHPC_QI_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(["session", "qi-endpoint", "--bind", f"ipc://{tmp_path}/q",
                            "--publish", "tcp://*:4204"], capsys)  # fmt: skip
    assert code == 1 and "reachable from other hosts" in err and "token" in err
    code, _, err = run_cli(["session", "qi-endpoint", "--publish", ""], capsys)
    assert code == 1 and "QHPC_FASTPATH" in err and "QHPC_SESSION" in err
    with pytest.raises(RemoteError, match="QHPC_URL"):
        BrokerDevice.from_env("aer")
