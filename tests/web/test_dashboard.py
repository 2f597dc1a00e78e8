"""deploy/monitoring: the Grafana dashboard queries only what a live broker exposes,
and Prometheus's scrape configuration matches how /metrics is served.

The broker runs a batch job and a session task first, so every family has samples
(histograms their ``_bucket``/``_sum``/``_count``). A name a PromQL expression queries
must be a sample name of the exposition whose suffix fits its family's type: a
``_bucket`` of a histogram, a ``_total`` of a counter, a gauge by its own name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from qhpc.api import create_app
from qhpc.broker import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec
from qhpc.security import Role
from qhpc.store import Store
from qhpc.web import METRICS_PATH

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS = MONITORING / "prometheus.yml"
BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nh q[0];\ncx q[0], q[1];\n'
    "measure q -> c;\n"
)
#: sample-name suffixes per family type (OpenMetrics): what a query may add to a name
SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count"),
    "counter": ("_total",),
    "gauge": ("",),
}
#: what the dashboard must show (ARCHITECTURE's operators: states, queues, latency, usage)
MUST_SHOW = {
    "qhpc_resource_state", "qhpc_queued_tasks", "qhpc_task_wait_seconds",
    "qhpc_task_run_seconds", "qhpc_resource_busy_seconds", "qhpc_usage_qpu_seconds",
    "qhpc_session_step_seconds", "qhpc_http_request_duration_seconds",
    "qhpc_journal_lag_seconds",
}  # fmt: skip


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL ``expr`` in a dashboard (panels, rows, nested panels)."""
    if isinstance(node, dict):
        for key, item in node.items():
            if key == "expr" and isinstance(item, str):
                yield item
            else:
                yield from expressions(item)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def queried_names(expr: str) -> set[str]:
    """The qhpc metric names an expression selects (label names never start qhpc_)."""
    return set(re.findall(r"\bqhpc_[a-zA-Z0-9_]*[a-zA-Z0-9]", expr))


def family_of(name: str, families: dict[str, str]) -> str | None:
    """The family a queried name belongs to, if its suffix fits the family's type."""
    for family, kind in families.items():
        for suffix in SUFFIXES.get(kind, ()):
            if name == family + suffix:
                return family
    return None


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A live broker's /metrics after a batch job and a session task."""
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 3})])
    with Store.open(str(tmp_path_factory.mktemp("dash") / "dash.db")) as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        try:
            with TestClient(create_app(broker)) as http:
                admin = broker.access.issue(Role.ADMIN, "root")[1]
                auth = {"Authorization": f"Bearer {admin}"}
                job = http.post(
                    "/v1/jobs", json={"resource": "aer", "circuits": [BELL], "shots": 10,
                                      "account": "chem"}, headers=auth,
                )  # fmt: skip
                assert job.status_code == 201, job.text
                for task in broker.tasks_of_job(job.json()["job_id"]):
                    assert broker.wait_task(task.task_id, 60).state == "completed"
                session = http.post(
                    "/v1/sessions", json={"resource": "aer", "account": "chem",
                                          "duration_seconds": 60}, headers=auth,
                ).json()  # fmt: skip
                task = http.post(
                    f"/v1/sessions/{session['session_id']}/tasks",
                    json={"circuits": [BELL], "shots": 5},
                    headers={"Authorization": f"Bearer {session['token']}"},
                ).json()["task_id"]  # fmt: skip
                assert broker.wait_task(task, 60).state == "completed"
                assert broker.journal.flush(60)
                text = http.get(METRICS_PATH, headers=auth).text
        finally:
            broker.stop()
    registry.close()
    families = list(text_string_to_metric_families(text))
    return {
        "types": {f.name: f.type for f in families},
        "samples": {s.name for f in families for s in f.samples},
    }


def test_every_dashboard_query_names_an_exposed_metric(exposition: dict[str, Any]) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = list(expressions(dashboard["panels"]))
    assert len(exprs) >= 15
    queried = set().union(*(queried_names(e) for e in exprs))
    missing = sorted(n for n in queried if n not in exposition["samples"])
    assert not missing, f"the dashboard queries names /metrics does not expose: {missing}"
    misfit = sorted(n for n in queried if family_of(n, exposition["types"]) is None)
    assert not misfit, f"suffix does not fit the family's type: {misfit}"
    shown = {family_of(n, exposition["types"]) for n in queried}
    assert shown >= MUST_SHOW, f"the dashboard lacks {sorted(MUST_SHOW - shown)}"
    # The resource picker's query, too.
    variables = dashboard["templating"]["list"]
    for variable in variables:
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        assert queried_names(text) <= exposition["samples"]


def test_the_name_checks_tell_suffixes_apart() -> None:
    families = {"qhpc_a_seconds": "histogram", "qhpc_b": "counter", "qhpc_c": "gauge"}
    assert family_of("qhpc_a_seconds_bucket", families) == "qhpc_a_seconds"
    assert family_of("qhpc_b_total", families) == "qhpc_b"
    assert family_of("qhpc_c", families) == "qhpc_c"
    assert family_of("qhpc_b", families) is None  # a counter is queried as _total
    assert family_of("qhpc_c_total", families) is None
    assert family_of("qhpc_a_seconds_total", families) is None
    assert queried_names('rate(qhpc_b_total{route="/v1", le="qhpc_x"}[5m])') >= {"qhpc_b_total"}


def test_prometheus_scrapes_metrics_with_a_bearer_token_file() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "qhpc"]
    assert job["metrics_path"] == METRICS_PATH
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].startswith("/")
    assert "credentials" not in job["authorization"]  # the secret stays in its file
    assert job["static_configs"][0]["targets"]
