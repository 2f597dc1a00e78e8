"""Strict request bodies: no type coercion, no non-finite numbers, anywhere in the API.

Bodies are sent as raw text where JSON itself cannot say it (``NaN``, ``Infinity``,
which Python's parser accepts, and ``1e400``, which it reads as infinity). Every
refusal is a 422 problem naming the field, and none echoes the value. SQLite only:
validation happens before the store is touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from test_api import BELL, World, assert_problem, bearer, registry

from qhpc.api import create_app, openapi_json
from qhpc.broker import Broker, BrokerConfig
from qhpc.store import Store


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[tuple[World, TestClient]]:
    regs = registry()
    with Store.open(tmp_path / "strict.db") as store:
        broker = Broker(store, regs, BrokerConfig(policy="fifo"))
        try:
            with TestClient(create_app(broker)) as http:
                yield World(broker), http
        finally:
            broker.programs.close()
    regs.close()


def raw(http: TestClient, secret: str, method: str, path: str, text: str) -> httpx.Response:
    headers = bearer(secret) | {"Content-Type": "application/json"}
    return http.request(method, path, content=text.encode(), headers=headers)


def refused(response: httpx.Response, field: str) -> None:
    body = assert_problem(response, 422)
    assert [str(p) for p in body["errors"][0]["loc"]] == ["body", field], body
    assert "input" not in body["errors"][0]


JOB = {"resource": "aer", "circuits": [BELL], "shots": 100}
PROGRAM = {"resource": "aer", "entry_point": "x"}
RAW_PROGRAM = '{"resource": "aer", "entry_point": "x", '


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shots", "100"),
        ("shots", True),
        ("shots", 100.0),
        ("seed", "7"),
        ("priority", "0"),
        ("priority", False),
        ("split_circuits", "true"),
        ("split_circuits", 1),
        ("name", 5),
    ],
)
def test_job_fields_are_not_coerced(idle: tuple[World, TestClient], field: str, value: Any) -> None:
    w, http = idle
    response = http.post("/v1/jobs", json=JOB | {field: value}, headers=bearer(w.alice))
    refused(response, field)
    assert repr(value) not in response.json()["detail"]


def test_the_right_types_still_pass(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    body = JOB | {"seed": 7, "split_circuits": True, "priority": 0}
    assert http.post("/v1/jobs", json=body, headers=bearer(w.alice)).status_code == 201
    # An integer is a number: floats take it (JSON does not tell 60 from 60.0 anyway).
    session = {"resource": "aer", "duration_seconds": 60}
    assert http.post("/v1/sessions", json=session, headers=bearer(w.alice)).status_code == 201
    assert (
        http.put("/v1/accounts/x", json={"shares": 2}, headers=bearer(w.admin)).status_code == 200
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/sessions", {"resource": "aer", "duration_seconds": "60"}, "duration_seconds"),
        ("POST", "/v1/sessions", {"resource": "aer", "duration_seconds": 60, "mode": 1}, "mode"),
        ("PUT", "/v1/accounts/x", {"shares": "1.5"}, "shares"),
        (
            "POST", "/v1/reservations",
            {"resource": "aer", "account": "chem", "start": 1, "end": 2, "allow_backfill": "yes"},
            "allow_backfill",
        ),
        ("POST", "/v1/tokens", {"role": "user", "subject": "z", "ttl_seconds": "5"}, "ttl_seconds"),
        ("POST", "/v1/programs", PROGRAM | {"timeout": "9"}, "timeout"),
        (
            "POST", "/v1/programs",
            PROGRAM | {"max_iterations": "9"}, "max_iterations",
        ),
    ],
)  # fmt: skip
def test_other_bodies_are_strict_too(
    idle: tuple[World, TestClient], method: str, path: str, body: dict[str, Any], field: str
) -> None:
    w, http = idle
    refused(http.request(method, path, json=body, headers=bearer(w.admin)), field)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize(
    ("method", "path", "template", "field"),
    [
        ("POST", "/v1/sessions", '{"resource": "aer", "duration_seconds": %s}', "duration_seconds"),
        ("POST", "/v1/sessions", '{"resource": "aer", "deadline": %s}', "deadline"),
        ("PUT", "/v1/accounts/x", '{"shares": %s}', "shares"),
        (
            "POST", "/v1/reservations",
            '{"resource": "aer", "account": "chem", "start": %s, "end": 2}', "start",
        ),
        ("POST", "/v1/tokens", '{"role": "user", "subject": "z","ttl_seconds": %s}', "ttl_seconds"),
        ("POST", "/v1/jobs", '{"resource": "aer", "circuits": ["x"], "shots": %s}', "shots"),
        ("POST", "/v1/programs", RAW_PROGRAM + '"timeout": %s}', "timeout"),
        ("POST", "/v1/programs", RAW_PROGRAM + '"args": {"a": %s}}', "args"),
        ("POST", "/v1/programs", RAW_PROGRAM + '"args": {"a": {"b": [1, %s]}}}', "args"),
    ],
)  # fmt: skip
def test_non_finite_numbers_are_refused(
    idle: tuple[World, TestClient], number: str, method: str, path: str, template: str, field: str
) -> None:
    w, http = idle
    refused(raw(http, w.admin, method, path, template % number), field)


def test_finite_args_pass(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    source = "def main(qpu, a=None):\n    return a\n"
    body = {"resource": "aer", "source": source, "args": {"a": {"b": [1, 2.5, None, "x"]}}}
    assert http.post("/v1/programs", json=body, headers=bearer(w.alice)).status_code == 201


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1/tasks/t", "wait=inf"),
        ("/v1/tasks/t", "wait=nan"),
        ("/v1/tasks/t", "wait=1e400"),
        ("/v1/accounting", "since=inf"),
        ("/v1/accounting", "until=nan"),
        ("/v1/jobs", "limit=1e3"),
        ("/v1/jobs", "offset=1.5"),
        ("/v1/jobs/j/logs", "stdout_offset=inf"),
    ],
)
def test_query_parameters_are_finite_and_typed(
    idle: tuple[World, TestClient], path: str, query: str
) -> None:
    w, http = idle
    body = assert_problem(http.get(f"{path}?{query}", headers=bearer(w.admin)), 422)
    assert body["errors"][0]["loc"][0] == "query"


def test_deeply_nested_json_is_not_a_server_error(idle: tuple[World, TestClient]) -> None:
    w, http = idle
    deep = "[" * 100_000 + "]" * 100_000
    text = RAW_PROGRAM + f'"args": {{"a": {deep}}}}}'
    response = raw(http, w.alice, "POST", "/v1/programs", text)
    assert 400 <= response.status_code < 500
    assert http.get("/v1/health").status_code == 200


def test_openapi_still_generates_with_strict_models(idle: tuple[World, TestClient]) -> None:
    _, http = idle
    assert isinstance(http.app, FastAPI)
    spec = openapi_json(http.app)
    json.dumps(spec)
    schemas = spec["components"]["schemas"]
    assert schemas["JobSubmission"]["properties"]["shots"]["anyOf"][0]["type"] == "integer"
    parameters = spec["paths"]["/v1/jobs"]["post"]["parameters"]
    (key,) = [p for p in parameters if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header" and key["required"] is False
