"""The slurmrestd client against a tiny loopback server speaking the published v0.0.38
schema — including the malformed and error replies a real server sends (shapes taken
from slurmrestd 22.05.8). The real slurmrestd is covered by tests/slurm/test_chains.py."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port, run_cli, start_serve, wait_healthy
from qhpc.client import connect
from qhpc.slurm.rest import (
    API_VERSION,
    RemoteJob,
    RemoteSlurmError,
    SlurmRestClient,
    token_from_scontrol,
)

TOKEN = "eyJ.test.token"
META = {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"}}


@dataclass
class Restd:
    """What the fake slurmrestd knows and how it misbehaves."""

    url: str = ""
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    #: replaces the next reply: (HTTP status, content type, body text)
    override: tuple[int, str, str] | None = None
    next_id: int = 40


def job_record(job_id: int, state: str, reason: str, raw_exit: int, name: str) -> dict[str, Any]:
    return {
        "job_id": job_id, "job_state": state, "state_reason": reason, "exit_code": raw_exit,
        "derived_exit_code": 0, "name": name, "partition": "qpu", "user_name": "alice",
        "state_description": "", "het_job_id": 0,
    }  # fmt: skip


class Handler(BaseHTTPRequestHandler):
    restd: Restd

    def log_message(self, *args: object) -> None:
        pass

    def _reply(
        self, status: int, body: dict[str, Any] | str, kind: str = "application/json"
    ) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(text.encode())))
        self.end_headers()
        self.wfile.write(text.encode())

    def _handle(self, method: str) -> None:
        restd = self.restd
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        restd.requests.append((method, self.path, dict(self.headers), body))
        if restd.override is not None:
            status, kind, text = restd.override
            restd.override = None
            return self._reply(status, text, kind)
        if not self.headers.get("X-SLURM-USER-NAME") or not self.headers.get("X-SLURM-USER-TOKEN"):
            return self._reply(401, "Authentication failure", "text/plain")
        if not self.path.startswith(f"/slurm/{API_VERSION}/"):
            return self._reply(404, "Unable find requested URL", "text/plain")
        if self.headers["X-SLURM-USER-TOKEN"] != TOKEN:
            error = {"error_code": 5005, "error": "Zero Bytes were transmitted or received"}
            return self._reply(500, {"meta": META, "errors": [error]})
        tail = self.path.removeprefix(f"/slurm/{API_VERSION}/")
        if method == "POST" and tail == "job/submit":
            return self._submit(body)
        match = re.fullmatch(r"job/(\d+)", tail)
        if method == "GET" and match:
            return self._job(int(match.group(1)))
        if method in ("POST", "DELETE") and match and int(match.group(1)) in self.restd.jobs:
            # an update ({"hold": false}, as 22.05 takes it) or a cancel: an empty error list
            self.restd.jobs[int(match.group(1))]["held"] = method == "POST" and body != {
                "hold": False
            }
            return self._reply(200, {"meta": META, "errors": []})
        return self._reply(404, "Unable find requested URL", "text/plain")

    def _submit(self, body: Any) -> None:
        job = body.get("job", {})
        if not job.get("environment"):
            errors = [
                {"error": "environment must be set", "error_code": 2127},
                {"error_code": 9001, "error": "Failure during parsing"},
            ]
            return self._reply(400, {"meta": META, "errors": errors})
        if job.get("partition") not in (None, "qpu", "debug"):
            errors = [{"error_code": 2000, "error": "Invalid partition name specified"}]
            return self._reply(500, {"meta": META, "errors": errors})
        self.restd.next_id += 1
        found = re.search(r"^exit (\d+)$", body["script"], re.MULTILINE)
        code = int(found.group(1)) if found else 0
        final = ("COMPLETED", "None") if code == 0 else ("FAILED", "NonZeroExitCode")
        # each GET moves the job one state on: PENDING → RUNNING → final
        self.restd.jobs[self.restd.next_id] = {
            "name": job.get("name", ""), "code": code,
            "states": [("PENDING", "Priority"), ("RUNNING", "None"), final],
        }  # fmt: skip
        self.restd.jobs[self.restd.next_id]["held"] = bool(job.get("hold"))
        # 22.05 answers a held submission with its id and an "error" saying it is held
        held = [{"error_code": 2042, "error": "Job is in held state, pending scheduler release"}]
        reply = {"meta": META, "errors": held if job.get("hold") else [],
                 "job_id": self.restd.next_id, "step_id": "BATCH",
                 "job_submit_user_msg": ""}  # fmt: skip
        return self._reply(200, reply)

    def _job(self, job_id: int) -> None:
        known = self.restd.jobs.get(job_id)
        if known is None:
            error = {"description": f"Unable to find JobId={job_id}", "error_number": 2017,
                     "error": "Invalid job id specified", "source": "slurm_load_job"}  # fmt: skip
            return self._reply(500, {"meta": META, "errors": [error], "jobs": []})
        state, reason = known["states"][0]
        if len(known["states"]) > 1:
            known["states"].pop(0)
        raw_exit = known["code"] << 8 if state in ("COMPLETED", "FAILED") else 0
        record = job_record(job_id, state, reason, raw_exit, known["name"])
        return self._reply(200, {"meta": META, "errors": [], "jobs": [record]})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def secret_file(folder: Path, name: str, secret: str) -> Path:
    """A secret for --token-file/--broker-token-file: never on the command line."""
    path = folder / f"{name}.secret"
    path.write_text(secret + "\n")
    return path


def jwt_file(folder: Path) -> Path:
    return secret_file(folder, "jwt", TOKEN)


@pytest.fixture
def restd() -> Iterator[Restd]:
    state = Restd()
    handler = type("BoundHandler", (Handler,), {"restd": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def client(restd: Restd, token: str = TOKEN) -> SlurmRestClient:
    return SlurmRestClient(restd.url, "alice", token, timeout=5)


SCRIPT = "#!/bin/bash\necho hello\n"


def test_submit_sends_the_v0038_body_and_both_headers(restd: Restd) -> None:
    with client(restd) as rest:
        job_id = rest.submit(
            SCRIPT, name="q", working_directory="/tmp", partition="qpu",
            licenses="qpu_sim:1", environment={"PATH": "/usr/bin:/bin", "QHPC_TOKEN": "t"},
        )  # fmt: skip
    assert job_id == 41
    method, path, headers, body = restd.requests[-1]
    assert (method, path) == ("POST", "/slurm/v0.0.38/job/submit")
    assert headers["X-SLURM-USER-NAME"] == "alice"
    assert headers["X-SLURM-USER-TOKEN"] == TOKEN
    assert body == {
        "job": {"name": "q", "current_working_directory": "/tmp", "partition": "qpu",
                "licenses": "qpu_sim:1",
                "environment": {"PATH": "/usr/bin:/bin", "QHPC_TOKEN": "t"}},
        "script": SCRIPT,
    }  # fmt: skip


def test_wait_reports_each_state_until_the_job_ends(restd: Restd) -> None:
    seen: list[str] = []
    with client(restd) as rest:
        job_id = rest.submit(SCRIPT + "exit 3\n", name="fails", working_directory="/tmp")
        job = rest.wait(job_id, poll=0.01, timeout=10, on_change=lambda j: seen.append(j.state))
    assert seen == ["PENDING", "RUNNING", "FAILED"]
    assert (job.state, job.reason, job.exit_code, job.signal) == (
        "FAILED",
        "NonZeroExitCode",
        3,
        None,
    )
    assert job.exit_status == 3
    assert job.describe() == f"job {job_id}: FAILED (NonZeroExitCode), exit code 3"


def test_exit_status_mirrors_the_job() -> None:
    def status(state: str, raw: int | None) -> int:
        return RemoteJob.from_rest(_rest_job(state, raw)).exit_status

    assert status("COMPLETED", 0) == 0
    assert status("FAILED", 2 << 8) == 2
    assert status("CANCELLED", 9) == 128 + 9  # killed by SIGKILL
    assert status("TIMEOUT", 0) == 1  # ended badly without an exit code of its own
    assert status("NODE_FAIL", None) == 1


def _rest_job(state: str, raw: int | None) -> Any:
    from qhpc.slurm.rest import RestJob

    return RestJob(job_id=1, job_state=state, exit_code=raw)


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ((200, "text/html", "<html><body>proxy login</body></html>"),
         r"HTTP 200 and a body that is not JSON \(text/html\): '<html><body>proxy login"),
        ((200, "application/json", '{"job_id": 4'), "not JSON"),
        ((200, "application/json", "[1, 2]"), "a JSON list, not an object"),
        ((200, "application/json", '{"errors": []}'), "reply has no job_id"),
        ((200, "application/json", '{"errors": [], "job_id": "forty"}'),
         "does not match the v0.0.38 schema: job_id: input should be a valid integer"),
        ((200, "application/json", '{"errors": "none", "job_id": 4}'),
         "does not match the v0.0.38 schema: errors: input should be a valid list"),
        ((200, "application/json",
          '{"errors": [{"error": "QOSMaxSubmitJobPerUserLimit", "error_number": 2051}],'
          ' "job_id": 0}'),
         r"could not submit job 'q': QOSMaxSubmitJobPerUserLimit \(Slurm error 2051\)"),
        ((502, "text/html", "<h1>Bad Gateway</h1>"), "HTTP 502 and a body that is not JSON"),
        ((503, "application/json", "{}"), "HTTP 503 without an error list"),
        ((401, "text/plain", "Authentication failure"),
         "refused user 'alice' \\(HTTP 401\\).*SLURM_JWT=daemon"),
    ],
)  # fmt: skip
def test_malformed_submission_replies_get_clear_errors(
    restd: Restd, override: tuple[int, str, str], problem: str
) -> None:
    restd.override = override
    with client(restd) as rest, pytest.raises(RemoteSlurmError, match=problem):
        rest.submit(SCRIPT, name="q", working_directory="/tmp")


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ((200, "application/json", '{"errors": [], "jobs": [{"job_id": 41}]}'),
         "jobs.0.job_state: field required"),
        ((200, "application/json", '{"errors": [], "jobs": [{"job_id": 41, "job_state": ""}]}'),
         "jobs.0.job_state: string should have at least 1 character"),
        ((200, "application/json", '{"errors": [], "jobs": []}'), "reported no job 41"),
        ((200, "application/json",
          '{"errors": [], "jobs": [{"job_id": 7, "job_state": "RUNNING"}]}'),
         "reported no job 41"),
    ],
)  # fmt: skip
def test_malformed_job_replies_get_clear_errors(
    restd: Restd, override: tuple[int, str, str], problem: str
) -> None:
    restd.override = override
    with client(restd) as rest, pytest.raises(RemoteSlurmError, match=problem):
        rest.job(41)


def test_slurm_errors_are_reported_with_their_numbers(restd: Restd) -> None:
    with client(restd) as rest:
        with pytest.raises(
            RemoteSlurmError, match=r"Invalid partition name specified \(Slurm error 2000\)"
        ):
            rest.submit(SCRIPT, name="q", working_directory="/tmp", partition="gpu")
        with pytest.raises(
            RemoteSlurmError,
            match=r"could not read job 77: Invalid job id specified "
            r"\(Unable to find JobId=77; slurm_load_job; Slurm error 2017\)",
        ):
            rest.job(77)
        with pytest.raises(
            RemoteSlurmError, match=r"environment must be set.*Failure during parsing"
        ):
            rest.submit(SCRIPT, name="q", working_directory="/tmp", environment={},
                        extra={"environment": {}})  # fmt: skip


def test_a_refused_token_is_named(restd: Restd) -> None:
    with (
        client(restd, token="stale") as rest,
        pytest.raises(
            RemoteSlurmError, match=r"Zero Bytes.*token slurmctld refused.*issued for user 'alice'"
        ),
    ):
        rest.submit(SCRIPT, name="q", working_directory="/tmp")


def test_wrong_api_version_and_unreachable_server(restd: Restd) -> None:
    with (
        SlurmRestClient(restd.url, "alice", TOKEN, version="v0.0.39") as rest,
        pytest.raises(
            RemoteSlurmError, match=r"HTTP 404.*may not serve API v0.0.39 .*v0.0.36-v0.0.38"
        ),
    ):
        rest.job(1)
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        SlurmRestClient(dead, "alice", TOKEN) as rest,
        pytest.raises(RemoteSlurmError, match=f"cannot reach slurmrestd at {dead}"),
    ):
        rest.ping()


def test_bad_arguments_are_refused_before_any_request() -> None:
    with pytest.raises(RemoteSlurmError, match="must start with http"):
        SlurmRestClient("127.0.0.1:6820", "alice", TOKEN)
    with pytest.raises(RemoteSlurmError, match="needs a token"):
        SlurmRestClient("http://127.0.0.1:6820", "alice", "")
    with (
        SlurmRestClient("http://127.0.0.1:1", "alice", TOKEN) as rest,
        pytest.raises(RemoteSlurmError, match="interpreter line"),
    ):
        rest.submit("echo hi\n", name="q", working_directory="/tmp")


def test_wait_gives_up_after_its_timeout(restd: Restd) -> None:
    with client(restd) as rest:
        job_id = rest.submit(SCRIPT, name="q", working_directory="/tmp")
        restd.jobs[job_id]["states"] = [("PENDING", "Licenses")]
        with pytest.raises(RemoteSlurmError, match=r"PENDING \(Licenses\) — still not finished"):
            rest.wait(job_id, poll=0.01, timeout=0.05)


def fake_scontrol(tmp_path: Path, body: str) -> None:
    tool = tmp_path / "bin" / "scontrol"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


def test_token_from_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    fake_scontrol(tmp_path, 'echo "SLURM_JWT=tok-$2-$3"')
    assert token_from_scontrol("alice", 60) == "tok-username=alice-lifespan=60"
    fake_scontrol(tmp_path, 'echo "scontrol: error: Invalid user" >&2; exit 1')
    with pytest.raises(RemoteSlurmError, match="gave no token: scontrol: error: Invalid user"):
        token_from_scontrol("alice")


# --------------------------------------------------------------------------- the CLI


def test_cli_submit_wait_prints_states_and_mirrors_the_exit_code(
    restd: Restd,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT + "exit 4\n")
    monkeypatch.setenv("SLURM_JWT", TOKEN)
    monkeypatch.setenv("QHPC_TOKEN", "qhpc_centre_token")
    code, out, err = run_cli(
        ["slurm", "submit", str(script), "--remote", restd.url, "--user", "alice",
         "-p", "qpu", "-L", "qpu_sim:1", "--export", "QHPC_TOKEN", "--env", "A=b",
         "--wait", "--poll", "0.01"],
        capsys,
    )  # fmt: skip
    assert code == 4, err
    lines = out.splitlines()
    assert lines[0] == f"submitted batch job 41 to {restd.url} as alice"
    assert lines[1:] == [
        "job 41: PENDING (Priority)",
        "job 41: RUNNING",
        "job 41: FAILED (NonZeroExitCode), exit code 4",
    ]
    body = restd.requests[0][3]
    assert body["job"]["environment"]["QHPC_TOKEN"] == "qhpc_centre_token"
    assert body["job"]["environment"]["A"] == "b"
    assert body["job"]["licenses"] == "qpu_sim:1"
    assert body["job"]["name"] == "job.sh"


def test_cli_reports_a_malformed_reply_in_one_line(
    restd: Restd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    restd.override = (200, "text/html", "<html>maintenance</html>")
    code, _, err = run_cli(
        ["slurm", "submit", str(script), "--remote", restd.url, "--user", "alice",
         "--token-file", str(jwt_file(tmp_path))],
        capsys,
    )  # fmt: skip
    assert code == 1
    assert "error:" in err and "not JSON (text/html)" in " ".join(err.split())
    assert "Traceback" not in err


def test_cli_job_shows_a_remote_job(
    restd: Restd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with client(restd) as rest:
        job_id = rest.submit(SCRIPT, name="q", working_directory="/tmp")
    code, out, _ = run_cli(
        ["slurm", "job", str(job_id), "--remote", restd.url, "--user", "alice",
         "--token-file", str(jwt_file(tmp_path)), "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["state"] == "PENDING"
    code, out, err = run_cli(
        ["slurm", "job", "999", "--remote", restd.url, "--user", "alice",
         "--token-file", str(jwt_file(tmp_path))],
        capsys,
    )  # fmt: skip
    assert code == 1 and "Invalid job id specified" in " ".join(err.split())


def test_cli_submit_opens_a_centre_session_and_hands_the_job_only_its_token(
    restd: Restd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    broker = start_serve(tmp_path, port, db=tmp_path / "broker.db")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, broker)
        with connect(url, (tmp_path / "admin.token").read_text().strip()) as admin:
            admin.set_account("north-chem", 1.0, centre="north")
            centre_token = admin.create_token("centre", "north-gw", centre="north")["token"]
            script = tmp_path / "job.sh"
            script.write_text(SCRIPT)
            code, out, err = run_cli(
                ["slurm", "submit", str(script), "--remote", restd.url, "--user", "north-gw",
                 "--token-file", str(jwt_file(tmp_path)), "--broker", url,
                 "--broker-token-file", str(secret_file(tmp_path, "centre", centre_token)),
                 "--qpu", "aer", "--for-user", "alice", "--broker-account", "north-chem",
                 "--fastpath", "tcp://qpu-site:5555", "--wait", "--poll", "0.01"],
                capsys,
            )  # fmt: skip
            assert code == 0, err
            (session,) = admin.sessions(include_closed=True)
        assert (session["user"], session["centre"], session["account"]) == (
            "alice", "north", "north-chem",
        )  # fmt: skip
        assert session["closed_at"] is not None  # --wait closed it when the job ended
        assert f"opened session {session['session_id']} on aer" in out
        assert f"closed session {session['session_id']}" in out
        environment = restd.requests[0][3]["job"]["environment"]
        assert environment["QHPC_SESSION"].startswith("qhpc_")
        assert environment["QHPC_FASTPATH"] == "tcp://qpu-site:5555"
        assert environment["QHPC_SESSION_ID"] == session["session_id"]
        assert centre_token not in json.dumps(restd.requests)  # the centre's token stays home
        # held, tied to its session, then released; the QPU's licence asked for without -L
        submitted = restd.requests[0][3]["job"]
        assert submitted["hold"] is True and submitted["licenses"] == "qpu_aer:1"
        job_id = next(iter(restd.jobs))
        assert session["slurm_job_id"] == str(job_id) and restd.jobs[job_id]["held"] is False
        assert ("POST", f"/slurm/{API_VERSION}/job/{job_id}") in [
            (m, path) for m, path, _, _ in restd.requests
        ]
    finally:
        broker.terminate()
        broker.wait(timeout=30)
