"""``qhpc store purge|backup|restore`` (and the retention options of ``qhpc serve``).

The commands run in-process; the broker they must live beside is a real ``qhpc
serve`` process.

The store is an SQLite file, or a fresh PostgreSQL schema (QHPC_TEST_POSTGRES_URL)
named through ``$QHPC_DB``, as an admin would keep a password off the command line.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port, postgres_schema_url, run_cli, start_serve, stop_process, wait_healthy
from qhpc.client import connect
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


BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)


def test_backup_of_a_live_broker_and_restore_once_it_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state" / "qhpc.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    broker = start_serve(tmp_path, port, db=db)
    acked: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        try:
            with connect(url, (tmp_path / "admin.token").read_text().strip()) as client:
                for _ in range(5000):  # bounded; stopped long before
                    if stop.is_set():
                        return
                    acked.append(client.submit("aer", [BELL], 10, account="ops")["job_id"])
        except BaseException as error:
            errors.append(error)

    writer = threading.Thread(target=keep_submitting)
    try:
        wait_healthy(url, broker)
        writer.start()
        deadline = time.monotonic() + 60
        while len(acked) < 20:
            assert not errors and time.monotonic() < deadline, errors
            time.sleep(0.02)
        before = set(acked)  # acknowledged before the backup started
        dest = tmp_path / "backups" / "qhpc.db"
        code, out, err = run_cli(["store", "backup", str(dest), "--db", str(db)], capsys)
        assert code == 0, err
        assert "backed up" in out
        during = len(acked)
        while len(acked) < during + 10:  # the broker kept taking work
            assert not errors and time.monotonic() < deadline, errors
            time.sleep(0.02)
        stop.set()
        writer.join(timeout=60)
        assert not errors, errors
        assert dest.stat().st_mode & 0o777 == 0o600
        with sqlite3.connect(f"{dest.as_uri()}?mode=ro", uri=True) as copy:
            assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            saved = {row[0] for row in copy.execute("SELECT job_id FROM jobs")}
        assert before <= saved
        assert set(acked) - saved  # and the ones after it are not in it

        code, out, err = run_cli(["store", "backup", str(dest), "--db", str(db)], capsys)
        assert code == 1 and "exists; pass --force" in err
        code, _, err = run_cli(["store", "restore", str(dest), "--db", str(db), "--force"], capsys)
        assert code == 1 and "in use" in err and "stop the broker first" in err
    finally:
        stop.set()
        if writer.is_alive():
            writer.join(timeout=60)
        stop_process(broker)
    code, out, err = run_cli(["store", "restore", str(dest), "--db", str(db), "--force"], capsys)
    assert code == 0, err
    assert "restored" in out
    with Store.open(db) as store:
        assert {job.job_id for job in store.list_jobs(limit=10_000)} == saved


def test_backup_and_restore_of_postgresql_name_the_tools(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QHPC_DB", "postgresql://qhpc:s3cret@db.example/qhpc")
    code, _, err = run_cli(["store", "backup", str(tmp_path / "dump")], capsys)
    assert code == 2
    assert "pg_dump --format=custom" in err and "s3cret" not in err
    code, _, err = run_cli(["store", "restore", str(tmp_path / "dump")], capsys)
    assert code == 2
    assert "pg_restore --clean" in err and "s3cret" not in err
    assert not (tmp_path / "dump").exists()
