"""A user name is unique only within its centre: the local ``alice`` and the ``alice`` a
federated centre submits for never see each other's work, in the job list or a queue;
a centre sees its own centre's work only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_api import World, bearer, make_world, submit


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[tuple[World, TestClient]]:
    """A broker that is not started: submitted tasks stay queued."""
    yield from make_world(str(tmp_path / "fed.db"), start=False)


def test_namesakes_of_other_centres_stay_apart(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    local = submit(http, w.alice, shots=10).json()["job_id"]
    north = submit(http, w.north, user="alice", account="north-acc", shots=10).json()["job_id"]
    south = submit(http, w.south, user="carol", account="south-acc", shots=10).json()["job_id"]

    def listed(secret: str) -> set[str]:
        return {j["job_id"] for j in http.get("/v1/jobs", headers=bearer(secret)).json()}

    assert listed(w.alice) == {local}
    assert listed(w.north) == {north}
    assert listed(w.south) == {south}
    assert listed(w.admin) == {local, north, south}
    assert http.get(f"/v1/jobs/{north}", headers=bearer(w.alice)).status_code == 404

    def queue(secret: str) -> list[tuple[str | None, bool]]:
        entries = http.get("/v1/resources/aer/queue", headers=bearer(secret)).json()["entries"]
        return [(e["job_id"], e["mine"]) for e in entries]

    assert queue(w.alice) == [(local, True), (None, False), (None, False)]
    assert queue(w.north) == [(None, False), (north, False), (None, False)]
    assert queue(w.south) == [(None, False), (None, False), (south, False)]
    assert [job for job, _ in queue(w.admin)] == [local, north, south]


def test_a_centre_ties_its_own_open_session_to_a_slurm_job_once(
    idle: tuple[World, TestClient],
) -> None:
    from test_api import assert_problem

    w, http = idle
    opened = http.post(
        "/v1/sessions", headers=bearer(w.north),
        json={"resource": "aer", "user": "alice", "account": "north-acc", "duration_seconds": 60},
    ).json()  # fmt: skip
    sid = opened["session_id"]
    path = f"/v1/sessions/{sid}"
    # only admin and centre tokens, only the session's own centre, only a job id
    assert_problem(http.patch(path, json={"slurm_job_id": "41"}, headers=bearer(w.alice)), 404)
    assert_problem(http.patch(path, json={"slurm_job_id": "41"}, headers=bearer(w.south)), 404)
    assert_problem(
        http.patch(path, json={"slurm_job_id": "41"}, headers=bearer(opened["token"])), 403
    )
    for bad in ({"slurm_job_id": "4;1"}, {"slurm_job_id": 41}, {}, {"slurm_job_id": "1", "x": 1}):
        assert_problem(http.patch(path, json=bad, headers=bearer(w.north)), 422)
    assert_problem(http.patch("/v1/sessions/nope", json={"slurm_job_id": "41"},
                              headers=bearer(w.north)), 404)  # fmt: skip
    assert http.get(path, headers=bearer(w.north)).json()["slurm_job_id"] is None
    tied = http.patch(path, json={"slurm_job_id": "41"}, headers=bearer(w.north))
    assert tied.status_code == 200 and tied.json()["slurm_job_id"] == "41"
    listed = http.get("/v1/sessions?slurm_job_id=41", headers=bearer(w.admin)).json()
    assert [s["session_id"] for s in listed] == [sid]
    again = assert_problem(
        http.patch(path, json={"slurm_job_id": "42"}, headers=bearer(w.north)), 409
    )
    assert "belongs to Slurm job 41" in again["detail"]
    http.delete(path, headers=bearer(w.north))
    other = http.post(
        "/v1/sessions", headers=bearer(w.north),
        json={"resource": "aer", "user": "bob", "account": "north-acc", "duration_seconds": 60},
    ).json()  # fmt: skip
    http.delete(f"/v1/sessions/{other['session_id']}", headers=bearer(w.north))
    closed = http.patch(f"/v1/sessions/{other['session_id']}", json={"slurm_job_id": "43"},
                        headers=bearer(w.north))  # fmt: skip
    assert "is closed" in assert_problem(closed, 409)["detail"]
