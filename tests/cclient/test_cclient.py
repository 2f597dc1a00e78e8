"""The C client (libqhpc) against a real broker: compiled programs using a real session.

Each program runs as a job would: its environment holds only what qhpc's TaskProlog
sets. Every run is checked for the session token in its output (never allowed), and
every refusal for the broker still serving afterwards. One test uses a hostile HTTP
server on loopback instead of the broker: what it answers (oversized, not JSON, a
redirect) is what a broken or spoofed endpoint could send, which a real broker never
does.
"""

from __future__ import annotations

import http.server
import math
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cclient_support import Broker, Build, job_env

from helpers import free_port

pytestmark = pytest.mark.slow

ASAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86"}

# status codes of qhpc.h
OK, E_ENV, E_AUTH, E_CLOSED, E_INPUT, E_BUSY, E_TIMEOUT, E_NETWORK, E_PROTOCOL = range(9)
E_ARG = 12

BAD_QASM = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nhh q[0];\n'


def run(
    build: Build, program: str, *args: str, env: dict[str, str], secret: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A program of ``build``; its output never holds ``secret`` (the session token)."""
    if build.sanitize:
        env = {**env, **ASAN_ENV}
    done = subprocess.run(
        [str(build.program(program)), *args], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    token = secret or env.get("QHPC_SESSION")
    if token:
        assert token not in done.stdout + done.stderr
    if build.sanitize:
        assert "Sanitizer" not in done.stderr, done.stderr
    return done


def counts_of(stdout: str) -> dict[str, int]:
    return {bits: int(n) for bits, n in re.findall(r"^([01]+) (\d+)$", stdout, flags=re.MULTILINE)}


def lines_of(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


def test_the_library_exports_only_its_api(libqhpc: Build) -> None:
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(libqhpc.out / "libqhpc.so")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    header = (libqhpc.out.parent / "qhpc.h").read_text()
    declared = set(re.findall(r"QHPC_API [^;]*?\b(qhpc_\w+)\(", header, flags=re.DOTALL))
    assert names == declared and "qhpc_session_from_env" in names


def test_a_bell_pair_gives_only_00_and_11_with_the_shots_asked(
    libqhpc: Build, broker: Broker
) -> None:
    session = broker.open_session()
    done = run(libqhpc, "bell", "1234", env=job_env(session, broker.url))
    assert done.returncode == OK, done.stderr
    counts = counts_of(done.stdout)
    assert set(counts) == {"00", "11"} and sum(counts.values()) == 1234
    assert 400 < counts["00"] < 834  # a fair coin, far beyond 10 sigma
    task_id = re.findall(r"^shots 1234 on aer \(task (\w+)\)$", done.stdout, re.MULTILINE)[0]
    task = broker.call("GET", f"/tasks/{task_id}").json()
    assert (task["session_id"], task["state"]) == (session["session_id"], "completed")
    # the broker booked what the program asked for, to this session
    rows = broker.call("GET", "/accounting?group_by=job").json()["rows"]
    (mine,) = [r for r in rows if r["group"] == session["session_id"]]
    assert (mine["tasks"], mine["shots"]) == (1, 1234)


def test_a_classical_loop_of_batched_circuits_estimates_z(libqhpc: Build, broker: Broker) -> None:
    session = broker.open_session()
    done = run(libqhpc, "sweep", "5", "4000", "2", env=job_env(session, broker.url))
    assert done.returncode == OK, done.stderr
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[0] == "max_error" and last[2] == "minimum_theta"
    assert float(last[1]) < 0.08  # 4000 shots: one standard error is at most 0.016
    assert float(last[3]) == pytest.approx(math.pi, abs=1e-3)
    assert len([line for line in done.stdout.splitlines() if line.startswith("round")]) == 10


def test_a_refused_circuit_is_input_with_the_brokers_reason(
    libqhpc: Build, broker: Broker, tmp_path: Path
) -> None:
    session = broker.open_session()
    env = job_env(session, broker.url)
    (tmp_path / "bad.qasm").write_text(BAD_QASM)
    done = run(libqhpc, "bell", "10", str(tmp_path / "bad.qasm"), env=env)
    assert done.returncode == E_INPUT
    assert "circuit or shots refused" in done.stderr
    assert "invalid OpenQASM 2 circuit at line 4, column 1" in done.stderr, done.stderr
    assert "(circuit-parse)" in done.stderr
    (tmp_path / "wide.qasm").write_text(
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[5000];\ncreg c[1];\nmeasure q[0] -> c[0];\n'
    )
    wide = run(libqhpc, "bell", "10", str(tmp_path / "wide.qasm"), env=env)
    assert wide.returncode == E_INPUT and "refused the task" in wide.stderr, wide.stderr
    # the session and the broker go on: the same job's next circuit runs
    assert broker.healthy()
    again = run(libqhpc, "bell", "20", env=env)
    assert again.returncode == OK and sum(counts_of(again.stdout).values()) == 20


def test_a_closed_session_is_closed_and_the_broker_goes_on(libqhpc: Build, broker: Broker) -> None:
    session = broker.open_session()
    env = job_env(session, broker.url)
    assert run(libqhpc, "bell", "10", env=env).returncode == OK
    broker.close_session(session["session_id"])
    done = run(libqhpc, "bell", "10", env=env)
    assert done.returncode == E_CLOSED
    assert f"session {session['session_id']} is closed" in done.stderr
    assert "token was revoked" in done.stderr and "submit nothing more" in done.stderr
    assert broker.healthy()
    other = broker.open_session()
    assert run(libqhpc, "bell", "10", env=job_env(other, broker.url)).returncode == OK


def test_a_session_past_its_deadline_is_closed(libqhpc: Build, broker: Broker) -> None:
    session = broker.open_session(seconds=1)
    time.sleep(1.5)
    done = run(libqhpc, "bell", "10", env=job_env(session, broker.url))
    assert done.returncode == E_CLOSED, done.stderr
    assert "passed its deadline" in done.stderr or "is closed" in done.stderr


def test_a_wrong_token_is_auth(libqhpc: Build, broker: Broker) -> None:
    session, other = broker.open_session(), broker.open_session()
    unknown = job_env(session, broker.url, QHPC_SESSION="qhpc_" + "A" * 43)
    done = run(libqhpc, "bell", "10", env=unknown)
    assert done.returncode == E_AUTH and "unknown token" in done.stderr
    # another session's token for this session's id: refused, and not "closed"
    crossed = job_env(session, broker.url, QHPC_SESSION=other["token"])
    done = run(libqhpc, "bell", "10", env=crossed, secret=other["token"])
    assert done.returncode == E_AUTH and "another session" in done.stderr
    assert broker.healthy()
    assert run(libqhpc, "bell", "10", env=job_env(session, broker.url)).returncode == OK


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"QHPC_URL": None}, "QHPC_URL is unset"),
        ({"QHPC_SESSION": None}, "QHPC_SESSION is unset"),
        ({"QHPC_SESSION_ID": ""}, "QHPC_SESSION_ID is unset"),
        ({"QHPC_URL": "ftp://127.0.0.1/"}, "QHPC_URL is not an http:// or https:// URL"),
        ({"QHPC_URL": "http://alice:pw@127.0.0.1:1"}, "QHPC_URL holds credentials"),
        ({"QHPC_URL": "http://127.0.0.1:1/\r\nX: y"}, "QHPC_URL holds spaces, control"),
        ({"QHPC_SESSION_ID": "../../admin"}, "QHPC_SESSION_ID is malformed"),
        ({"QHPC_SESSION": "qhpc_abc\r\nX-Evil: 1"}, "QHPC_SESSION is malformed"),
        ({"QHPC_SESSION": "Bearer-qhpc_abc"}, "QHPC_SESSION is malformed"),
    ],
)
def test_a_missing_or_malformed_environment_is_env(
    libqhpc: Build, broker: Broker, change: dict[str, str | None], named: str
) -> None:
    session = broker.open_session()
    env = job_env(session, broker.url)
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    done = run(libqhpc, "bell", "10", env=env, secret=session["token"])
    assert done.returncode == E_ENV, done.stderr
    assert named in done.stderr
    malformed = change.get("QHPC_SESSION")
    if malformed:
        assert malformed not in done.stderr  # not even a malformed token


def test_an_unreachable_broker_is_network(libqhpc: Build, broker: Broker) -> None:
    session = broker.open_session()
    env = job_env(session, f"http://127.0.0.1:{free_port()}")
    done = run(libqhpc, "bell", "10", env=env)
    assert done.returncode == E_NETWORK and "cannot reach the broker" in done.stderr


def test_a_batch_gives_counts_per_circuit_in_order(libqhpc: Build, broker: Broker) -> None:
    session = broker.open_session()
    done = run(libqhpc, "probe", "batch", env=job_env(session, broker.url))
    assert done.returncode == OK, done.stdout + done.stderr
    lines = lines_of(done.stdout)
    assert lines["circuits"] == "2"
    bell = dict(kv.split("=") for kv in lines["counts0"].split()[1:])
    assert set(bell) == {"00", "11"} and sum(map(int, bell.values())) == 300
    assert lines["counts1"] == "ok 1=300"  # x then measure: always 1 (OpenQASM 3)
    assert lines["counts2"].startswith("invalid argument")


def test_tasks_outlive_their_session_handle(libqhpc: Build, broker: Broker) -> None:
    session = broker.open_session()
    done = run(libqhpc, "probe", "lifetimes", env=job_env(session, broker.url))
    assert done.returncode == OK, done.stdout + done.stderr
    lines = lines_of(done.stdout)
    assert lines["early"] == "invalid argument"  # counts before the wait
    assert lines["wait"].startswith("ok") and lines["again"].startswith("ok")
    assert lines["after_close"].startswith("ok 00=")  # still readable
    assert lines["wait_after_close"] == "invalid argument"  # nothing left to ask with


def test_a_wait_that_ends_first_is_timeout_and_the_task_goes_on(
    libqhpc: Build, broker: Broker
) -> None:
    session = broker.open_session(resource="slow")
    done = run(libqhpc, "probe", "timeout", env=job_env(session, broker.url))
    assert done.returncode == OK, done.stdout + done.stderr
    lines = lines_of(done.stdout)
    assert lines["look"].startswith("task not finished in time")
    assert "goes on: wait again" in lines["look"]
    assert lines["open"] == "invalid argument"
    assert lines["wait"].startswith("ok")
    counts = dict(kv.split("=") for kv in lines["counts"].split()[1:])
    assert set(counts) == {"00", "11"} and sum(map(int, counts.values())) == 10000


def test_bad_arguments_are_refused_and_the_session_goes_on(libqhpc: Build, broker: Broker) -> None:
    session = broker.open_session()
    done = run(libqhpc, "probe", "args", env=job_env(session, broker.url))
    assert done.returncode == OK, done.stdout + done.stderr
    lines = lines_of(done.stdout)
    for name in ("null_qasm", "empty_qasm", "zero_shots", "too_many_shots", "no_out"):
        assert lines[name].startswith("invalid argument"), name
    assert lines["task_reset"] == "yes"
    assert "shots must be 1 to 1000000000, not 2000000000" in lines["too_many_shots"]
    assert lines["not_utf8"].startswith("circuit or shots refused circuit 0 is not valid UTF-8")
    # a billion shots is within the API's bounds but not the QPU's: the broker says so
    assert lines["huge_shots_broker"].startswith("circuit or shots refused"), lines
    assert lines["wait_null"] == lines["counts_null"] == "invalid argument"
    assert lines["last_null"] == "no session (NULL)|invalid argument"
    assert lines["strerror"] == "session closed|unknown qhpc status"
    assert lines["for_empty"] == "null invalid argument"
    assert lines["open_null"] == "null invalid argument"
    assert lines["open_missing_file"].startswith("null no usable session")
    assert "cannot open the token file /nonexistent/token" in lines["open_missing_file"]
    assert "not a regular file" in lines["open_directory"]
    assert lines["still_works"].startswith("ok")
    assert broker.healthy()


def test_a_session_named_explicitly_reads_its_token_from_a_file(
    libqhpc: Build, broker: Broker, tmp_path: Path
) -> None:
    session = broker.open_session()
    token = tmp_path / "token"
    token.write_text(f"  {session['token']}\n\n")
    token.chmod(0o600)
    env = {"PATH": "/usr/bin:/bin"}
    done = run(
        libqhpc, "probe", "tokenfile", broker.url + "/", session["session_id"], str(token),
        env=env, secret=session["token"],
    )  # fmt: skip
    assert done.returncode == OK, done.stdout + done.stderr
    assert f"resource '' session {session['session_id']}" in done.stdout
    token.write_text("qhpc_" + "x" * 5000)
    done = run(
        libqhpc, "probe", "tokenfile", broker.url, session["session_id"], str(token), env=env
    )
    assert done.returncode == E_ENV and "larger than 4096 bytes" in done.stdout


def test_a_job_with_two_qpus_picks_each_session_by_name(libqhpc: Build, broker: Broker) -> None:
    first, second = broker.open_session("aer"), broker.open_session("slow")
    env = job_env(first, broker.url)  # the first QPU's plain names, as the TaskProlog sets them
    env.update(
        QRMI_JOB_QPU_RESOURCES="aer,slow",
        QHPC_SESSION_AER=first["token"], QHPC_SESSION_ID_AER=first["session_id"],
        QHPC_SESSION_SLOW=second["token"], QHPC_SESSION_ID_SLOW=second["session_id"],
    )  # fmt: skip
    for qpu, session in (("aer", first), ("slow", second)):
        done = run(libqhpc, "probe", "for", qpu, env=env, secret=session["token"])
        assert done.returncode == OK, done.stdout
        assert f"resource {qpu} session {session['session_id']}" in done.stdout
    done = run(libqhpc, "probe", "for", "fridge", env=env)
    assert done.returncode == E_ENV
    assert "no session on QPU 'fridge' here: this job holds aer,slow" in done.stdout
    assert "QHPC_SESSION_FRIDGE is unset" in done.stdout


def test_the_address_sanitizer_finds_no_leak_nor_overflow(
    libqhpc_asan: Build, broker: Broker, tmp_path: Path
) -> None:
    """Every path of the library once under ASan (LeakSanitizer included): success,
    refusals, a closed session, handles freed in either order."""
    session = broker.open_session()
    env = job_env(session, broker.url)
    assert run(libqhpc_asan, "bell", "100", env=env).returncode == OK
    assert run(libqhpc_asan, "sweep", "3", "200", "1", env=env).returncode == OK
    for scenario in ("batch", "lifetimes", "args"):
        done = run(libqhpc_asan, "probe", scenario, env=env)
        assert done.returncode == OK, done.stdout + done.stderr
    (tmp_path / "bad.qasm").write_text(BAD_QASM)
    assert run(libqhpc_asan, "bell", "10", str(tmp_path / "bad.qasm"), env=env).returncode == 4
    broker.close_session(session["session_id"])
    assert run(libqhpc_asan, "bell", "10", env=env).returncode == E_CLOSED
    assert run(libqhpc_asan, "bell", "10", env={"PATH": "/usr/bin:/bin"}).returncode == E_ENV


class Hostile(http.server.BaseHTTPRequestHandler):
    """Answers a task submission badly, as the session id in its path says."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = self.path.split("/")[3]  # /v1/sessions/KIND/tasks: the session id names it
        if kind == "huge":
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            chunk = b" " * (1 << 20)
            try:
                for _ in range(80):  # 80 MiB: over the client's 64 MiB cap
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif kind == "garbage":
            body = b"<html>not json</html>"
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:  # a redirect elsewhere: the token must not follow it
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:1/steal")
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("huge", "larger than 64 MiB"),
        ("garbage", "is not a JSON object"),
        ("redirect", "unexpected answer while submitting a task (HTTP 307)"),
    ],
)
def test_a_hostile_endpoint_is_protocol_and_bounded(
    libqhpc: Build, hostile: str, kind: str, message: str
) -> None:
    session = {"token": "qhpc_" + "B" * 43, "session_id": kind, "resource": "aer"}
    env = job_env(session, hostile)
    started = time.monotonic()
    done = run(libqhpc, "bell", "10", env=env)
    assert done.returncode == E_PROTOCOL, done.stderr
    assert message in done.stderr
    assert time.monotonic() - started < 30
