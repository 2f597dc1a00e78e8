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
