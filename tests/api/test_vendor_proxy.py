"""The vendor proxy (``/v1/proxy/{resource}/…``) over a real broker, store and API, in
front of a local stand-in of a vendor endpoint.

The stand-in is a fake — a vendor cloud cannot run here — shaped after IBM's
published Qiskit Runtime REST API (quantum.cloud.ibm.com/docs/api/runtime): base URL
``…/api``; ``POST /v1/jobs`` with a JSON body naming ``program_id`` and ``backend``,
answered with the job's ``id``; ``GET /v1/jobs/{id}``, ``/v1/jobs/{id}/results``,
``/v1/jobs/{id}/metrics`` (whose ``usage.quantum_seconds`` is what the QRMI and
qiskit-ibm-runtime clients read as a job's QPU usage); ``GET /v1/backends/{name}/
status``; every call must carry ``Authorization: Bearer <IAM token>``, ``Service-CRN``
and ``IBM-API-Version``, and is answered 401 without the right ones — so each test
that gets a 2xx proves the proxy injected them. It records what it received, so the
tests also see what the proxy did *not* forward. A few extra paths (``/test/…``)
make it misbehave: slow, redirecting, oversized, cookie-setting, credential-echoing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_api import World, assert_problem, bearer, still_serves

from helpers import free_port
from qhpc.api import create_app
from qhpc.broker import Broker, BrokerConfig, vendor_task_id
from qhpc.proxy import CredentialError, VendorProxies
from qhpc.resources import ResourceRegistry, ResourceSpec
from qhpc.store import Store

CRN = "crn:v1:bluemix:public:quantum-computing:us-east:a/0123:4567::"
API_VERSION = "2025-05-01"
QUANTUM_SECONDS = 4.25


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StandIn:
    """The stand-in vendor's state: the token it accepts, jobs, what it received."""

    token: str
    port: int = 0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _handler(vendor: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, document: Any, headers: dict[str, str] | None = None) -> None:
            raw = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path = self.path.split("?")[0]
            vendor.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            if (
                self.headers.get("Authorization") != f"Bearer {vendor.token}"
                or self.headers.get("Service-CRN") != CRN
                or not self.headers.get("IBM-API-Version")
            ):
                self._reply(401, {"errors": [{"code": 1, "message": "Unauthorized"}]})
                return
            parts = path.removeprefix("/api").strip("/").split("/")
            self._route(parts, body)

        def _route(self, parts: list[str], body: bytes) -> None:
            if parts == ["v1", "jobs"] and self.command == "POST":
                request = json.loads(body)
                if not {"program_id", "backend"} <= set(request):
                    self._reply(400, {"errors": [{"message": "program_id and backend"}]})
                    return
                job_id = "c" + uuid.uuid4().hex[:19]
                vendor.jobs[job_id] = {"id": job_id, "backend": request["backend"]}
                self._reply(200, {"id": job_id, "backend": request["backend"]})
            elif parts[:2] == ["v1", "jobs"] and len(parts) >= 3:
                job = vendor.jobs.get(parts[2])
                if job is None:
                    self._reply(404, {"errors": [{"message": "Job not found"}]})
                elif parts[3:] == []:
                    self._reply(200, {**job, "status": "Completed"})
                elif parts[3:] == ["results"]:
                    self._reply(200, {"results": [{"data": {"c": {"samples": ["0x0", "0x3"]}}}]})
                elif parts[3:] == ["metrics"]:
                    usage = {"quantum_seconds": QUANTUM_SECONDS, "seconds": 5}
                    self._reply(200, {"usage": usage, "timestamps": {}})
                else:
                    self._reply(404, {"errors": [{"message": "no such path"}]})
            elif parts[:2] == ["v1", "backends"] and parts[3:] == ["status"]:
                self._reply(200, {"state": True, "status": "active", "length_queue": 3})
            elif parts == ["test", "slow"]:
                time.sleep(2.0)
                self._reply(200, {"late": True})
            elif parts == ["test", "redirect"]:
                self._reply(302, {}, {"Location": "http://127.0.0.1:9/elsewhere"})
            elif parts == ["test", "big"]:
                self._reply(200, {"blob": "x" * 200_000})
            elif parts == ["test", "cookie"]:
                self._reply(
                    200, {"ok": True}, {"Set-Cookie": "vendor_session=abc", "X-Vendor": "1"}
                )
            elif parts == ["test", "echo"]:
                auth = self.headers.get("Authorization", "")
                self._reply(200, {"you_sent": auth}, {"Retry-After": auth})
            else:
                self._reply(404, {"errors": [{"message": "no such path"}]})

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

    return Handler


