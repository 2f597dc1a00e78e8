"""QIR jobs through a real broker: REST (text, base64 bitcode, QPY carrying QIR) and the
ZeroMQ fast path, with the refusals a tenant gets for bad QIR (422, the broker still up).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from qhpc.api import create_app
from qhpc.api.fastpath import FastPathServer
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.client import circuit_text
from qhpc.resources import (
    QIR_METADATA,
    ResourceRegistry,
    ResourceSpec,
    SamplerResult,
    SamplerTask,
    load_circuit,
)
from qhpc.security import Role
from qhpc.session import FastPathClient, FastPathError
from qhpc.store import AccountRecord, Store
from qir_samples import TYPED_TELEPORT, bell_module


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 5})])
    with Store.open(str(tmp_path / "qir.db")) as store:
        store.upsert_account(AccountRecord("chem", 1.0, None))
        service = Broker(store, registry, BrokerConfig(policy="fifo"))
        service.start()
        try:
            yield service
        finally:
            service.stop()
    registry.close()


@pytest.fixture
def http(broker: Broker) -> Iterator[tuple[TestClient, dict[str, str]]]:
    _, token = broker.access.issue(Role.USER, "alice", account="chem")
    with TestClient(create_app(broker)) as client:
        yield client, {"Authorization": f"Bearer {token}"}


def run_job(http: tuple[TestClient, dict[str, str]], circuits: list[str]) -> list[dict[str, int]]:
    client, auth = http
    body: dict[str, Any] = {"resource": "aer", "circuits": circuits, "shots": 300, "seed": 2}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 201, response.text
    (task,) = response.json()["tasks"]
    done = client.get(f"/v1/tasks/{task['task_id']}?wait=60", headers=auth).json()
    assert done["state"] == "completed", done
    return [c["counts"] for c in done["result"]["circuits"]]


def refused(http: tuple[TestClient, dict[str, str]], circuit: str) -> str:
    client, auth = http
    body = {"resource": "aer", "circuits": [circuit], "shots": 10}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/resources", headers=auth).status_code == 200  # still serving
    return str(response.json()["detail"])


def test_qir_text_bitcode_and_qpy_jobs_run(http: tuple[TestClient, dict[str, str]]) -> None:
    module = bell_module()
    bitcode = base64.b64encode(module.bitcode()).decode()
    carried = circuit_text(load_circuit(module.ir()))  # QPY with the program in metadata
    results = run_job(http, [module.ir(), bitcode, carried, TYPED_TELEPORT])
    for bell in results[:3]:
        assert set(bell) <= {"00", "11"} and sum(bell.values()) == 300
    assert {key[:2] for key in results[3]} == {"01"}  # teleported 1, not flipped


def test_bad_qir_is_422_with_its_place(http: tuple[TestClient, dict[str, str]]) -> None:
    text = bell_module().ir()
    line = text.splitlines().index("  ret void") + 1
    detail = refused(http, text.replace("ret void", "ret vid"))
    assert f"invalid qir circuit at line {line}, column 7" in detail
    detail = refused(http, text.replace("__quantum__qis__h__body", "__quantum__qis__hh__body"))
    assert "unknown intrinsic '__quantum__qis__hh__body' at main:entry:0" in detail
    loop = TYPED_TELEPORT.replace("br label %done", "br label %after_z")
    assert "a loop" in refused(http, loop)
    secret = b"BC\xc0\xde" + b"TENANT-SECRET" * 10
    detail = refused(http, base64.b64encode(secret).decode())
    assert "unreadable bitcode" in detail and "TENANT-SECRET" not in detail
    assert "not valid base64" in refused(http, "QkPA3g!!")
    tampered = load_circuit(text)
    tampered.x(0)
    assert "does not describe its gates" in refused(http, circuit_text(tampered))


def test_qir_over_the_fast_path(broker: Broker) -> None:
    server = FastPathServer(broker).start()
    try:
        _, token = broker.open_session(
            user="u", account="chem", resource="aer", deadline=time.time() + 60
        )
        circuit = load_circuit(bell_module().bitcode())
        assert isinstance(circuit.metadata[QIR_METADATA], str)
        with FastPathClient(server.endpoint, token, timeout=30) as client:
            result = client.run(SamplerTask((circuit,), shots=64))
            assert isinstance(result, SamplerResult)
            assert set(result.circuits[0].counts) <= {"00", "11"}
            tampered = circuit.copy()
            tampered.h(1)
            with pytest.raises(FastPathError, match="does not describe its gates"):
                client.run(SamplerTask((tampered,), shots=8))
            again = client.run(SamplerTask((circuit,), shots=8))  # the session goes on
            assert sum(again.circuits[0].counts.values()) == 8  # type: ignore[union-attr]
    finally:
        server.stop()
