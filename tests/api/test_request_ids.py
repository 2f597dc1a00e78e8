"""X-Request-ID over the API, in process: accepted when plain, replaced when not, echoed
always, and carried by the log records the request causes (api/requestids.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from helpers import LogCapture
from qhpc.api import create_app
from qhpc.api.requestids import request_id
from qhpc.broker import Broker
from qhpc.resources import ResourceRegistry, ResourceSpec
from qhpc.security import Role
from qhpc.store import Store

BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Broker, str]]:
    store = Store.open(tmp_path / "ids.db")
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 3})])
    broker = Broker(store, registry)
    _, alice = broker.access.issue(Role.USER, "alice", account="chem")
    broker.start()
    try:
        with TestClient(create_app(broker), raise_server_exceptions=False) as client:
            yield client, broker, alice
    finally:
        broker.stop()
        registry.close()
        store.close()


@pytest.mark.parametrize("good", ["abc-123", "A.b_c-9", "x" * 64, "0"])
def test_a_plain_short_id_is_kept(good: str) -> None:
    assert request_id([(b"x-request-id", good.encode())]) == good


@pytest.mark.parametrize(
    "bad",
    [b"x" * 65, b"", b"a b", b"a\nb", b'a"b', b"a\x00b", b"id;drop", "é".encode(), b"qhpc_" * 20],
)
def test_anything_else_is_replaced(bad: bytes) -> None:
    made = request_id([(b"x-request-id", bad), (b"x-request-id", b"second")])
    assert made.encode() != bad and made != "second"
    assert len(made) == 32 and made.isalnum()


def test_a_request_without_id_gets_a_fresh_one(api: tuple[TestClient, Broker, str]) -> None:
    client, _, _ = api
    first = client.get("/v1/health").headers["x-request-id"]
    second = client.get("/v1/health").headers["x-request-id"]
    assert len(first) == 32 and first != second


def test_the_id_is_echoed_or_replaced(api: tuple[TestClient, Broker, str]) -> None:
    client, broker, _ = api
    assert (
        client.get("/v1/health", headers={"X-Request-ID": "mine.1"}).headers["x-request-id"]
        == "mine.1"
    )
    answer = client.get("/v1/health", headers={"X-Request-ID": "y" * 100})
    assert answer.status_code == 200 and answer.headers["x-request-id"] != "y" * 100
    # problems carry it too: 404, 401, and the body guard's 413 outside the routes
    assert (
        client.get("/v1/nope", headers={"X-Request-ID": "p-404"}).headers["x-request-id"] == "p-404"
    )
    assert (
        client.get("/v1/jobs", headers={"X-Request-ID": "p-401"}).headers["x-request-id"] == "p-401"
    )
    body = b"x" * (broker.config.max_payload_bytes + 1)
    huge = client.post("/v1/jobs", content=body, headers={"X-Request-ID": "p-413"})
    assert huge.status_code == 413 and huge.headers["x-request-id"] == "p-413"


def test_an_unexpected_error_logs_and_answers_with_the_id(
    api: tuple[TestClient, Broker, str],
    qhpc_log: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, broker, alice = api

    def explode(name: str) -> int:
        raise RuntimeError("internal detail")

    monkeypatch.setattr(broker, "queue_length", explode)
    answer = client.get(
        "/v1/resources", headers={"Authorization": f"Bearer {alice}", "X-Request-ID": "boom-1"}
    )
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "boom-1"
    (error,) = [r for r in qhpc_log.records() if r["level"] == "ERROR"]
    assert error["request_id"] == "boom-1" and "RuntimeError: internal detail" in error["exc"]
    assert alice not in qhpc_log.stream.getvalue()


def test_a_submission_is_logged_with_the_request_id_and_who_sent_it(
    api: tuple[TestClient, Broker, str], qhpc_log: LogCapture
) -> None:
    client, broker, alice = api
    sent = client.post(
        "/v1/jobs",
        json={"resource": "aer", "circuits": [BELL], "shots": 10},
        headers={"Authorization": f"Bearer {alice}", "X-Request-ID": "sub-1"},
    )
    assert sent.status_code == 201, sent.text
    assert broker.wait_task(broker.tasks_of_job(sent.json()["job_id"])[0].task_id, 60)
    (submitted,) = qhpc_log.records("job_submitted")
    assert (submitted["request_id"], submitted["user"], submitted["job_id"]) == (
        "sub-1",
        "alice",
        sent.json()["job_id"],
    )
    assert alice not in qhpc_log.stream.getvalue()
