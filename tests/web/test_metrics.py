"""/metrics over a real broker: who may scrape, what the figures say as work runs,
labels that stay bounded, the tokenless listener, and ``qhpc serve``'s options.

In-process through FastAPI's TestClient over a started broker (SQLite in a temp dir,
an Aer simulator and a fast emulator); then one real ``qhpc serve`` process with a
metrics token file and a private listener. Every scrape is parsed with
prometheus_client's OpenMetrics parser, so each test also checks the exposition is
valid. Figures are compared as differences around the work a test does, against
what the broker itself reports (its accounting, its task lists), never against
hard-coded numbers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from qiskit import QuantumCircuit

from helpers import free_port, run_cli, start_serve, stop_process, wait_healthy
from qhpc.api import MetricsListener, create_app
from qhpc.broker import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask
from qhpc.security import Role
from qhpc.store import AccountRecord, Store
from qhpc.web import CONTENT_TYPE

BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q -> c;
"""
METRICS_TOKEN = "scrape-" + "7f3a9c" * 6
WAIT = 60.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class World:
    """A started broker behind the in-process app, and one token per kind of caller."""

    def __init__(self, broker: Broker, http: TestClient) -> None:
        self.broker = broker
        self.http = http
        broker.store.upsert_account(AccountRecord("chem", 1.0, None))
        issue = broker.access.issue
        self.admin = issue(Role.ADMIN, "root")[1]
        self.alice = issue(Role.USER, "alice", account="chem")[1]
        self.north = issue(Role.CENTRE, "north-gw", account="chem", centre="north")[1]

    def scrape(self, secret: str | None = None) -> Samples:
        response = self.http.get("/metrics", headers=bearer(secret or self.admin))
        assert response.status_code == 200, response.text
        return parse(response.text)

    def wait_job(self, job_id: str) -> list[dict[str, Any]]:
        tasks = self.broker.tasks_of_job(job_id)
        return [
            {"task_id": t.task_id, "state": self.broker.wait_task(t.task_id, WAIT).state}
            for t in tasks
        ]

    def open_session(self, resource: str = "aer", **extra: Any) -> dict[str, Any]:
        body = {"resource": resource, "user": "alice", "account": "chem"}
        opened = self.http.post(
            "/v1/sessions", json={**body, "duration_seconds": 60, **extra},
            headers=bearer(self.admin),
        )  # fmt: skip
        assert opened.status_code == 201, opened.text
        return dict(opened.json())


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def parse(text: str) -> Samples:
    """Every sample of an OpenMetrics exposition (the parser refuses an invalid one)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def submit(w: World, secret: str, resource: str, tasks: int, **extra: Any) -> str:
    body = {"resource": resource, "circuits": [BELL] * tasks, "shots": 100,
            "split_circuits": True, **extra}  # fmt: skip
    response = w.http.post("/v1/jobs", json=body, headers=bearer(secret))
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    registry = ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 7}),
            ResourceSpec(
                "emu", "emulator", {"device": "line-5", "noise": False, "time_scale": 1000.0}
            ),
        ]
    )
    with Store.open(str(tmp_path / "metrics.db")) as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        try:
            with TestClient(create_app(broker, metrics_token=METRICS_TOKEN)) as http:
                yield World(broker, http)
        finally:
            broker.stop()
    registry.close()


# -- access ---------------------------------------------------------------------------------


def test_a_scrape_needs_an_admin_or_the_metrics_token(world: World) -> None:
    w = world
    wrong = "qhpc_" + "0" * 40
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Basic " + METRICS_TOKEN}, 401),
        (bearer(wrong), 401),
        (bearer(METRICS_TOKEN[:-1]), 401),
        (bearer(METRICS_TOKEN + "x"), 401),
        (bearer(w.alice), 403),
        (bearer(w.north), 403),
    ]:
        response = w.http.get("/metrics", headers=headers)
        assert response.status_code == status, (headers, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert METRICS_TOKEN not in response.text and wrong not in response.text
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"
    session = w.open_session()
    assert w.http.get("/metrics", headers=bearer(session["token"])).status_code == 403
    for secret in (w.admin, METRICS_TOKEN):
        response = w.http.get("/metrics", headers=bearer(secret))
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE
        assert response.text.endswith("# EOF\n")
    # Only GET; the route is not part of the published API.
    assert w.http.post("/metrics", headers=bearer(w.admin)).status_code == 405
    assert "/metrics" not in w.http.get("/openapi.json").json()["paths"]
    # The broker kept serving through the refused scrapes, and still runs work.
    job = submit(w, w.alice, "aer", 1)
    assert [t["state"] for t in w.wait_job(job)] == ["completed"]


# -- figures follow the work -----------------------------------------------------------------


def test_metrics_follow_a_batch_job_and_a_session(world: World) -> None:
    w = world
    before = w.scrape()
    used_before = {r["group"]: r for r in accounting(w)}
    job = submit(w, w.alice, "aer", 4)
    tasks = w.wait_job(job)
    assert {t["state"] for t in tasks} == {"completed"}
    after = w.scrape(METRICS_TOKEN)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    batch = {"resource": "aer", "kind": "batch"}
    assert grew("qhpc_tasks_finished_total", **batch, state="completed") == len(tasks)
    assert grew("qhpc_tasks_finished_total", **batch, state="failed") == 0
    assert grew("qhpc_task_wait_seconds_count", **batch) == len(tasks)
    assert grew("qhpc_task_run_seconds_count", **batch) == len(tasks)
    assert grew("qhpc_resource_busy_seconds_total", resource="aer") > 0
    # Usage as booked: what the broker's own accounting says it booked.
    used = {r["group"]: r for r in accounting(w)}
    chem = {"account": "chem", "centre": ""}
    shots_booked = used["chem"]["shots"] - used_before.get("chem", {}).get("shots", 0)
    assert shots_booked > 0
    assert grew("qhpc_usage_shots_total", **chem) == shots_booked
    assert grew("qhpc_usage_qpu_seconds_total", **chem) == pytest.approx(
        used["chem"]["qpu_seconds"] - used_before.get("chem", {}).get("qpu_seconds", 0.0)
    )
    assert (
        value(after, "qhpc_resource_state", resource="aer", state="idle")
        + value(after, "qhpc_resource_state", resource="aer", state="busy")
        == 1
    )
    posted = {"route": "/v1/jobs", "method": "POST", "status": "201"}
    assert grew("qhpc_http_request_duration_seconds_count", **posted) == 1

    # A session task over REST: its step is timed on the rest channel.
    session = w.open_session()
    opened = w.scrape()
    assert value(opened, "qhpc_open_sessions", resource="aer") == 1
    created = w.http.post(
        f"/v1/sessions/{session['session_id']}/tasks", json={"circuits": [BELL], "shots": 20},
        headers=bearer(session["token"]),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    assert w.broker.wait_task(created.json()["task_id"], WAIT).state == "completed"
    assert w.broker.journal.flush(WAIT)
    stepped = w.scrape()
    in_session = {"resource": "aer", "kind": "session"}
    assert value(stepped, "qhpc_tasks_finished_total", **in_session, state="completed") == (
        value(opened, "qhpc_tasks_finished_total", **in_session, state="completed") + 1
    )
    rest_steps = {"resource": "aer", "channel": "rest"}
    assert value(stepped, "qhpc_session_step_seconds_count", **rest_steps) == (
        value(opened, "qhpc_session_step_seconds_count", **rest_steps) + 1
    )
    assert value(stepped, "qhpc_journal_uncommitted_tasks") == 0
    assert value(stepped, "qhpc_journal_lag_seconds") == 0
    closed = w.http.delete(f"/v1/sessions/{session['session_id']}", headers=bearer(w.admin))
    assert closed.status_code == 200
    assert value(w.scrape(), "qhpc_open_sessions", resource="aer") == 0


def accounting(w: World) -> list[dict[str, Any]]:
    response = w.http.get("/v1/accounting?group_by=account", headers=bearer(w.admin))
    assert response.status_code == 200
    return list(response.json()["rows"])


def test_queue_depth_and_state_show_a_paused_emulator(world: World) -> None:
    w = world
    emulator = w.broker.resources.get("emu")
    emulator.pause()
    try:
        paused = w.scrape()
        assert value(paused, "qhpc_resource_state", resource="emu", state="maintenance") == 1
        assert (
            sum(
                value(paused, "qhpc_resource_state", resource="emu", state=s)
                for s in ("offline", "idle", "busy", "error", "calibration")
            )
            == 0
        )
        job = submit(w, w.alice, "emu", 3)
        session = w.open_session("emu")
        created = w.http.post(
            f"/v1/sessions/{session['session_id']}/tasks", json={"circuits": [BELL], "shots": 5},
            headers=bearer(session["token"]),
        )  # fmt: skip
        assert created.status_code == 201, created.text
        queued = w.scrape()
        assert value(queued, "qhpc_queued_tasks", resource="emu", kind="batch") == 3
        assert value(queued, "qhpc_queued_tasks", resource="emu", kind="session") == 1
        assert value(queued, "qhpc_queued_tasks", resource="aer", kind="batch") == 0
        # Cancelled while queued: counted as cancelled without a run.
        doomed = submit(w, w.alice, "emu", 2)
        assert w.http.delete(f"/v1/jobs/{doomed}", headers=bearer(w.alice)).status_code == 200
        cancelled = w.scrape()
        assert value(cancelled, "qhpc_queued_tasks", resource="emu", kind="batch") == 3
        emu_batch = {"resource": "emu", "kind": "batch"}
        assert value(cancelled, "qhpc_tasks_finished_total", **emu_batch, state="cancelled") == (
            value(queued, "qhpc_tasks_finished_total", **emu_batch, state="cancelled") + 2
        )
        assert value(cancelled, "qhpc_task_run_seconds_count", **emu_batch) == value(
            queued, "qhpc_task_run_seconds_count", **emu_batch
        )
    finally:
        emulator.resume()
    assert {t["state"] for t in w.wait_job(job)} == {"completed"}
    assert w.broker.wait_task(created.json()["task_id"], WAIT).state == "completed"
    drained = w.scrape()
    assert value(drained, "qhpc_queued_tasks", resource="emu", kind="batch") == 0
    assert value(drained, "qhpc_queued_tasks", resource="emu", kind="session") == 0
    assert value(drained, "qhpc_resource_state", resource="emu", state="maintenance") == 0


# -- bounded labels ----------------------------------------------------------------------------


HOSTILE = [
    'HOSTILE"} 1\nqhpc_pwned 1',
    "HOSTILE☢{{job_id}}",
    "HOSTILE" + "x" * 150,
]


def test_label_values_stay_bounded_whatever_clients_send(world: World) -> None:
    w = world
    ids: set[str] = set()
    for name in HOSTILE:
        response = w.http.post(
            "/v1/jobs", json={"resource": "aer", "circuits": [BELL], "shots": 10, "name": name},
            headers=bearer(w.alice),
        )  # fmt: skip
        if response.status_code == 201:  # names with control characters are refused (422)
            ids.add(response.json()["job_id"])
        else:
            assert response.status_code == 422
    for job_id in list(ids):
        ids.update(t["task_id"] for t in w.wait_job(job_id))
    session = w.open_session()
    ids.add(session["session_id"])
    task = w.http.post(
        f"/v1/sessions/{session['session_id']}/tasks", json={"circuits": [BELL], "shots": 5},
        headers=bearer(session["token"]),
    ).json()["task_id"]  # fmt: skip
    ids.add(task)
    for path in ["/v1/jobs/HOSTILE-id", "/v1/tasks/HOSTILE%22%7D", "/HOSTILE/../etc/passwd",
                 "/v1/sessions/HOSTILE/tasks", "/v1/jobs/" + "HOSTILE" * 20]:  # fmt: skip
        assert w.http.get(path, headers=bearer(w.alice)).status_code in (404, 405, 422)
    assert w.http.request("HOSTILE", "/v1/jobs", headers=bearer(w.alice)).status_code == 405
    assert w.broker.journal.flush(WAIT)
    samples = w.scrape()
    labels = [dict(key) for _, key in samples]
    values = {v for item in labels for v in item.values()}
    assert not [v for v in values if "HOSTILE" in v or "pwned" in v or "☢" in v]
    assert not values & ids, "an id became a label value"
    templates = {*w.http.get("/openapi.json").json()["paths"], "/metrics"}
    routes = {item["route"] for item in labels if "route" in item}
    assert routes <= templates | {"(unmatched)"} and "(unmatched)" in routes
    assert {item["method"] for item in labels if "method" in item} <= {
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "(other)",
    }  # fmt: skip
    assert not [name for name, _ in samples if "pwned" in name]
    # Many more unknown paths and ids: not one more series (after one more scrape, whose
    # own request is counted once it has been answered).
    series = len(w.scrape())
    for i in range(30):
        w.http.get(f"/HOSTILE/{i}", headers=bearer(w.alice))
        w.http.get(f"/v1/jobs/HOSTILE-{i}", headers=bearer(w.alice))
    assert len(w.scrape()) == series


# -- Slurm hooks -------------------------------------------------------------------------------


def test_slurm_hook_calls_are_counted_by_result(world: World) -> None:
    w = world
    before = w.scrape()
    prolog = w.open_session(slurm_job_id="4242")
    refused = w.http.post(
        "/v1/sessions",
        json={"resource": "aer", "duration_seconds": 60, "slurm_job_id": "4243"},
        headers=bearer(w.alice),
    )  # a user token may not name a Slurm job
    assert refused.status_code == 403
    unknown = w.http.post(
        "/v1/sessions",
        json={"resource": "nope", "user": "alice", "account": "chem", "duration_seconds": 60,
              "slurm_job_id": "4244"},
        headers=bearer(w.admin),
    )  # fmt: skip
    assert unknown.status_code == 404
    plain = w.open_session()  # no Slurm job: not a hook's call
    for session in (prolog, plain):
        closed = w.http.delete(f"/v1/sessions/{session['session_id']}", headers=bearer(w.admin))
        assert closed.status_code == 200
    again = w.http.delete(f"/v1/sessions/{prolog['session_id']}", headers=bearer(w.admin))
    assert again.status_code == 409
    after = w.scrape()
    counts = {
        (hook, result): value(after, "qhpc_slurm_hook_calls_total", hook=hook, result=result)
        - value(before, "qhpc_slurm_hook_calls_total", hook=hook, result=result)
        for hook in ("prolog-slurmctld", "epilog-slurmctld")
        for result in ("ok", "refused", "error")
    }
    assert counts == {
        ("prolog-slurmctld", "ok"): 1, ("prolog-slurmctld", "refused"): 2,
        ("prolog-slurmctld", "error"): 0, ("epilog-slurmctld", "ok"): 1,
        ("epilog-slurmctld", "refused"): 1, ("epilog-slurmctld", "error"): 0,
    }  # fmt: skip


# -- the tokenless listener ----------------------------------------------------------------------


def test_the_metrics_listener_serves_metrics_alone_without_a_token(world: World) -> None:
    w = world
    listener = MetricsListener(w.broker, "127.0.0.1", 0).start()
    try:
        base = f"http://127.0.0.1:{listener.port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            response = client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"] == CONTENT_TYPE
            assert "qhpc_resource_state" in {name for name, _ in parse(response.text)}
            assert client.get("/v1/health").status_code == 404
            assert client.get("/v1/resources").status_code == 404
            assert client.post("/metrics").status_code == 405
            assert client.get("/metrics").status_code == 200  # still serving
        with pytest.raises(OSError, match="in use"):  # its address is taken now
            MetricsListener(w.broker, "127.0.0.1", listener.port)
    finally:
        listener.stop()


# -- qhpc serve ------------------------------------------------------------------------------------


def flat(text: str) -> str:
    """An error message as one line, without the frame the terminal output draws."""
    return " ".join(text.replace("│", " ").split())


def token_file(directory: Path, secret: str = METRICS_TOKEN, mode: int = 0o600) -> Path:
    path = directory / "metrics.token"
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def test_qhpc_serve_with_a_metrics_token_and_a_private_listener(tmp_path: Path) -> None:
    port, private = free_port(), free_port()
    process = start_serve(
        tmp_path, port, "--metrics-token-file", str(token_file(tmp_path)),
        "--metrics-bind", f"127.0.0.1:{private}", db=tmp_path / "serve.db",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        admin = (tmp_path / "admin.token").read_text(encoding="utf-8").strip()
        with httpx.Client(base_url=url, timeout=30) as client:
            refused = [{}, bearer("x" * 5000), bearer("qhpc_" + "0" * 40)]
            for headers in refused:
                assert client.get("/metrics", headers=headers).status_code == 401
            for secret in (METRICS_TOKEN, admin):
                response = client.get("/metrics", headers=bearer(secret))
                assert response.status_code == 200
                assert response.headers["content-type"] == CONTENT_TYPE
                parse(response.text)
            assert client.get("/v1/health").status_code == 200
        response = httpx.get(f"http://127.0.0.1:{private}/metrics", timeout=30)
        assert response.status_code == 200
        samples = parse(response.text)
        requests = value(
            samples, "qhpc_http_request_duration_seconds_count",
            route="/metrics", method="GET", status="401",
        )  # fmt: skip
        assert requests == len(refused)  # counted by route template and status
        assert httpx.get(f"http://127.0.0.1:{private}/v1/health", timeout=30).status_code == 404
    finally:
        stop_process(process)
    assert process.returncode == 0


@pytest.mark.parametrize(
    "address", ["nonsense", "127.0.0.1", "127.0.0.1:", ":9464", "127.0.0.1:0", "127.0.0.1:70000",
                "127.0.0.1:-1", "[::1]:x"],
)  # fmt: skip
def test_qhpc_serve_refuses_a_bad_metrics_address(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["serve", "--db", str(tmp_path / "x.db"), "--metrics-bind", address], capsys
    )
    assert code == 2
    assert "--metrics-bind" in flat(err)
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


def test_qhpc_serve_refuses_a_metrics_address_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        code, _, err = run_cli(
            ["serve", "--db", str(tmp_path / "x.db"), "--port", str(free_port()),
             "--metrics-bind", f"127.0.0.1:{busy}"], capsys,
        )  # fmt: skip
    assert code == 2
    assert "--metrics-bind" in flat(err) and "in use" in flat(err)


@pytest.mark.parametrize(
    ("secret", "mode", "says"),
    [
        (METRICS_TOKEN, 0o644, "every user"),
        (METRICS_TOKEN, 0o606, "every user"),
        ("short-secret", 0o600, "at least"),
        ("two words " + METRICS_TOKEN, 0o600, "one word"),
        ("", 0o600, "at least"),
    ],
)
def test_qhpc_serve_refuses_a_bad_metrics_token_file(
    secret: str, mode: int, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = token_file(tmp_path, secret, mode)
    code, out, err = run_cli(
        ["serve", "--db", str(tmp_path / "x.db"), "--metrics-token-file", str(path)], capsys
    )
    assert code == 2
    assert says in flat(err)
    if secret:
        assert secret not in out + err  # the secret is never echoed
    assert not (tmp_path / "x.db").exists()


def test_qhpc_serve_refuses_a_missing_metrics_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "metrics.token"
    code, _, err = run_cli(
        ["serve", "--db", str(tmp_path / "x.db"), "--metrics-token-file", str(missing)], capsys
    )
    assert code == 2
    assert "cannot read" in flat(err)
    assert not (tmp_path / "x.db").exists()


def test_session_steps_are_timed_by_the_channel_they_came_on(world: World) -> None:
    """The broker's three ways in: start_session_task (the fast path's), run_session_task
    (the direct channel's), submit_session_task (REST's); inline and queued alike."""
    w = world
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    payload = SamplerTask((circuit,), 5)
    session = w.open_session()["session_id"]
    before = w.scrape()
    w.broker.run_session_task(session, payload)
    task_id, outcome = w.broker.start_session_task(session, payload, on_done=None)
    assert outcome is not None or w.broker.wait_task(task_id, WAIT).state == "completed"
    # Queued behind a paused device, then run: timed when it ends, on its own channel.
    emulator = w.broker.resources.get("emu")
    emu_session = w.open_session("emu")["session_id"]
    emulator.pause()
    try:
        queued = w.broker.submit_session_task(emu_session, payload)
    finally:
        emulator.resume()
    assert w.broker.wait_task(queued, WAIT).state == "completed"
    after = w.scrape()
    grown = {
        (resource, channel): value(
            after, "qhpc_session_step_seconds_count", resource=resource, channel=channel
        )
        - value(before, "qhpc_session_step_seconds_count", resource=resource, channel=channel)
        for resource in ("aer", "emu")
        for channel in ("fastpath", "direct", "rest")
    }
    assert grown == {
        ("aer", "fastpath"): 1, ("aer", "direct"): 1, ("aer", "rest"): 0,
        ("emu", "fastpath"): 0, ("emu", "direct"): 0, ("emu", "rest"): 1,
    }  # fmt: skip


def test_a_drain_shows_as_maintenance_and_the_store_size_grows(world: World) -> None:
    from qhpc.broker import DrainRequest

    w = world
    before = w.scrape()
    assert value(before, "qhpc_store_size_bytes") > 0
    w.broker.drain("aer", DrainRequest("cryostat warm-up"), by="ops")
    drained = w.scrape()
    assert value(drained, "qhpc_resource_state", resource="aer", state="maintenance") == 1
    assert value(drained, "qhpc_resource_state", resource="aer", state="idle") == 0
    for _ in range(20):
        submit(w, w.alice, "aer", 5)
    assert value(w.scrape(), "qhpc_queued_tasks", resource="aer", kind="batch") == 100
    assert value(w.scrape(), "qhpc_store_size_bytes") > value(before, "qhpc_store_size_bytes")
    w.broker.resume("aer", by="ops")
    assert value(w.scrape(), "qhpc_resource_state", resource="aer", state="maintenance") == 0
