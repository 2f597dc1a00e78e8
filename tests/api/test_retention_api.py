"""Retention over REST: purged results answer 410 Gone, accounting reads the same.

A broker with a clock the test moves runs real jobs on Aer; the purge is the
broker's own (``Broker.purger``, once directly, once on its schedule). On SQLite and
on PostgreSQL (QHPC_TEST_POSTGRES_URL), like test_api.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from helpers import postgres_schema_url
from qhpc.api import create_app
from qhpc.broker import Broker, BrokerConfig, Retention
from qhpc.resources import ResourceRegistry, ResourceSpec
from qhpc.security import Role
from qhpc.store import (
    ROLLUP_GROUPS,
    AccountRecord,
    JobRecord,
    OutputPiece,
    ProgramRecord,
    Store,
)

BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0], q[1];\nmeasure q -> c;\n"
)
DAY = 86400.0
START = 1_700_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "api.db")
    else:
        yield from postgres_schema_url("qhpc_retention_api")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def run_job(http: TestClient, secret: str) -> str:
    """A two-task job on Aer, to its end; its id."""
    answer = http.post(
        "/v1/jobs",
        json={"resource": "aer", "circuits": [BELL, BELL], "shots": 64, "split_circuits": True},
        headers=bearer(secret),
    )
    assert answer.status_code == 201, answer.text
    job = answer.json()
    for task in job["tasks"]:
        done = http.get(f"/v1/tasks/{task['task_id']}?wait=30", headers=bearer(secret)).json()
        assert done["state"] == "completed", done
    return str(job["job_id"])


def hybrid_job(store: Store, job_id: str, ended: float) -> None:
    """A hybrid job that printed and ended at ``ended`` (written as the broker would)."""
    job = JobRecord(
        job_id=job_id, user="alice", account="chem", centre=None, resource="aer", kind="hybrid",
        priority=0, state="queued", created_at=ended - 60, finished_at=None, session_id=None,
        name=None, task_count=0,
    )  # fmt: skip
    store.create_program(
        job,
        ProgramRecord(job_id, "def main():\n    print('hi')\n", None, "main", "{}", 60.0, None,
                      "queued"),
    )  # fmt: skip
    store.start_program(job_id, "s1", ended - 30)
    store.append_output([OutputPiece(job_id, "stdout", 0, b"hi\n")])
    store.fail_program(job_id, "ended", ended)


def assert_gone(response: httpx.Response, job_id: str) -> None:
    assert response.status_code == 410, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert (body["status"], body["title"], body["type"]) == (410, "Gone", "urn:qhpc:problem:purged")
    assert f"job {job_id} were purged" in body["detail"]
    assert "accounting is kept" in body["detail"]


def accounting(http: TestClient, *secrets: str) -> list[Any]:
    return [
        http.get(f"/v1/accounting?group_by={group}", headers=bearer(secret)).json()
        for secret in secrets
        for group in ROLLUP_GROUPS
    ]


def test_purged_results_are_gone_and_accounting_is_identical(store_url: str) -> None:
    clock = Clock(START)
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 7})])
    retention = Retention(keep_days=30, first_delay=3600)  # the test runs the purge itself
    with Store.open(store_url) as store:
        store.upsert_account(AccountRecord("chem", 1.0, None))
        broker = Broker(store, registry, BrokerConfig(policy="fifo", retention=retention), clock)
        admin = broker.access.issue(Role.ADMIN, "root")[1]
        alice = broker.access.issue(Role.USER, "alice", account="chem")[1]
        broker.start()
        try:
            with TestClient(create_app(broker)) as http:
                old = run_job(http, alice)
                hybrid_job(store, "old-hybrid", START)
                clock.now += 31 * DAY
                recent = run_job(http, alice)
                recent_results = http.get(f"/v1/jobs/{recent}/results", headers=bearer(alice))
                old_job = http.get(f"/v1/jobs/{old}", headers=bearer(alice)).json()
                before = accounting(http, admin, alice)
                by_user = before[ROLLUP_GROUPS.index("user")]["rows"]
                assert [(r["group"], r["tasks"]) for r in by_user] == [("alice", 4)]

                report = broker.purger.run_once()

                assert report is not None and (report.jobs, report.tasks) == (2, 2)
                assert accounting(http, admin, alice) == before
                assert_gone(http.get(f"/v1/jobs/{old}/results", headers=bearer(alice)), old)
                for task in old_job["tasks"]:
                    path = f"/v1/tasks/{task['task_id']}"
                    assert_gone(http.get(path, headers=bearer(alice)), old)
                logs = http.get("/v1/jobs/old-hybrid/logs", headers=bearer(admin))
                assert_gone(logs, "old-hybrid")
                # The job itself, its metadata, stays readable and says when it was purged.
                after = http.get(f"/v1/jobs/{old}", headers=bearer(alice)).json()
                assert after["purged_at"] == clock.now
                assert {**after, "purged_at": None} == old_job
                # Recent work is untouched; someone else's purged job is still a 404.
                same = http.get(f"/v1/jobs/{recent}/results", headers=bearer(alice))
                assert same.status_code == 200 and same.json() == recent_results.json()
                bob = broker.access.issue(Role.USER, "bob", account="chem")[1]
                assert http.get(f"/v1/jobs/{old}/results", headers=bearer(bob)).status_code == 404
                assert http.get("/v1/health").status_code == 200
        finally:
            broker.stop()
    registry.close()


def test_the_broker_purges_on_its_schedule(tmp_path: Path) -> None:
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 7})])
    retention = Retention(keep_days=1, interval=0.2, first_delay=0.05, pause=0.0)
    with Store.open(tmp_path / "s.db") as store:
        now = time.time()
        hybrid_job(store, "two-days-old", now - 2 * DAY)
        hybrid_job(store, "an-hour-old", now - 3600)
        broker = Broker(store, registry, BrokerConfig(retention=retention))
        broker.start()
        try:
            deadline = time.monotonic() + 30
            while store.get_job("two-days-old").purged_at is None:
                assert time.monotonic() < deadline, "the schedule never purged"
                time.sleep(0.05)
        finally:
            broker.stop()
        assert store.get_program("two-days-old").source is None
        assert store.get_job("an-hour-old").purged_at is None
        assert store.read_output("an-hour-old", "stdout") == (b"hi\n", 3)
        assert broker.purger.last is not None and broker.purger.last_at is not None
    registry.close()


def test_retention_settings_are_checked() -> None:
    for bad in (
        {"keep_days": 0}, {"keep_days": -1}, {"keep_days": float("inf")},
        {"keep_days": float("nan")}, {"interval": 0}, {"interval": float("nan")},
        {"pause": -1}, {"max_jobs": 0}, {"max_tasks": 0},
    ):  # fmt: skip
        with pytest.raises(ValueError, match=r"days|seconds|at least one"):
            Retention(**bad)
    assert Retention().cutoff(100.0) is None
    assert Retention(keep_days=1).cutoff(2 * DAY) == DAY
