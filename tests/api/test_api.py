"""The REST API over a real broker and store: every endpoint, auth, permissions, bad input.

In-process through FastAPI's TestClient first; then one test against the real
server process (``python -m qhpc.api``) through ``qhpc.client``; then a bounded
schemathesis fuzz of the published OpenAPI document.

Every test that touches a store runs twice: on SQLite (a temp file) and on
PostgreSQL (``QHPC_TEST_POSTGRES_URL``, a fresh schema per test, dropped after),
as in ``test_store.py``: without the variable the PostgreSQL cases are skipped,
except under CI=true, where they fail. ``make unit`` starts the private cluster.
The fuzz runs on SQLite only (time budget; it checks the HTTP layer, not the store).

Choices the tests pin down: a job, task or session that exists but belongs to
someone else answers 404, exactly like one that does not exist (no probing of
ids); every input problem (validation, circuits, payloads) is 422.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from qiskit import qpy
from qiskit.circuit import QuantumCircuit

import qhpc
from helpers import free_port, postgres_schema_url
from qhpc.api import bootstrap_admin_token, create_app, openapi_json
from qhpc.broker.access import Access
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.client import Client, ClientError, connect, result_from_dict
from qhpc.resources import (
    EstimatorResult,
    EstimatorTask,
    ResourceRegistry,
    ResourceSpec,
    SamplerResult,
    SamplerTask,
)
from qhpc.resources.codec import MAX_PAYLOAD_BYTES, encode_payload
from qhpc.security import Role
from qhpc.store import AccountRecord, Store

try:
    import schemathesis
    from schemathesis.checks import not_a_server_error
except ImportError:  # the dev extra is not installed: only the fuzz test is skipped
    schemathesis = None

BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q -> c;
"""
BROKEN = BELL.replace("cx q[0], q[1];", "cx q[0] q[1];")  # line 6: missing comma
FINAL = {"completed", "failed", "cancelled"}


def qpy_text(circuit: QuantumCircuit) -> str:
    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def registry() -> ResourceRegistry:
    return ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 7}),
            ResourceSpec(
                "emu", "emulator", {"device": "line-5", "noise": False, "time_scale": 1000.0}
            ),
        ]
    )


