"""``GET /v1/resources/{name}/admission``: the admission controller's answer over REST —
admin and centre tokens only, plain numbers for the Slurm feedback agent, bad input
refused with nothing changed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from qiskit.circuit import QuantumCircuit
from test_api import World, assert_problem, bearer, make_world, still_serves

from qhpc.broker import MAX_LICENCES, AdmissionView
from qhpc.resources import SamplerTask
from qhpc.security import Role


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[World, TestClient]]:
    yield from make_world(str(tmp_path / "admission.db"), start=True)


def open_session(w: World, centre: str | None = None) -> str:
    record, _ = w.broker.open_session(
        user="carol", account="chem", resource="aer", deadline=time.time() + 600, centre=centre
    )
    return record.session_id


def admission(http: TestClient, secret: str, name: str = "aer", query: str = "") -> httpx.Response:
    return http.get(f"/v1/resources/{name}/admission{query}", headers=bearer(secret))


def test_admin_sees_the_open_sessions_their_duty_cycles_and_the_count(
    world: tuple[World, TestClient], bell: QuantumCircuit
) -> None:
    w, http = world
    measured, young = open_session(w), open_session(w)
    for _ in range(w.broker.config.admission.min_tasks):
        w.broker.run_session_task(measured, SamplerTask((bell,), 10))
    answer = admission(http, w.admin)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["resource"] == "aer" and body["open"] == 2
    assert [s["session_id"] for s in body["sessions"]] == [measured, young]
    first, second = body["duty_cycles"]
    assert isinstance(first, float) and 0.0 <= first <= 1.0 and second is None
    assert [s["duty_cycle"] for s in body["sessions"]] == [first, None]
    # the broker's own answer, as plain JSON numbers
    expected = w.broker.admission("aer")
    assert body["admitted"] == expected.admitted
    assert body["licences"] == w.broker.config.admission.licences
    assert body["hold"] == body["licences"] - body["admitted"]
    assert 1 <= body["admitted"] <= body["licences"]
    for key in ("target", "prior", "predicted_latency_ratio", "open_latency_ratio", "at"):
        assert isinstance(body[key], float)


def test_the_licence_total_of_the_request_is_used(world: tuple[World, TestClient]) -> None:
    w, http = world
    body = admission(http, w.admin, query="?licences=1").json()
    assert body["licences"] == 1 and body["admitted"] == 1 and body["hold"] == 0
    body = admission(http, w.admin, query="?licences=12").json()
    controller = w.broker.config.admission.controller()
    assert body["admitted"] == controller.admit(AdmissionView(0.0, 12)).admitted


def test_a_centre_sees_every_figure_but_only_its_own_sessions_ids(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    north, south, local = open_session(w, "north"), open_session(w, "south"), open_session(w)
    body = admission(http, w.north).json()
    assert body["open"] == 3 and len(body["duty_cycles"]) == 3
    assert [s["session_id"] for s in body["sessions"]] == [north, None, None]
    assert south not in str(body) and local not in str(body)
    shown = admission(http, w.admin).json()["sessions"]
    assert [s["session_id"] for s in shown] == [north, south, local]


def test_users_and_sessions_are_refused(world: tuple[World, TestClient]) -> None:
    w, http = world
    sid = open_session(w)
    _, session_secret = w.broker.access.issue(
        Role.SESSION, "carol", account="chem", session_id=sid, resource="aer",
        expires_at=time.time() + 600,
    )  # fmt: skip
    for secret in (w.alice, session_secret):
        body = assert_problem(admission(http, secret), 403)
        assert "admin" in body["detail"] and sid not in body["detail"]
    still_serves(http, w.admin)


def test_no_token_or_a_bad_one_is_401(world: tuple[World, TestClient]) -> None:
    w, http = world
    assert_problem(http.get("/v1/resources/aer/admission"), 401)
    assert_problem(admission(http, "qhpc_not-a-real-token"), 401)
    still_serves(http, w.admin)


def test_an_unknown_resource_is_404_naming_it(world: tuple[World, TestClient]) -> None:
    w, http = world
    body = assert_problem(admission(http, w.admin, name="no-such-qpu"), 404)
    assert "no-such-qpu" in body["detail"]
    still_serves(http, w.admin)


@pytest.mark.parametrize(
    "query", ["?licences=0", "?licences=-2", f"?licences={MAX_LICENCES + 1}", "?licences=four",
              "?licences=1.5", "?licences=1e9"],
)  # fmt: skip
def test_a_bad_licence_total_is_422_naming_it_and_changes_nothing(
    world: tuple[World, TestClient], query: str
) -> None:
    w, http = world
    sid = open_session(w)
    before = admission(http, w.admin).json()
    body = assert_problem(admission(http, w.admin, query=query), 422)
    assert "licences" in str(body)
    after = admission(http, w.admin).json()
    assert [s["session_id"] for s in after["sessions"]] == [sid]
    assert {k: after[k] for k in ("admitted", "open", "licences", "duty_cycles")} == {
        k: before[k] for k in ("admitted", "open", "licences", "duty_cycles")
    }


def test_a_hostile_resource_name_is_refused_without_echoing_it(
    world: tuple[World, TestClient],
) -> None:
    w, http = world
    answer = http.get("/v1/resources/%00%1b[31m/admission", headers=bearer(w.admin))
    assert answer.status_code in (404, 422)
    assert "\x1b" not in answer.text and "\x00" not in answer.text
    still_serves(http, w.admin)
