"""`qhpc serve --log-format json|text` as a real process: what its log on stderr holds.

One JSON broker serves a whole working day in small (a batch job, a session with a
task, a hybrid program, hostile request ids, a resource calibrating and back), then
its log is read: every line JSON, each change logged once with its ids, no token
anywhere. A text broker shows that a job name cannot forge a record.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import free_port, run_cli, start_serve, stop_process, wait_healthy

BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)
#: a resource that calibrates 3-5.5 s after the broker loads it, then every 6 s
RESOURCES = """
[resources.aer]
type = "aer"
seed = 11

[resources.cal]
type = "emulator"
noise = false
calibration = { every = 6.0, duration = 2.5, first = 3.0 }
"""
#: a job name with characters that end lines for some readers (the API refuses \\n itself)
SNEAKY = "bell\u2028FORGED\x85too"


@dataclass
class Served:
    url: str
    admin: str
    log: Path
    out: Path
    process: subprocess.Popen[bytes]

    def call(
        self, method: str, path: str, token: str, body: Any = None, rid: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if rid is not None:
            headers["X-Request-ID"] = rid
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=30)

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").split("\n")[:-1]

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.lines()]
        return [r for r in parsed if event is None or r.get("event") == event]


def serve(tmp_path: Path, log_format: str) -> Iterator[Served]:
    config = tmp_path / "resources.toml"
    config.write_text(RESOURCES)
    port = free_port()
    log, out = tmp_path / "serve.log", tmp_path / "serve.out"
    with log.open("wb") as err_file, out.open("wb") as out_file:
        process = start_serve(
            tmp_path, port, "--config", str(config), "--log-format", log_format,
            db=tmp_path / "b.db", stdout=out_file, stderr=err_file,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, process)
        except AssertionError:
            raise AssertionError(log.read_text()) from None
        admin = (tmp_path / "admin.token").read_text().strip()
        yield Served(url, admin, log, out, process)
    finally:
        stop_process(process)


@pytest.fixture
def json_broker(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, "json")


@pytest.fixture
def text_broker(tmp_path: Path) -> Iterator[Served]:
    yield from serve(tmp_path, "text")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def raw_request(url: str, header_lines: str) -> bytes:
    """A GET /v1/health with hand-made header lines (what an HTTP client refuses to send)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\n{header_lines}"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