class World:
    """A broker with accounts and one token per kind of caller."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        store = broker.store
        store.upsert_account(AccountRecord("chem", 1.0, None))
        store.upsert_account(AccountRecord("phys", 1.0, None))
        store.upsert_account(AccountRecord("north-acc", 1.0, "north"))
        store.upsert_account(AccountRecord("south-acc", 1.0, "south"))
        issue = broker.access.issue
        self.admin = issue(Role.ADMIN, "root")[1]
        self.alice = issue(Role.USER, "alice", account="chem")[1]
        self.bob = issue(Role.USER, "bob", account="phys")[1]
        self.north = issue(Role.CENTRE, "north-gw", account="north-acc", centre="north")[1]
        self.south = issue(Role.CENTRE, "south-gw", account="south-acc", centre="south")[1]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the broker keeps its state: an SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "api.db")
    else:
        yield from postgres_schema_url("qhpc_api")


def make_world(store_url: str, start: bool) -> Iterator[tuple[World, TestClient]]:
    regs = registry()
    with Store.open(store_url) as store:
        broker = Broker(store, regs, BrokerConfig(policy="fifo"))
        if start:
            broker.start()
        try:
            with TestClient(create_app(broker)) as http:
                yield World(broker), http
        finally:
            if start:
                broker.stop()
    regs.close()


@pytest.fixture
def world(store_url: str) -> Iterator[tuple[World, TestClient]]:
    yield from make_world(store_url, start=True)


@pytest.fixture
def idle(store_url: str) -> Iterator[tuple[World, TestClient]]:
    """A broker that is never started: submitted tasks stay queued (stable queues)."""
    yield from make_world(store_url, start=False)


def submit(http: TestClient, secret: str, **body: Any) -> httpx.Response:
    body.setdefault("resource", "aer")
    body.setdefault("circuits", [BELL])
    body.setdefault("shots", 100)
    return http.post("/v1/jobs", json=body, headers=bearer(secret))


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:qhpc:problem:")
    assert body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return dict(body)


def still_serves(http: TestClient, secret: str) -> None:
    assert http.get("/v1/resources", headers=bearer(secret)).status_code == 200


# -- system, auth ---------------------------------------------------------------------


def test_health_version_and_openapi(world: tuple[World, TestClient]) -> None:
    _, http = world
    assert http.get("/v1/health").json() == {"status": "ok"}
    assert http.get("/v1/version").json() == {"version": qhpc.__version__, "api": "v1"}
    assert isinstance(http.app, FastAPI)
    spec = openapi_json(http.app)
    assert spec["info"]["title"] == "qhpc broker"
    assert spec["info"]["version"] == qhpc.__version__
    assert {"/v1/jobs", "/v1/sessions/{session_id}/tasks", "/v1/accounting"} <= set(spec["paths"])
    tags = {t for op in spec["paths"]["/v1/tokens"].values() for t in op["tags"]}
    assert tags == {"tokens"}


def test_every_kind_of_bad_token_is_401(world: tuple[World, TestClient]) -> None:
    w, http = world
    _, expired = w.broker.access.issue(Role.USER, "eve", account="chem", expires_at=time.time() - 1)
    revoked_record, revoked = w.broker.access.issue(Role.USER, "mallory", account="chem")
    w.broker.access.revoke(revoked_record.token_id)
    cases = {
        "missing bearer token": {},
        "malformed Authorization": {"Authorization": "Token abc"},
        "malformed Authorization header": {"Authorization": "Bearer"},
        "malformed token": bearer("not-a-qhpc-token"),
        "unknown token": bearer("qhpc_" + "x" * 43),
        "expired": bearer(expired),
        "revoked": bearer(revoked),
    }
    # a client tells "session over" from "wrong token" by the type, not the wording
    kinds = {"expired": "token-expired", "revoked": "token-revoked"}
    for fragment, headers in cases.items():
        response = http.get("/v1/jobs", headers=headers)
        body = assert_problem(response, 401)
        assert fragment in body["detail"]
        assert body["type"] == f"urn:qhpc:problem:{kinds.get(fragment, 'auth')}"
        assert response.headers["www-authenticate"] == "Bearer"
        still_serves(http, w.alice)


def test_bootstrap_admin_token(store_url: str) -> None:
    regs = registry()
    with Store.open(store_url) as store:
        broker = Broker(store, regs)
        secret = bootstrap_admin_token(broker)
        assert secret is not None
        assert broker.access.authenticate(secret).role is Role.ADMIN
        assert bootstrap_admin_token(broker) is None
        (token,) = store.list_tokens()
        broker.access.revoke(token.token_id)
        assert bootstrap_admin_token(broker) is not None  # a locked-out operator gets back in
    regs.close()


def test_unknown_routes_and_methods_are_problems(world: tuple[World, TestClient]) -> None:
    w, http = world
    assert_problem(http.get("/v1/nothing-here"), 404)
    assert_problem(http.put("/v1/health"), 405)
    still_serves(http, w.alice)


def test_unexpected_error_is_a_500_problem_without_internals(
    world: tuple[World, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = world

    def explode(name: str) -> int:
        raise RuntimeError("secret internal state /etc/qhpc")

    with TestClient(create_app(w.broker), raise_server_exceptions=False) as http:
        monkeypatch.setattr(w.broker, "queue_length", explode)
        response = http.get("/v1/resources", headers=bearer(w.alice))
        body = assert_problem(response, 500)
        assert "secret" not in response.text
        assert body["instance"].startswith("urn:uuid:")
        monkeypatch.undo()
        still_serves(http, w.alice)


# -- resources --------------------------------------------------------------------------


def test_resources_status_target_and_metadata(world: tuple[World, TestClient]) -> None:
    w, http = world
    listed = http.get("/v1/resources", headers=bearer(w.bob)).json()
    assert [r["name"] for r in listed] == ["aer", "emu"]
    assert {"state", "busy", "pending", "queue_length", "running", "type"} <= set(listed[1])
    emu = http.get("/v1/resources/emu", headers=bearer(w.bob)).json()
    assert emu["type"] == "emulator"
    assert emu["target"]["num_qubits"] == 5
    assert emu["metadata"]["device"] == "line-5"
    body = assert_problem(http.get("/v1/resources/nope", headers=bearer(w.bob)), 404)
    assert body["known"] == ["aer", "emu"]
    assert_problem(http.get("/v1/resources/nope/queue", headers=bearer(w.bob)), 404)


def test_queue_shows_own_entries_and_anonymous_others(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    mine = submit(http, w.alice, circuits=[BELL], shots=10, split_circuits=False).json()
    submit(http, w.bob)
    submit(http, w.alice, resource="aer")
    queue = http.get("/v1/resources/aer/queue", headers=bearer(w.alice)).json()
    assert queue["length"] == 3
    assert [e["position"] for e in queue["entries"]] == [1, 2, 3]
    assert [e["mine"] for e in queue["entries"]] == [True, False, True]
    other = queue["entries"][1]
    assert other["user"] is None and other["task_id"] is None and other["job_id"] is None
    assert queue["entries"][0]["job_id"] == mine["job_id"]
    admin_view = http.get("/v1/resources/aer/queue", headers=bearer(w.admin)).json()
    assert [e["user"] for e in admin_view["entries"]] == ["alice", "bob", "alice"]
    job = http.get(f"/v1/jobs/{mine['job_id']}", headers=bearer(w.alice)).json()
    assert job["tasks"][0]["queue_position"] == 1
    assert job["tasks"][0]["eta_seconds"] == pytest.approx(0.0)
    cancelled = http.delete(f"/v1/jobs/{mine['job_id']}", headers=bearer(w.alice)).json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["affected_tasks"] == [mine["tasks"][0]["task_id"]]
    assert http.get("/v1/resources/aer/queue", headers=bearer(w.alice)).json()["length"] == 2


# -- jobs -------------------------------------------------------------------------------


def test_submit_wait_and_results(world: tuple[World, TestClient], bell: QuantumCircuit) -> None:
    w, http = world
    response = submit(http, w.alice, circuits=[BELL, qpy_text(bell)], name="bells", seed=3)
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["user"], job["account"], job["centre"], job["name"]) == (
        "alice", "chem", None, "bells",
    )  # fmt: skip
    (task,) = job["tasks"]
    done = http.get(f"/v1/tasks/{task['task_id']}?wait=30", headers=bearer(w.alice)).json()
    assert done["state"] == "completed"
    assert sum(done["result"]["circuits"][1]["counts"].values()) == 100
    results = http.get(f"/v1/jobs/{job['job_id']}/results", headers=bearer(w.alice)).json()
    assert results["state"] == "completed"
    decoded = result_from_dict(results["tasks"][0]["result"])
    assert isinstance(decoded, SamplerResult)
    assert set(decoded.circuits[0].counts) <= {"00", "11"}
    listed = http.get("/v1/jobs?state=completed&resource=aer", headers=bearer(w.alice)).json()
    assert [j["job_id"] for j in listed] == [job["job_id"]]
    assert http.get("/v1/jobs?state=queued", headers=bearer(w.alice)).json() == []


def test_split_circuits_and_encoded_estimator_payloads(
    world: tuple[World, TestClient], bell: QuantumCircuit
) -> None:
    w, http = world
    split = submit(http, w.bob, circuits=[BELL, BELL, BELL], split_circuits=True).json()
    assert split["task_count"] == 3
    ghz = QuantumCircuit(2)
    ghz.h(0)
    ghz.cx(0, 1)
    payload = EstimatorTask.create(ghz, ["ZZ", "XX"])
    encoded = base64.b64encode(encode_payload(payload)).decode()
    job = submit(http, w.bob, resource="emu", circuits=None, shots=None, payloads=[encoded])
    assert job.status_code == 201, job.text
    (task,) = job.json()["tasks"]
    done = http.get(f"/v1/tasks/{task['task_id']}?wait=30", headers=bearer(w.bob)).json()
    assert done["state"] == "completed", done
    result = result_from_dict(done["result"])
    assert isinstance(result, EstimatorResult)
    assert result.values[0] == pytest.approx((1.0, 1.0), abs=1e-6)


BAD_BODIES: dict[str, tuple[dict[str, Any], int, str]] = {
    "malformed qasm": ({"circuits": [BROKEN]}, 422, "line 6, column"),
    "unknown format": ({"circuits": ["hello"]}, 422, "unknown format"),
    "no measurement": (
        {"circuits": [BELL.replace("measure q -> c;", "").replace("creg c[2];", "")]},
        422,
        "measures nothing",
    ),
    "unknown resource": ({"resource": "nope"}, 404, "unknown resource 'nope'"),
    "too wide": ({"resource": "emu", "circuits": [BELL.replace("[2]", "[9]")]}, 422, "qubits"),
    "too many shots": ({"shots": 10**8}, 422, "exceeds the maximum"),
    "missing shots": ({"shots": None}, 422, "shots is required"),
    "zero shots": ({"shots": 0}, 422, "body.shots"),
    "both sources": ({"payloads": ["AAAA"]}, 422, "not both"),
    "bad base64": ({"circuits": None, "shots": None, "payloads": ["%%%"]}, 422, "base64"),
    "bad payload": ({"circuits": None, "shots": None, "payloads": ["AAAA"]}, 422, "payload 0"),
    "bad qpy": ({"circuits": ["UUlTS0lUAAAA"]}, 422, "QPY"),
    "unknown field": ({"shot": 5}, 422, "shot"),
    "bad name": ({"account": "a b"}, 422, "body.account"),
    "huge priority": ({"priority": 10**30}, 422, "body.priority"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_submissions_are_clear_problems(world: tuple[World, TestClient], case: str) -> None:
    w, http = world
    changes, status, fragment = BAD_BODIES[case]
    body: dict[str, Any] = {"resource": "aer", "circuits": [BELL], "shots": 100} | changes
    body = {k: v for k, v in body.items() if v is not None}
    problem = assert_problem(http.post("/v1/jobs", json=body, headers=bearer(w.alice)), status)
    assert fragment in problem["detail"]
    if case == "malformed qasm":
        assert (problem["line"], problem["format"]) == (6, "OpenQASM 2")
        assert problem["column"] >= 1
    assert submit(http, w.alice).status_code == 201  # still serving good requests
    assert w.broker.store.list_jobs(user="alice")[0].state in ("queued", "running", "completed")


def test_garbage_json_and_wrong_types(world: tuple[World, TestClient]) -> None:
    w, http = world
    headers = bearer(w.alice) | {"content-type": "application/json"}
    for raw in (b"{not json", b"[]", b"null", b'{"resource": 5}', b"\xff\xfe"):
        problem = assert_problem(http.post("/v1/jobs", content=raw, headers=headers), 422)
        assert problem["errors"]
        assert submit(http, w.alice).status_code == 201
    assert_problem(http.get("/v1/jobs?limit=0", headers=bearer(w.alice)), 422)
    assert_problem(http.get("/v1/tasks/x?wait=nan", headers=bearer(w.alice)), 422)


def test_oversized_bodies_are_413(world: tuple[World, TestClient]) -> None:
    w, http = world
    huge = b'{"circuits": ["' + b"x" * MAX_PAYLOAD_BYTES + b'"]}'
    response = http.post("/v1/jobs", content=huge, headers=bearer(w.alice))
    assert "limit is" in assert_problem(response, 413)["detail"]
    still_serves(http, w.alice)
    # No Content-Length (chunked): the guard counts what actually arrives.
    with TestClient(create_app(w.broker, max_body_bytes=1000)) as small:

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b"x" * 100

        response = small.post("/v1/jobs", content=chunks(), headers=bearer(w.alice))
        assert "more than 1000 bytes" in assert_problem(response, 413)["detail"]
        assert submit(small, w.alice).status_code == 201


def test_users_see_and_cancel_only_their_own_jobs(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    job = submit(http, w.alice).json()
    job_id, task_id = job["job_id"], job["tasks"][0]["task_id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/results"),
        ("GET", f"/v1/tasks/{task_id}"),
    ):
        hidden = assert_problem(http.request(method, path, headers=bearer(w.bob)), 404)
        missing = assert_problem(
            http.request(method, path[:-4] + "beef", headers=bearer(w.bob)), 404
        )
        assert hidden["type"] == missing["type"]  # existence is not leaked
    assert http.get("/v1/jobs", headers=bearer(w.bob)).json() == []
    assert [j["job_id"] for j in http.get("/v1/jobs", headers=bearer(w.admin)).json()] == [job_id]
    assert http.delete(f"/v1/jobs/{job_id}", headers=bearer(w.alice)).status_code == 200
    assert_problem(submit(http, w.alice, user="bob"), 403)
    assert_problem(submit(http, w.alice, account="phys"), 403)
    assert_problem(submit(http, w.alice, centre="north"), 403)
    assert_problem(submit(http, w.alice, priority=5), 403)
    assert submit(http, w.admin, user="carl", account="phys", priority=5).status_code == 201


def test_centre_tokens_act_for_their_own_centre_only(world: tuple[World, TestClient]) -> None:
    w, http = world
    job = submit(http, w.north, user="carol").json()
    assert (job["user"], job["account"], job["centre"]) == ("carol", "north-acc", "north")
    assert http.get(f"/v1/jobs/{job['job_id']}", headers=bearer(w.north)).status_code == 200
    assert_problem(http.get(f"/v1/jobs/{job['job_id']}", headers=bearer(w.south)), 404)
    assert_problem(http.delete(f"/v1/jobs/{job['job_id']}", headers=bearer(w.south)), 404)
    assert [j["user"] for j in http.get("/v1/jobs", headers=bearer(w.north)).json()] == ["carol"]
    assert http.get("/v1/jobs", headers=bearer(w.south)).json() == []
    assert_problem(submit(http, w.south, user="carol", account="north-acc"), 403)
    assert_problem(submit(http, w.north, user="carol", centre="south"), 403)
    assert http.delete(f"/v1/jobs/{job['job_id']}", headers=bearer(w.north)).status_code == 200


# -- sessions ---------------------------------------------------------------------------


def test_sessions_and_session_tasks_over_rest(world: tuple[World, TestClient]) -> None:
    w, http = world
    opened = http.post(
        "/v1/sessions",
        json={"resource": "aer", "user": "bob", "account": "phys", "duration_seconds": 60,
              "slurm_job_id": "42"},
        headers=bearer(w.admin),
    )  # fmt: skip
    assert opened.status_code == 201, opened.text
    session = opened.json()
    sid, token = session["session_id"], session["token"]
    assert token.startswith("qhpc_") and session["slurm_job_id"] == "42"
    created = http.post(f"/v1/sessions/{sid}/tasks", json={"circuits": [BELL], "shots": 50},
                        headers=bearer(token))  # fmt: skip
    assert created.status_code == 201, created.text
    task_id = created.json()["task_id"]
    assert created.headers["location"] == f"/v1/tasks/{task_id}"
    done = http.get(f"/v1/tasks/{task_id}?wait=30", headers=bearer(token)).json()
    assert done["state"] == "completed" and done["session_id"] == sid
    assert sum(done["result"]["circuits"][0]["counts"].values()) == 50
    # scope of the session token and of others
    other = http.post("/v1/sessions", json={"resource": "aer", "duration_seconds": 60},
                      headers=bearer(w.alice)).json()  # fmt: skip
    task_body = {"circuits": [BELL], "shots": 5}
    assert_problem(http.post(f"/v1/sessions/{other['session_id']}/tasks", json=task_body,
                             headers=bearer(token)), 403)  # fmt: skip
    assert_problem(http.post(f"/v1/sessions/{sid}/tasks", json=task_body,
                             headers=bearer(w.bob)), 403)  # fmt: skip
    assert_problem(http.get("/v1/jobs", headers=bearer(token)), 403)
    assert_problem(submit(http, token), 403)
    foreign = submit(http, w.bob).json()["tasks"][0]["task_id"]
    assert_problem(http.get(f"/v1/tasks/{foreign}", headers=bearer(token)), 404)
    assert http.get(f"/v1/tasks/{task_id}", headers=bearer(w.bob)).status_code == 200
    assert_problem(http.get(f"/v1/tasks/{task_id}", headers=bearer(w.alice)), 404)
    # who sees which session
    assert [s["session_id"] for s in http.get("/v1/sessions", headers=bearer(w.bob)).json()] == [
        sid
    ]
    assert [s["session_id"] for s in http.get("/v1/sessions", headers=bearer(token)).json()] == [
        sid
    ]
    assert len(http.get("/v1/sessions", headers=bearer(w.admin)).json()) == 2
    assert_problem(http.get(f"/v1/sessions/{sid}", headers=bearer(w.alice)), 404)
    # opening rules
    assert_problem(http.post("/v1/sessions", json={"resource": "aer", "user": "bob",
                   "duration_seconds": 5}, headers=bearer(w.alice)), 403)  # fmt: skip
    assert_problem(http.post("/v1/sessions", json={"resource": "aer", "deadline": 1.0},
                             headers=bearer(w.alice)), 409)  # fmt: skip
    assert_problem(http.post("/v1/sessions", json={"resource": "aer"},
                             headers=bearer(w.alice)), 422)  # fmt: skip
    # closing
    closed = http.delete(f"/v1/sessions/{sid}", headers=bearer(w.bob))
    assert closed.status_code == 200 and closed.json()["closed_at"] is not None
    assert_problem(http.delete(f"/v1/sessions/{other['session_id']}", headers=bearer(w.bob)), 404)
    assert (
        "revoked" in assert_problem(http.get("/v1/sessions", headers=bearer(token)), 401)["detail"]
    )
    assert_problem(http.delete(f"/v1/sessions/{sid}", headers=bearer(w.admin)), 409)
    assert len(http.get("/v1/sessions?include_closed=true", headers=bearer(w.admin)).json()) == 2


def test_only_admin_and_centre_tokens_tie_a_session_to_a_slurm_job(
    world: tuple[World, TestClient],
) -> None:
    # EpilogSlurmctld books every session of a Slurm job into that job's AdminComment:
    # a user naming someone else's job id would forge its QPU usage.
    w, http = world
    body = {"resource": "aer", "duration_seconds": 60, "slurm_job_id": "77"}
    refused = assert_problem(http.post("/v1/sessions", json=body, headers=bearer(w.alice)), 403)
    assert "slurm_job_id" in refused["detail"] and "admin or centre" in refused["detail"]
    by_admin = http.post("/v1/sessions", json=body | {"user": "bob", "account": "phys"},
                         headers=bearer(w.admin))  # fmt: skip
    by_centre = http.post("/v1/sessions", json=body | {"user": "nina", "account": "north-acc"},
                          headers=bearer(w.north))  # fmt: skip
    assert by_admin.status_code == by_centre.status_code == 201, (by_admin.text, by_centre.text)
    assert by_centre.json()["centre"] == "north"
    plain = http.post("/v1/sessions", json={"resource": "aer", "duration_seconds": 60},
                      headers=bearer(w.alice))  # fmt: skip
    assert plain.status_code == 201
    # the filter the hooks use, within what each token may see anyway
    listed = http.get("/v1/sessions?slurm_job_id=77", headers=bearer(w.admin)).json()
    assert {s["session_id"] for s in listed} == {
        by_admin.json()["session_id"], by_centre.json()["session_id"]
    }  # fmt: skip
    north = http.get("/v1/sessions?slurm_job_id=77", headers=bearer(w.north)).json()
    assert [s["session_id"] for s in north] == [by_centre.json()["session_id"]]
    assert http.get("/v1/sessions?slurm_job_id=78", headers=bearer(w.admin)).json() == []
    assert len(http.get("/v1/sessions", headers=bearer(w.admin)).json()) == 3


def test_exclusive_session_lifecycle_on_an_idle_broker(idle: tuple[World, TestClient]) -> None:
    # Nothing runs: the session's task stays queued until the close cancels it.
    w, http = idle
    body = {"resource": "emu", "user": "bob", "account": "phys", "duration_seconds": 600,
            "mode": "exclusive"}  # fmt: skip
    opened = http.post("/v1/sessions", json=body, headers=bearer(w.admin))
    assert opened.status_code == 201, opened.text
    sid, token = opened.json()["session_id"], opened.json()["token"]
    assert opened.json()["mode"] == "exclusive"
    second = http.post("/v1/sessions", json=body | {"user": "carl"}, headers=bearer(w.admin))
    assert "already held by an exclusive session" in assert_problem(second, 409)["detail"]
    for secret in (w.bob, token, w.admin):
        seen = http.get(f"/v1/sessions/{sid}", headers=bearer(secret))
        assert seen.status_code == 200 and seen.json()["closed_at"] is None
        assert "token" not in seen.json()
    created = http.post(f"/v1/sessions/{sid}/tasks", json={"circuits": [BELL], "shots": 5},
                        headers=bearer(token))  # fmt: skip
    assert created.status_code == 201, created.text
    task_id = created.json()["task_id"]
    queued = http.get(f"/v1/tasks/{task_id}", headers=bearer(token)).json()
    assert (queued["state"], queued["queue_position"]) == ("queued", 1)
    (entry,) = http.get("/v1/resources/emu/queue", headers=bearer(token)).json()["entries"]
    assert entry["mine"] and entry["session_id"] == sid
    session_job = http.get(f"/v1/jobs/{sid}", headers=bearer(w.bob)).json()
    assert (session_job["kind"], session_job["task_count"]) == ("session", 1)
    closed = http.delete(f"/v1/sessions/{sid}", headers=bearer(w.admin))
    assert closed.status_code == 200 and closed.json()["closed_at"] is not None
    assert http.get(f"/v1/tasks/{task_id}", headers=bearer(w.bob)).json()["state"] == "cancelled"
    assert http.get(f"/v1/jobs/{sid}", headers=bearer(w.bob)).json()["state"] != "running"
    assert_problem(http.get(f"/v1/tasks/{task_id}", headers=bearer(token)), 401)
    # the resource is free for the next exclusive holder
    assert http.post("/v1/sessions", json=body, headers=bearer(w.admin)).status_code == 201


# -- reservations, accounts, accounting, tokens ---------------------------------------


def test_reservations(world: tuple[World, TestClient]) -> None:
    w, http = world
    now = time.time()
    body = {"resource": "emu", "account": "chem", "start": now + 100, "end": now + 200}
    created = http.post("/v1/reservations", json=body, headers=bearer(w.admin))
    assert created.status_code == 201, created.text
    rid = created.json()["reservation_id"]
    assert created.json()["created_by"] == "root"
    assert_problem(http.post("/v1/reservations", json=body | {"start": now + 150, "end": now + 250},
                             headers=bearer(w.admin)), 409)  # fmt: skip
    assert_problem(http.post("/v1/reservations", json=body, headers=bearer(w.alice)), 403)
    assert_problem(http.post("/v1/reservations", json=body | {"end": now},
                             headers=bearer(w.admin)), 422)  # fmt: skip
    assert_problem(http.post("/v1/reservations", json=body | {"resource": "nope"},
                             headers=bearer(w.admin)), 404)  # fmt: skip
    listed = http.get("/v1/reservations?resource=emu", headers=bearer(w.bob)).json()
    assert [r["reservation_id"] for r in listed] == [rid]
    assert_problem(http.delete(f"/v1/reservations/{rid}", headers=bearer(w.bob)), 403)
    assert http.delete(f"/v1/reservations/{rid}", headers=bearer(w.admin)).status_code == 204
    assert_problem(http.delete(f"/v1/reservations/{rid}", headers=bearer(w.admin)), 404)


def test_accounts(world: tuple[World, TestClient]) -> None:
    w, http = world
    put = http.put("/v1/accounts/bio", json={"shares": 2.5, "centre": "north"},
                   headers=bearer(w.admin))  # fmt: skip
    assert put.json() == {"name": "bio", "shares": 2.5, "centre": "north"}
    assert_problem(http.put("/v1/accounts/bio", json={"shares": 9}, headers=bearer(w.alice)), 403)
    assert_problem(http.put("/v1/accounts/bio", json={"shares": -1}, headers=bearer(w.admin)), 422)
    names = [a["name"] for a in http.get("/v1/accounts", headers=bearer(w.admin)).json()]
    assert names == ["bio", "chem", "north-acc", "phys", "south-acc"]
    assert [a["name"] for a in http.get("/v1/accounts", headers=bearer(w.alice)).json()] == ["chem"]
    north = [a["name"] for a in http.get("/v1/accounts", headers=bearer(w.north)).json()]
    assert north == ["bio", "north-acc"]
    assert http.get("/v1/accounts/chem", headers=bearer(w.alice)).json()["shares"] == 1.0
    assert_problem(http.get("/v1/accounts/phys", headers=bearer(w.alice)), 404)


def test_accounting_rows_follow_the_token(world: tuple[World, TestClient]) -> None:
    w, http = world
    for secret in (w.alice, w.bob, w.north):
        job = submit(http, secret, user="dora" if secret == w.north else None).json()
        task_id = job["tasks"][0]["task_id"]
        assert http.get(f"/v1/tasks/{task_id}?wait=30", headers=bearer(secret)).json()["state"] == (
            "completed"
        )

    def groups(secret: str, query: str) -> list[Any]:
        answer = http.get(f"/v1/accounting?{query}", headers=bearer(secret))
        assert answer.status_code == 200, answer.text
        return [(r["group"], r["tasks"], r["shots"]) for r in answer.json()["rows"]]

    assert groups(w.admin, "group_by=user") == [
        ("alice", 1, 100),
        ("bob", 1, 100),
        ("dora", 1, 100),
    ]
    assert groups(w.admin, "group_by=centre") == [("north", 1, 100), (None, 2, 200)]
    assert groups(w.alice, "group_by=user") == [("alice", 1, 100)]
    assert groups(w.alice, "group_by=account") == [("chem", 1, 100)]
    assert groups(w.north, "group_by=account") == [("north-acc", 1, 100)]
    assert groups(w.admin, f"group_by=resource&since={time.time() + 10}") == []
    assert_problem(http.get("/v1/accounting?group_by=planet", headers=bearer(w.admin)), 422)


def test_tokens(world: tuple[World, TestClient]) -> None:
    w, http = world
    made = http.post("/v1/tokens", json={"role": "user", "subject": "zoe", "account": "chem",
                     "ttl_seconds": 3600}, headers=bearer(w.admin))  # fmt: skip
    assert made.status_code == 201, made.text
    secret, token_id = made.json()["token"], made.json()["token_id"]
    assert made.json()["expires_at"] == pytest.approx(time.time() + 3600, abs=60)
    assert http.get("/v1/jobs", headers=bearer(secret)).status_code == 200
    listed = http.get("/v1/tokens", headers=bearer(w.admin))
    assert {t["subject"] for t in listed.json()} >= {"root", "alice", "zoe"}
    for token in listed.json():
        assert "token_hash" not in token and "token" not in token
    assert secret not in listed.text and w.alice not in listed.text
    for stored in w.broker.store.list_tokens():
        assert stored.token_hash not in listed.text
    assert_problem(http.get("/v1/tokens", headers=bearer(w.alice)), 403)
    assert_problem(http.post("/v1/tokens", json={"role": "user", "subject": "x"},
                             headers=bearer(w.alice)), 403)  # fmt: skip
    assert_problem(http.post("/v1/tokens", json={"role": "session", "subject": "x"},
                             headers=bearer(w.admin)), 422)  # fmt: skip
    assert_problem(http.post("/v1/tokens", json={"role": "centre", "subject": "x"},
                             headers=bearer(w.admin)), 422)  # fmt: skip
    assert_problem(http.delete(f"/v1/tokens/{token_id}", headers=bearer(w.alice)), 403)
    assert http.delete(f"/v1/tokens/{token_id}", headers=bearer(secret)).status_code == 204
    assert_problem(http.get("/v1/jobs", headers=bearer(secret)), 401)
    assert_problem(http.delete("/v1/tokens/nope", headers=bearer(w.admin)), 404)
    assert "zoe" not in {
        t["subject"] for t in http.get("/v1/tokens", headers=bearer(w.admin)).json()
    }
    assert "zoe" in {
        t["subject"]
        for t in http.get("/v1/tokens?include_revoked=true", headers=bearer(w.admin)).json()
    }


# -- the Python client ------------------------------------------------------------------


def test_client_in_process(world: tuple[World, TestClient], bell: QuantumCircuit) -> None:
    w, http = world
    http.headers.update(bearer(w.alice))
    client = Client(http, "http://testserver")
    assert [r["name"] for r in client.resources()] == ["aer", "emu"]
    assert client.resource("emu")["target"]["num_qubits"] == 5
    job = client.submit("aer", [bell, BELL], shots=64, name="pair")
    final = client.wait(job["job_id"], timeout=30)
    assert final["state"] == "completed"
    (result,) = client.results(job["job_id"])
    assert isinstance(result, SamplerResult)
    assert [c.shots for c in result.circuits] == [64, 64]
    assert client.jobs(state="completed")[0]["job_id"] == job["job_id"]
    assert client.accounting("user")[0]["group"] == "alice"
    payload = SamplerTask((bell,), shots=8)
    assert client.submit_payloads("emu", [payload])["task_count"] == 1
    with pytest.raises(ClientError) as caught:
        client.submit("nope", [BELL], shots=1)
    assert caught.value.status == 404 and "unknown resource" in caught.value.detail
    with pytest.raises(ClientError) as caught:
        client.submit("aer", [BROKEN], shots=1)
    assert caught.value.status == 422 and "line 6" in str(caught.value)


def test_client_cannot_reach_broker() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(ClientError, match=f"cannot reach broker at http://127.0.0.1:{port}"):
        connect(f"http://127.0.0.1:{port}", "qhpc_x", timeout=2)


# -- the real server process ------------------------------------------------------------


@pytest.mark.slow
def test_real_server_process(tmp_path: Path, store_url: str, bell: QuantumCircuit) -> None:
    config = tmp_path / "resources.toml"
    config.write_text('[resources.aer]\ntype = "aer"\nseed = 5\n')
    with Store.open(store_url) as store:  # tokens made before the server starts: it must read them
        access = Access(store, time.time)
        _, admin = access.issue(Role.ADMIN, "root")
        _, user = access.issue(Role.USER, "alice", account="chem")
    port = free_port()
    env = dict(os.environ)
    # The child must import this very qhpc, whatever the venv's editable install points at.
    src = str(Path(qhpc.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "qhpc.api", "--db", store_url, "--config", str(config),
               "--port", str(port), "--policy", "fifo"]  # fmt: skip
    log = tmp_path / "server.log"  # a file, not a pipe: a chatty server can never block on it
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=sink, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = connect(url, user, timeout=10)
                break
            except ClientError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "server did not come up in 60 s"
                time.sleep(0.2)
        with client:
            job = client.submit("aer", [bell], shots=200)
            assert client.wait(job["job_id"], timeout=60)["state"] == "completed"
            (result,) = client.results(job["job_id"])
            assert isinstance(result, SamplerResult)
            assert sum(result.circuits[0].counts.values()) == 200
            with pytest.raises(ClientError) as caught:
                client.tokens()
            assert caught.value.status == 403
        with connect(url, admin) as root:
            assert root.accounting("user")[0]["tasks"] == 1
        process.terminate()  # SIGTERM: uvicorn shuts down, then the broker stops
        assert process.wait(timeout=20) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


# -- fuzzing the published OpenAPI document ---------------------------------------------


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    regs = registry()
    with Store.open(tmp_path_factory.mktemp("fuzz") / "fuzz.db") as store:
        broker = Broker(store, regs, BrokerConfig(policy="fifo"))
        broker.start()
        try:
            World(broker)
            _, admin = broker.access.issue(Role.ADMIN, "fuzzer")
            yield create_app(broker), admin
        finally:
            broker.stop()
    regs.close()


if schemathesis is None:

    @pytest.mark.skip(reason="schemathesis is not installed (pip install -e '.[dev]')")
    def test_fuzz_never_a_server_error() -> None:
        pass

else:

    def _published_schema() -> Any:
        # The document does not depend on broker state, so an idle in-memory broker is
        # enough to load it at collection time (schemathesis' lazy fixture loader does not
        # work with this pytest); the cases then run against the live app of fuzz_world.
        with Store.open(":memory:") as store:
            spec = openapi_json(create_app(Broker(store, registry())))
        return schemathesis.openapi.from_dict(spec)

    fuzzed = _published_schema()

    @pytest.mark.slow
    @fuzzed.parametrize()
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def test_fuzz_never_a_server_error(case: Any, fuzz_world: tuple[FastAPI, str]) -> None:
        # An admin token reaches every handler; the only property checked is "no 5xx".
        app, admin = fuzz_world
        case.call_and_validate(headers=bearer(admin), checks=[not_a_server_error], app=app)