@pytest.fixture
def vendor() -> Iterator[StandIn]:
    state = StandIn(token="vendor-iam-" + uuid.uuid4().hex)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def write_credential(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    os.chmod(path, mode)
    return path


def proxy_table(base_url: str, credential: Path, backend: str, **more: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "base_url": base_url,
        "credential_file": str(credential),
        "headers": {"Service-CRN": CRN, "IBM-API-Version": API_VERSION},
        "jobs": "/v1/jobs",
        "backend": backend,
        "allow": [f"GET /v1/backends/{backend}/status", "GET /test/*"],
        "max_request_bytes": 4096,
        "max_response_bytes": 100_000,
        "timeout": 1.0,
    }
    table.update(more)
    return table


@dataclass
class ProxyWorld:
    world: World
    http: TestClient
    vendor: StandIn
    credential: Path
    heron: str  # session token of alice on heron
    heron_id: str
    heron_bob: str  # session token of bob on heron (another tenant, same QPU)
    eagle: str  # session token of alice on eagle (another QPU, same vendor)


@pytest.fixture
def pw(tmp_path: Path, vendor: StandIn) -> Iterator[ProxyWorld]:
    credential = write_credential(tmp_path / "vendor.token", vendor.token)
    dead = f"http://127.0.0.1:{free_port()}/api"

    def spec(name: str, base_url: str, backend: str) -> ResourceSpec:
        return ResourceSpec(name, "null", {"proxy": proxy_table(base_url, credential, backend)})

    registry = ResourceRegistry(
        [
            spec("heron", vendor.base_url, "ibm_torino"),
            spec("eagle", vendor.base_url, "ibm_brisbane"),
            spec("gone", dead, "ibm_gone"),
            ResourceSpec("aer", "null", {}),
        ]
    )
    with Store.open(str(tmp_path / "proxy.db")) as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        world = World(broker)
        deadline = time.time() + 600
        opened = broker.open_session
        heron_session, heron = opened(
            user="alice", account="chem", resource="heron", deadline=deadline
        )
        _, heron_bob = opened(user="bob", account="phys", resource="heron", deadline=deadline)
        _, eagle = opened(user="alice", account="chem", resource="eagle", deadline=deadline)
        with TestClient(create_app(broker)) as http:
            yield ProxyWorld(
                world, http, vendor, credential, heron, heron_session.session_id, heron_bob, eagle
            )
    registry.close()


def submit(pw: ProxyWorld, token: str, backend: str = "ibm_torino", resource: str = "heron") -> Any:
    return pw.http.post(
        f"/v1/proxy/{resource}/v1/jobs",
        json={"program_id": "sampler", "backend": backend, "params": {"pubs": []}},
        headers=bearer(token),
    )


def no_secret_in(pw: ProxyWorld, *texts: str) -> None:
    for text in texts:
        assert pw.vendor.token not in text


# -- injection and booking --------------------------------------------------------------


def test_the_vendor_gets_the_credential_and_never_the_clients_headers(pw: ProxyWorld) -> None:
    answer = pw.http.post(
        "/v1/proxy/heron/v1/jobs",
        json={"program_id": "sampler", "backend": "ibm_torino", "params": {}},
        headers={
            **bearer(pw.heron),
            "Cookie": "qhpc=1",
            "X-Forwarded-For": "10.0.0.1",
            "Service-CRN": "crn:forged",
            "X-Custom": "tenant",
            "Accept": "application/json",
        },
    )
    assert answer.status_code == 200, answer.text
    job_id = answer.json()["id"]
    assert job_id in pw.vendor.jobs and answer.json()["backend"] == "ibm_torino"
    (seen,) = pw.vendor.seen
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["authorization"] == f"Bearer {pw.vendor.token}"
    assert headers["service-crn"] == CRN and headers["ibm-api-version"] == API_VERSION
    assert headers["accept"] == "application/json"
    assert headers["content-type"] == "application/json"
    assert {"cookie", "x-forwarded-for", "x-custom"}.isdisjoint(headers)
    assert pw.heron not in json.dumps(seen.headers)  # the session token stays at the broker
    assert seen.path == "/api/v1/jobs"
    no_secret_in(pw, answer.text, json.dumps(dict(answer.headers)))


def test_a_submission_and_its_usage_are_booked_to_the_session(pw: ProxyWorld) -> None:
    job_id = submit(pw, pw.heron).json()["id"]
    task_id = vendor_task_id("heron", job_id)
    booked = pw.world.broker.store.usage_record(task_id)
    assert booked is not None
    assert (booked.job_id, booked.session_id) == (pw.heron_id, pw.heron_id)
    assert (booked.user, booked.account, booked.resource) == ("alice", "chem", "heron")
    assert booked.qpu_seconds == 0.0
    for tail in ("", "/results"):
        got = pw.http.get(f"/v1/proxy/heron/v1/jobs/{job_id}{tail}", headers=bearer(pw.heron))
        assert got.status_code == 200, got.text
    for _ in range(2):  # read twice: booked once
        metrics = pw.http.get(f"/v1/proxy/heron/v1/jobs/{job_id}/metrics", headers=bearer(pw.heron))
        assert metrics.json()["usage"]["quantum_seconds"] == QUANTUM_SECONDS
    booked = pw.world.broker.store.usage_record(task_id)
    assert booked is not None and booked.qpu_seconds == QUANTUM_SECONDS
    assert pw.world.broker.usage.usage("chem", time.time()) == pytest.approx(QUANTUM_SECONDS, 1e-3)
    rows = pw.http.get(
        "/v1/accounting", params={"group_by": "account"}, headers=bearer(pw.world.admin)
    ).json()
    chem = next(r for r in rows["rows"] if r["group"] == "chem")
    assert (chem["tasks"], chem["qpu_seconds"]) == (1, QUANTUM_SECONDS)
    mine = pw.world.broker.records.usage(account="chem")
    assert [(u.task_id, u.qpu_seconds) for u in mine] == [(task_id, QUANTUM_SECONDS)]


def test_an_allowed_path_passes_and_others_do_not(pw: ProxyWorld) -> None:
    ok = pw.http.get("/v1/proxy/heron/v1/backends/ibm_torino/status", headers=bearer(pw.heron))
    assert ok.status_code == 200 and ok.json()["status"] == "active"
    before = len(pw.vendor.seen)
    for path in (
        "/v1/jobs",  # listing would show every tenant's jobs
        "/v1/backends/ibm_brisbane/status",  # another QPU of the same account
        "/v1/backends/ibm_torino/properties",
        "/v1/jobs/../backends/x/status",
        "/v1/jobs/%2e%2e/backends",
        "/v1/jobs/a%2Fb",
        "/v1//jobs",
    ):
        refused = pw.http.get(f"/v1/proxy/heron{path}", headers=bearer(pw.heron))
        assert refused.status_code in (403, 404), (path, refused.text)
        assert_problem(refused, refused.status_code)
    refused = pw.http.delete(
        "/v1/proxy/heron/v1/backends/ibm_torino/status", headers=bearer(pw.heron)
    )
    assert_problem(refused, 403)
    assert len(pw.vendor.seen) == before  # nothing refused reached the vendor
    still_serves(pw.http, pw.world.alice)


def test_a_submission_must_name_the_sessions_backend(pw: ProxyWorld) -> None:
    assert_problem(submit(pw, pw.heron, backend="ibm_brisbane"), 403)
    for body in (b"not json", b"[1, 2]", b"[" * 100_000 + b"]" * 100_000):
        answer = pw.http.post(
            "/v1/proxy/heron/v1/jobs", content=body[:4000], headers=bearer(pw.heron)
        )
        assert_problem(answer, 403)
    assert pw.vendor.seen == [] and pw.vendor.jobs == {}


# -- who may ----------------------------------------------------------------------------


def test_only_the_session_holding_the_resource_may_use_its_proxy(pw: ProxyWorld) -> None:
    assert_problem(pw.http.get("/v1/proxy/heron/v1/backends/ibm_torino/status"), 401)
    bad = {"Authorization": "Bearer qhpc_not-a-token"}
    assert_problem(pw.http.get("/v1/proxy/heron/v1/backends/ibm_torino/status", headers=bad), 401)
    for who in (pw.world.alice, pw.world.admin, pw.world.north):  # not session tokens
        answer = pw.http.get("/v1/proxy/heron/v1/backends/ibm_torino/status", headers=bearer(who))
        assert_problem(answer, 403)
    # a session on eagle reaches eagle's vendor backend, never heron's
    assert_problem(submit(pw, pw.eagle, resource="heron"), 403)
    assert submit(pw, pw.eagle, backend="ibm_brisbane", resource="eagle").status_code == 200
    assert_problem(pw.http.get("/v1/proxy/aer/x", headers=bearer(pw.heron)), 403)
    assert len(pw.vendor.seen) == 1


def test_a_job_answers_its_submitter_only(pw: ProxyWorld) -> None:
    job_id = submit(pw, pw.heron).json()["id"]
    for token in (pw.heron_bob,):  # same QPU, another tenant: as if it did not exist
        for tail in ("", "/results", "/metrics"):
            answer = pw.http.get(f"/v1/proxy/heron/v1/jobs/{job_id}{tail}", headers=bearer(token))
            assert_problem(answer, 404)
        assert_problem(
            pw.http.delete(f"/v1/proxy/heron/v1/jobs/{job_id}", headers=bearer(token)), 404
        )
    eagle = pw.http.get(f"/v1/proxy/eagle/v1/jobs/{job_id}", headers=bearer(pw.eagle))
    assert_problem(eagle, 404)
    unknown = pw.http.get("/v1/proxy/heron/v1/jobs/cunknown", headers=bearer(pw.heron))
    assert_problem(unknown, 404)
    assert len(pw.vendor.seen) == 1  # only the submission went out


def test_a_closed_sessions_token_no_longer_reaches_the_vendor(pw: ProxyWorld) -> None:
    job_id = submit(pw, pw.heron).json()["id"]
    pw.world.broker.close_session(pw.heron_id)
    answer = pw.http.get(f"/v1/proxy/heron/v1/jobs/{job_id}", headers=bearer(pw.heron))
    assert_problem(answer, 401)


# -- budgets and a misbehaving vendor ----------------------------------------------------


def test_an_oversized_body_is_refused_before_the_vendor(pw: ProxyWorld) -> None:
    big = {"program_id": "sampler", "backend": "ibm_torino", "params": {"x": "y" * 5000}}
    answer = pw.http.post("/v1/proxy/heron/v1/jobs", json=big, headers=bearer(pw.heron))
    assert_problem(answer, 413)
    long_query = pw.http.get(
        "/v1/proxy/heron/v1/backends/ibm_torino/status?" + "a=b&" * 2000, headers=bearer(pw.heron)
    )
    assert_problem(long_query, 413)
    assert pw.vendor.seen == []
    still_serves(pw.http, pw.world.alice)


@pytest.mark.parametrize(
    ("resource", "path", "status"),
    [
        ("gone", "/test/x", 502),  # nothing listens
        ("heron", "/test/slow", 504),  # slower than the proxy's 1 s
        ("heron", "/test/redirect", 502),  # never followed
        ("heron", "/test/big", 502),  # over max_response_bytes
    ],
)
def test_a_failing_vendor_is_a_gateway_problem_without_the_credential(
    pw: ProxyWorld, caplog: pytest.LogCaptureFixture, resource: str, path: str, status: int
) -> None:
    token = pw.heron
    if resource == "gone":
        _, token = pw.world.broker.open_session(
            user="alice", account="chem", resource="gone", deadline=time.time() + 60
        )
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    answer = pw.http.get(f"/v1/proxy/{resource}{path}", headers=bearer(token))
    assert time.monotonic() - started < 10
    body = assert_problem(answer, status)
    assert "127.0.0.1" not in body["detail"]  # no vendor address either
    no_secret_in(pw, answer.text, json.dumps(dict(answer.headers)), caplog.text)
    still_serves(pw.http, pw.world.alice)


def test_cookies_and_other_vendor_headers_do_not_pass(pw: ProxyWorld) -> None:
    answer = pw.http.get("/v1/proxy/heron/test/cookie", headers=bearer(pw.heron))
    assert answer.status_code == 200 and answer.json() == {"ok": True}
    assert "set-cookie" not in answer.headers and "x-vendor" not in answer.headers
    assert answer.headers["content-type"] == "application/json"


def test_a_credential_the_vendor_echoes_is_cut_out(
    pw: ProxyWorld, caplog: pytest.LogCaptureFixture
) -> None:
    # INFO, not DEBUG: httpcore's DEBUG records print the vendor's raw response headers
    # (an echo included) before the proxy sees them — see docs/security.md.
    caplog.set_level(logging.INFO)
    answer = pw.http.get("/v1/proxy/heron/test/echo", headers=bearer(pw.heron))
    assert answer.status_code == 200
    assert answer.json() == {"you_sent": "Bearer [redacted]"}
    assert answer.headers["retry-after"] == "Bearer [redacted]"
    no_secret_in(pw, answer.text, json.dumps(dict(answer.headers)), caplog.text)
    metrics = pw.http.get("/metrics", headers=bearer(pw.world.admin))
    assert metrics.status_code == 200
    no_secret_in(pw, metrics.text)


def test_a_refused_or_unusable_credential_is_the_operators_problem(
    pw: ProxyWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    status = "/v1/proxy/heron/v1/backends/ibm_torino/status"
    write_credential(pw.credential, "expired-" + pw.vendor.token)  # rotated to a bad one
    refused = pw.http.get(status, headers=bearer(pw.heron))
    assert_problem(refused, 502)
    assert "renew" in refused.json()["detail"]
    os.chmod(pw.credential, 0o640)  # group may read it: refused, not used
    unusable = pw.http.get(status, headers=bearer(pw.heron))
    assert_problem(unusable, 503)
    assert str(pw.credential) not in unusable.text  # the path goes to the log only
    assert "chmod 600" in caplog.text
    write_credential(pw.credential, pw.vendor.token)  # rotated back: works, no restart
    assert pw.http.get(status, headers=bearer(pw.heron)).status_code == 200
    no_secret_in(pw, refused.text, unusable.text, caplog.text)


def test_an_unusable_credential_stops_the_start(tmp_path: Path) -> None:
    loose = write_credential(tmp_path / "loose.token", "secret-value", 0o644)
    spec = ResourceSpec(
        "heron", "null", {"proxy": proxy_table("http://127.0.0.1:9/api", loose, "ibm_torino")}
    )
    with pytest.raises(CredentialError, match="chmod 600") as caught:
        VendorProxies.of(ResourceRegistry([spec]))
    assert "secret-value" not in str(caught.value)
    missing = ResourceSpec(
        "heron",
        "null",
        {"proxy": proxy_table("http://127.0.0.1:9/api", tmp_path / "nope", "ibm_torino")},
    )
    with pytest.raises(CredentialError, match="cannot open"):
        VendorProxies.of(ResourceRegistry([missing]))
