"""``POST /v1/resources/{name}/drain`` and ``/resume``, and ``qhpc resources drain``/``resume``
against a real ``qhpc serve``: admin only, bad input refused with nothing changed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_api import World, assert_problem, bearer, make_world, submit

from qhpc.client import Client


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, TestClient]]:
    yield from make_world(str(tmp_path / "drain.db"), start=True)


def drain(http: TestClient, secret: str, name: str = "aer", **body: Any) -> Any:
    body.setdefault("reason", "cryostat warm-up")
    return http.post(f"/v1/resources/{name}/drain", json=body, headers=bearer(secret))


def test_drain_shows_maintenance_everywhere_then_resume_runs_the_queue(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    answer = drain(http, w.admin, for_seconds=3600)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["resource"] == "aer" and body["reason"] == "cryostat warm-up"
    assert body["drained_by"] == "root" and body["until"] == pytest.approx(time.time() + 3600, 5)
    for who in (w.alice, w.admin):  # every user sees the state and the reason
        summary = http.get("/v1/resources/aer", headers=bearer(who)).json()
        assert summary["state"] == "maintenance"
        assert summary["reason"] == "drained: cryostat warm-up"
        assert summary["until"] == pytest.approx(body["until"])
    listed = {r["name"]: r for r in http.get("/v1/resources", headers=bearer(w.bob)).json()}
    assert listed["aer"]["state"] == "maintenance" and listed["emu"]["state"] != "maintenance"
    job = submit(http, w.alice, shots=10).json()
    queue = http.get("/v1/resources/aer/queue", headers=bearer(w.alice)).json()
    assert queue["entries"][0]["eta_seconds"] == pytest.approx(3600, abs=5)
    shown = http.get(f"/v1/jobs/{job['job_id']}", headers=bearer(w.alice)).json()
    assert shown["tasks"][0]["eta_seconds"] == pytest.approx(3600, abs=5)
    assert shown["state"] == "queued"
    resumed = http.post("/v1/resources/aer/resume", headers=bearer(w.admin))
    assert resumed.status_code == 200 and resumed.json()["reason"] == "cryostat warm-up"
    task = job["tasks"][0]["task_id"]
    assert w.broker.wait_task(task, timeout=60).state == "completed"
    assert http.get("/v1/resources/aer", headers=bearer(w.alice)).json()["state"] == "idle"


def test_an_open_ended_drain_has_no_eta(world: tuple[World, TestClient]) -> None:
    w, http = world
    assert drain(http, w.admin, reason="until further notice").json()["until"] is None
    submit(http, w.alice, shots=10)
    entry = http.get("/v1/resources/aer/queue", headers=bearer(w.alice)).json()["entries"][0]
    assert entry["eta_seconds"] is None


def test_only_admins_drain_and_resume(world: tuple[World, TestClient]) -> None:
    w, http = world
    for who in (w.alice, w.north):
        assert_problem(drain(http, who), 403)
        assert_problem(http.post("/v1/resources/aer/resume", headers=bearer(who)), 403)
    assert_problem(http.post("/v1/resources/aer/drain", json={"reason": "x"}), 401)
    assert w.broker.store.list_drains() == []


@pytest.mark.parametrize(
    ("name", "body", "status", "detail"),
    [
        ("nope", {}, 404, "nope"),
        ("aer", {"until": 1000.0}, 422, "in the past"),
        ("aer", {"until": 4e9, "for_seconds": 10}, 422, "not both"),
        ("aer", {"reason": ""}, 422, "reason"),
        ("aer", {"reason": "x" * 501}, 422, "reason"),
        ("aer", {"for_seconds": -5}, 422, "for_seconds"),
        ("aer", {"for_seconds": "10"}, 422, "for_seconds"),
        ("aer", {"now": "yes"}, 422, "now"),
        ("aer", {"until": None, "extra": 1}, 422, "extra"),
        ("aer", {"reason": "a\nb"}, 422, "one line"),
    ],
)
def test_bad_drains_get_a_clear_4xx_and_change_nothing(
    world: tuple[World, TestClient], name: str, body: dict[str, Any], status: int, detail: str
) -> None:
    w, http = world
    problem = assert_problem(drain(http, w.admin, name=name, **body), status)
    assert detail in str(problem)
    assert w.broker.store.list_drains() == []
    assert http.get("/v1/resources/aer", headers=bearer(w.alice)).json()["state"] == "idle"
    assert submit(http, w.alice, shots=10).status_code == 201  # still serving


def test_resuming_what_is_not_drained_is_a_conflict(world: tuple[World, TestClient]) -> None:
    w, http = world
    problem = assert_problem(http.post("/v1/resources/aer/resume", headers=bearer(w.admin)), 409)
    assert "not drained" in problem["detail"]
    assert_problem(http.post("/v1/resources/nope/resume", headers=bearer(w.admin)), 404)


def test_the_client_drains_and_resumes(world: tuple[World, TestClient]) -> None:
    w, http = world
    client = Client(http, "http://testserver")
    http.headers["Authorization"] = f"Bearer {w.admin}"
    until = time.time() + 120
    assert client.drain("emu", "tuning", until=until, now=True)["until"] == pytest.approx(until)
    assert client.resource("emu")["state"] == "maintenance"
    assert client.resume("emu")["resource"] == "emu"
    assert client.resource("emu")["state"] == "idle"