@pytest.mark.slow
def test_a_json_log_holds_each_change_once_with_its_ids_and_no_token(
    json_broker: Served,
) -> None:
    b = json_broker
    made = b.call("POST", "/v1/tokens", b.admin, {"role": "user", "subject": "alice",
                                                  "account": "chem"})  # fmt: skip
    assert made.status_code == 201, made.text
    alice = made.json()["token"]

    # a batch job, named by its client's request id
    sent = b.call("POST", "/v1/jobs", alice, {"resource": "aer", "circuits": [BELL, BELL],
                                               "shots": 100, "split_circuits": True,
                                               "name": SNEAKY}, rid="client-req-1")  # fmt: skip
    assert sent.status_code == 201, sent.text
    assert sent.headers["x-request-id"] == "client-req-1"
    job_id = sent.json()["job_id"]
    wait_for(lambda: b.call("GET", f"/v1/jobs/{job_id}", alice).json()["state"] == "completed",
             "completed job")  # fmt: skip

    # a session (as Slurm's prolog opens it) with one task, closed (as the epilog does)
    opened = b.call("POST", "/v1/sessions", b.admin, {"resource": "aer", "user": "bob",
                                                       "account": "phys", "duration_seconds": 600,
                                                       "slurm_job_id": "777"})  # fmt: skip
    assert opened.status_code == 201, opened.text
    session_id, session_token = opened.json()["session_id"], opened.json()["token"]
    task = b.call("POST", f"/v1/sessions/{session_id}/tasks", session_token,
                  {"circuits": [BELL], "shots": 10})  # fmt: skip
    assert task.status_code == 201, task.text
    task_id = task.json()["task_id"]
    wait_for(lambda: b.call("GET", f"/v1/tasks/{task_id}", b.admin).json()["state"]
             == "completed", "session task")  # fmt: skip
    assert b.call("DELETE", f"/v1/sessions/{session_id}", b.admin).status_code == 200

    # a hybrid program: its pool's processes share the broker's stderr
    program = b.call("POST", "/v1/programs", alice, {"resource": "aer", "timeout": 120,
                                                      "source": "def main():\n    return 42\n"},
                     rid="client-req-2")  # fmt: skip
    assert program.status_code == 201, program.text
    hybrid_id = program.json()["job_id"]
    wait_for(lambda: b.call("GET", f"/v1/jobs/{hybrid_id}", alice).json()["state"]
             in ("completed", "failed"), "hybrid job", timeout=120)  # fmt: skip

    # hostile request ids: replaced, never echoed
    long_id = "L" * 65
    answer = httpx.get(b.url + "/v1/health", headers={"X-Request-ID": long_id}, timeout=10)
    assert answer.status_code == 200 and answer.headers["x-request-id"] != long_id
    folded = raw_request(b.url, "X-Request-ID: abc\r\n INJECTED-LINE\r\n")
    assert b"INJECTED-LINE" not in folded
    for hostile in ("a\x0bb", "tab\there", 'quote"d'):
        reply = raw_request(b.url, f"X-Request-ID: {hostile}\r\n")
        assert hostile.encode() not in reply, reply
    assert httpx.get(b.url + "/v1/health", timeout=10).status_code == 200  # still serving

    # the emulator calibrates and comes back while nobody uses it
    def states() -> list[str]:
        return [r["state"] for r in b.records("resource_state") if r["resource"] == "cal"]

    wait_for(lambda: "idle" in states()[states().index("calibration"):]
             if "calibration" in states() else False, "calibration and back")  # fmt: skip

    stop_process(b.process)
    assert b.process.returncode == 0
    lines = b.lines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert all(r["ts"].endswith("Z") for r in records)

    (submitted,) = [r for r in b.records("job_submitted") if r["job_id"] == job_id]
    (finished,) = [r for r in b.records("job_finished") if r["job_id"] == job_id]
    for record in (submitted, finished):
        assert (record["request_id"], record["user"], record["account"]) == (
            "client-req-1",
            "alice",
            "chem",
        )
        assert (record["resource"], record["tasks"]) == ("aer", 2)
    assert submitted["name"] == SNEAKY and finished["state"] == "completed"

    (opened_record,) = [r for r in b.records("session_opened") if r["session_id"] == session_id]
    (closed_record,) = [r for r in b.records("session_closed") if r["session_id"] == session_id]
    for record in (opened_record, closed_record):
        assert (record["session_id"], record["user"], record["resource"]) == (
            session_id,
            "bob",
            "aer",
        )
        assert record["slurm_job_id"] == "777"
    assert closed_record["tasks"] == 1 and closed_record["user"] == "bob"
    assert not [r for r in b.records("job_finished") if r["job_id"] == session_id]

    (started,) = b.records("program_started")
    assert started["session_id"] != session_id  # the program's own session
    (ended,) = [r for r in b.records("job_finished") if r["job_id"] == hybrid_id]
    assert started["job_id"] == hybrid_id and ended["kind"] == "hybrid"
    assert ended["request_id"] == "client-req-2" and ended["program"] == ended["state"]

    seen = states()
    assert "idle" in seen[seen.index("calibration") :]
    assert all(a != b for a, b in itertools.pairwise(seen))  # once per change
    accesses = [r for r in records if r["logger"] == "uvicorn.access"]
    (access,) = [r for r in accesses if r.get("request_id") == "client-req-1"]
    assert access["user"] == "alice" and '"POST /v1/jobs HTTP/1.1" 201' in access["msg"]
    assert not any(r.get("request_id") in (long_id, "abc") for r in records)

    whole = b.log.read_text() + b.out.read_text()
    for secret in (b.admin, alice, session_token):
        assert secret not in whole
    assert "INJECTED-LINE" not in whole


@pytest.mark.slow
def test_a_text_log_cannot_be_forged_by_a_job_name(text_broker: Served) -> None:
    b = text_broker
    forged = "x\n2030-01-01T00:00:00.000Z WARNING qhpc.broker.lifecycle job failed"
    refused = b.call("POST", "/v1/jobs", b.admin, {"resource": "aer", "circuits": [BELL],
                                                    "shots": 10, "user": "eve",
                                                    "account": "a", "name": forged})  # fmt: skip
    assert refused.status_code == 422  # a name with a newline is refused outright
    sent = b.call("POST", "/v1/jobs", b.admin, {"resource": "aer", "circuits": [BELL],
                                                 "shots": 10, "user": "eve", "account": "a",
                                                 "name": forged.replace("\n", SNEAKY)})  # fmt: skip
    assert sent.status_code == 201, sent.text
    job_id = sent.json()["job_id"]

    def ended() -> bool:
        return any(
            "job completed event=job_finished " in line and f" job_id={job_id} " in line
            for line in b.log.read_text().split("\n")
        )

    wait_for(ended, "job end")
    stop_process(b.process)
    text = b.log.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]
    assert text.splitlines() == lines  # nothing a line-splitter honours beyond \n
    starts = [line[:4] for line in lines if not line.startswith("    ")]
    assert set(starts) == {lines[0][:4]}  # every record starts with this year's timestamp
    (submitted,) = [line for line in lines if f"job_id={job_id}" in line and "submitted" in line]
    assert "\\u2028FORGED\\x85too2030-01-01T00:00:00.000Z WARNING" in submitted
    assert b.admin not in text


@pytest.mark.parametrize(
    ("option", "value"),
    [("--log-format", "xml"), ("--log-format", ""), ("--log-level", "loud"),
     ("--log-level", "10"), ("--log-level", "info\nERROR forged")],
)  # fmt: skip
def test_bad_log_options_are_refused_before_anything_starts(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "never.db"
    code, _, err = run_cli(["serve", "--db", str(db), option, value], capsys)
    assert code == 2 and f"Invalid value for '{option}'" in err
    assert not db.exists()
