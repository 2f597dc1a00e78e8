"""``qhpc store purge`` (and the retention options of ``qhpc serve``), in-process.

The store is an SQLite file, or a fresh PostgreSQL schema (QHPC_TEST_POSTGRES_URL)
named through ``$QHPC_DB``, as an admin would keep a password off the command line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import postgres_schema_url, run_cli
from qhpc.store import JobRecord, Store, TaskOutcome, TaskRecord

DAY = 86400.0


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
    else:
        yield from postgres_schema_url("qhpc_store_cli")


def finished_job(store: Store, job_id: str, ended: float) -> None:
    created = ended - 9
    job = JobRecord(job_id, "alice", "chem", None, "aer", "batch", 0, "queued", created,
                    None, None, None, 1)  # fmt: skip
    task = TaskRecord(
        f"{job_id}.0", job_id, "aer", 0, "queued", b"qasm" * 250, "sampler", created, None,
        None, None, None, 0, None, "chem", "alice", 0, 0.1,
    )  # fmt: skip
    store.create_job(job, [task])
    store.finish_task(task.task_id, TaskOutcome("completed", b"r" * 1000, None, 2.0, 10, 1, ended))


def test_purge_dry_run_then_purge(
    store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    with Store.open(store_url) as store:
        finished_job(store, "old", now - 40 * DAY)
        finished_job(store, "new", now - 1 * DAY)
        usage = store.usage()
    monkeypatch.setenv("QHPC_DB", store_url)

    code, out, err = run_cli(["store", "purge", "--dry-run"], capsys)
    assert code == 0, err
    assert "would purge 1 job(s), 1 task(s)" in out
    with Store.open(store_url) as store:
        assert store.get_job("old").purged_at is None

    code, out, err = run_cli(["store", "purge", "--keep-results-days", "30", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert (report["jobs"], report["tasks"], report["dry_run"]) == (1, 1, False)
    assert report["bytes"] == 1000 + 1000  # the payload and the result
    with Store.open(store_url) as store:
        assert store.get_job("old").purged_at is not None
        assert store.get_job("new").purged_at is None
        assert store.usage() == usage

    code, out, _ = run_cli(["store", "purge", "--keep-results-days", "0.5"], capsys)
    assert code == 0 and "purged 1 job(s)" in out  # "new" is a day old
    code, out, _ = run_cli(["store", "purge"], capsys)
    assert code == 0 and "purged 0 job(s)" in out


def test_purge_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "store.db"
    Store.open(db).close()
    for days in ("-1", "nan", "inf", "thirty"):
        code, _, err = run_cli(["store", "purge", "--db", str(db), "--keep-results-days", days],
                               capsys)  # fmt: skip
        assert code == 2, (days, err)
        assert "keep-results-days" in err
    code, _, err = run_cli(["store", "purge", "--db", str(tmp_path / "typo.db")], capsys)
    assert code == 1 and f"no store at {tmp_path / 'typo.db'}" in err
    assert not (tmp_path / "typo.db").exists()  # a typo creates nothing
    code, _, err = run_cli(["store", "purge", "--db", "mysql://x/y"], capsys)
    assert code == 1 and "unknown store URL scheme" in err
    code, _, err = run_cli(["store", "purge", "--db", str(db), "--keep-results-days", "0"],
                             capsys)  # fmt: skip
    assert code == 0 and "keeps results for ever" in err


def test_serve_refuses_bad_retention_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def must_not_open(url: object) -> None:
        raise AssertionError("qhpc serve went past its options")

    monkeypatch.setattr(Store, "open", must_not_open)
    base = ["serve", "--db", str(tmp_path / "s.db"), "--port", "1"]
    for option, value in (
        ("--keep-results-days", "-3"), ("--keep-results-days", "nan"),
        ("--keep-results-days", "inf"), ("--purge-interval", "0"),
        ("--purge-interval", "nan"), ("--purge-interval", "many"),
    ):  # fmt: skip
        code, _, err = run_cli([*base, option, value], capsys)
        assert code == 2, (option, value, err)
        assert option in err
