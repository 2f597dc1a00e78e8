"""Pools over REST: GET /v1/pools, jobs and sessions naming a pool, and bad input.

The broker is never started, so queues hold exactly what a test put there and the
ETAs are the emulators' own estimates (1 s a task). Runs on SQLite and, with
``QHPC_TEST_POSTGRES_URL``, on PostgreSQL (the pool is a stored column).
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
from qhpc.broker import Broker, BrokerConfig, DrainRequest
from qhpc.resources import PoolSpec, ResourceRegistry, ResourceSpec
from qhpc.security import Role
from qhpc.store import AccountRecord, Store

BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q -> c;
"""
TIMING = {"task_overhead": 1.0, "circuit_overhead": 0.0, "shot_time": 0.0}


def ghz(qubits: int) -> str:
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];", f"creg c[{qubits}];"]
    lines += ["h q[0];", *(f"cx q[0], q[{i}];" for i in range(1, qubits)), "measure q -> c;"]
    return "\n".join(lines)


def _emulator(name: str, qubits: int) -> ResourceSpec:
    options = {"device": f"line-{qubits}", "noise": False, "timing": TIMING, "seed": 1}
    return ResourceSpec(name, "emulator", options)


class World:
    def __init__(self, broker: Broker, http: TestClient) -> None:
        self.broker = broker
        self.http = http
        broker.store.upsert_account(AccountRecord("chem", 1.0, None))
        issue = broker.access.issue
        self.admin = issue(Role.ADMIN, "root")[1]
        self.alice = issue(Role.USER, "alice", account="chem")[1]
        self.narrow = issue(Role.USER, "carol", account="chem", resource="small")[1]

    def call(self, method: str, path: str, secret: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers={"Authorization": f"Bearer {secret}"},
                                 **kwargs)  # fmt: skip

    def submit(self, resource: str, circuit: str = BELL, secret: str = "") -> httpx.Response:
        body = {"resource": resource, "circuits": [circuit], "shots": 10}
        return self.call("POST", "/v1/jobs", secret or self.alice, json=body)

    def open(self, resource: str, secret: str = "", **extra: Any) -> httpx.Response:
        body = {"resource": resource, "duration_seconds": 60, **extra}
        return self.call("POST", "/v1/sessions", secret or self.alice, json=body)

    def nothing_stored(self) -> None:
        assert self.broker.store.list_jobs() == []
        assert self.broker.store.list_sessions(open_only=False) == []
        assert self.call("GET", "/v1/resources", self.alice).status_code == 200  # still up


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    urls = (
        iter([str(tmp_path / "pools.db")])
        if request.param == "sqlite"
        else postgres_schema_url("qhpc_pools")
    )
    for url in urls:
        registry = ResourceRegistry(
            [_emulator("small", 5), _emulator("big", 7), _emulator("other", 5)],
            [PoolSpec("sims", ("small", "big"))],
        )
        with Store.open(url) as store:
            broker = Broker(store, registry, BrokerConfig(policy="fifo"))  # never started
            with TestClient(create_app(broker)) as http:
                yield World(broker, http)
        registry.close()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in response.text
    body: dict[str, Any] = response.json()
    return body


def test_pools_list_their_members_as_the_choice_reads_them(world: World) -> None:
    assert world.submit("small").status_code == 201
    assert world.open("big").status_code == 201
    pools = world.call("GET", "/v1/pools", world.alice).json()
    assert pools == [
        {
            "name": "sims",
            "policy": "lowest-eta",
            "members": [
                {"name": "small", "state": "idle", "reason": "", "until": None,
                 "queue_length": 1, "sessions": 0, "eta_seconds": 1.0},
                {"name": "big", "state": "idle", "reason": "", "until": None,
                 "queue_length": 0, "sessions": 1, "eta_seconds": 0.0},
            ],
        }
    ]  # fmt: skip
    world.broker.drain("small", DrainRequest("cryostat"), by="ops")
    small = world.call("GET", "/v1/pools", world.alice).json()[0]["members"][0]
    assert (small["state"], small["reason"], small["eta_seconds"]) == (
        "maintenance", "drained: cryostat", None,
    )  # fmt: skip
    assert problem(world.http.get("/v1/pools"), 401)["status"] == 401


def test_a_job_naming_a_pool_shows_the_member_and_the_pool(world: World) -> None:
    first = world.submit("sims").json()
    assert (first["resource"], first["pool"]) == ("big", "sims")  # both empty: name
    assert first["tasks"][0]["resource"] == "big"
    assert first["tasks"][0]["eta_seconds"] == 0.0
    second = world.submit("sims").json()
    assert (second["resource"], second["pool"]) == ("small", "sims")  # big has 1 s queued
    wide = world.submit("sims", ghz(6)).json()
    assert (wide["resource"], wide["pool"]) == ("big", "sims")  # small has 5 qubits
    assert wide["tasks"][0]["eta_seconds"] == 1.0  # behind the first
    shown = world.call("GET", f"/v1/jobs/{first['job_id']}", world.alice).json()
    assert (shown["resource"], shown["pool"]) == ("big", "sims")
    listed = world.call("GET", "/v1/jobs", world.alice).json()
    assert sorted(j["pool"] for j in listed) == ["sims", "sims", "sims"]
    direct = world.submit("other").json()
    assert direct["pool"] is None


def test_no_member_fits_is_a_422_naming_each_member(world: World) -> None:
    body = problem(world.submit("sims", ghz(8)), 422)
    assert body["type"] == "urn:qhpc:problem:no-member-fits"
    assert body["pool"] == "sims"
    assert list(body["members"]) == ["small", "big"]
    assert "circuit needs 8 qubits" in body["members"]["small"]
    assert "has 7" in body["members"]["big"]
    assert body["detail"].startswith("no member of pool 'sims' fits: small: ")
    world.nothing_stored()


@pytest.mark.parametrize("name", ["pool", "nothing", "SIMS"])
def test_an_unknown_name_is_a_404_listing_resources_and_pools(world: World, name: str) -> None:
    for response in (world.submit(name), world.open(name)):
        body = problem(response, 404)
        assert body["known"] == ["big", "other", "small"]
        assert body["pools"] == ["sims"]
        assert body["detail"].endswith("; pools: sims")
    world.nothing_stored()


@pytest.mark.parametrize(
    "name", ["sims/../small", "sims pool", "sïms", "s" * 129, "", "sims\n", "<sims>"]
)
def test_odd_characters_in_a_name_are_a_422_that_echoes_nothing(world: World, name: str) -> None:
    for response in (world.submit(name), world.open(name)):
        body = problem(response, 422)
        assert body["errors"][0]["loc"][-1] == "resource"
        if name:
            assert name not in response.text
    world.nothing_stored()


def test_a_token_limited_to_a_resource_cannot_name_a_pool(world: World) -> None:
    body = problem(world.submit("sims", secret=world.narrow), 403)
    assert "limited to resource 'small'" in body["detail"]
    assert world.submit("small", secret=world.narrow).status_code == 201


def test_a_session_on_a_pool_opens_on_a_member_and_says_when_it_can_run(world: World) -> None:
    world.submit("small")
    created = world.open("sims")
    assert created.status_code == 201, created.text
    session = created.json()
    assert (session["resource"], session["pool"], session["eta_seconds"]) == ("big", "sims", 0.0)
    shown = world.call("GET", f"/v1/sessions/{session['session_id']}", world.alice).json()
    assert (shown["resource"], shown["pool"]) == ("big", "sims")
    # The session's token works on the member it got.
    task = world.call(
        "POST", f"/v1/sessions/{session['session_id']}/tasks", session["token"],
        json={"circuits": [BELL], "shots": 10},
    )  # fmt: skip
    assert task.status_code == 201, task.text
    assert world.broker.get_task(task.json()["task_id"]).resource == "big"


def test_a_session_on_a_fully_drained_pool_opens_with_an_unknown_eta(world: World) -> None:
    for member in ("small", "big"):
        world.broker.drain(member, DrainRequest("maintenance day"), by="ops")
    session = world.open("sims").json()
    assert (session["resource"], session["pool"]) == ("big", "sims")  # all alike: name
    assert session["eta_seconds"] is None  # drained until resumed: not known
    world.broker.drain("small", DrainRequest("short", until=time.time() + 100), by="ops")
    session = world.open("sims").json()
    assert session["resource"] == "small"  # a known end beats an unknown one
    assert 90 < session["eta_seconds"] <= 100


def test_one_slurm_job_holds_sessions_on_several_qpus(world: World) -> None:
    # Preparation for Slurm's --qpu=a,b: the prolog opens one session per QPU.
    opened = [
        world.open(name, world.admin, user="alice", account="chem", slurm_job_id="9001").json()
        for name in ("small", "other", "sims")
    ]
    assert [s["resource"] for s in opened] == ["small", "other", "big"]
    world.open("small", world.admin, user="alice", account="chem", slurm_job_id="9002")
    listed = world.call("GET", "/v1/sessions?slurm_job_id=9001", world.admin).json()
    assert sorted(s["session_id"] for s in listed) == sorted(s["session_id"] for s in opened)
    assert {s["slurm_job_id"] for s in listed} == {"9001"}
    # The epilog closes each; the others stay listed until theirs.
    closed = world.call("DELETE", f"/v1/sessions/{opened[0]['session_id']}", world.admin)
    assert closed.status_code == 200
    listed = world.call("GET", "/v1/sessions?slurm_job_id=9001", world.admin).json()
    assert len(listed) == 2
