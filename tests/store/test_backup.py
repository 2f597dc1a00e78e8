"""Backups of an SQLite store and their restore (qhpc.store.backup), in-process.

The live case — a broker writing jobs while the backup runs — is in
tests/cli/test_store_cli.py, against a real ``qhpc serve``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from helpers import postgres_schema_url
from qhpc.store import (
    AccountRecord,
    JobRecord,
    NotSqliteError,
    Store,
    StoreError,
    TaskOutcome,
    TaskRecord,
    backup,
    pg_dump_command,
    pg_restore_command,
    restore,
)
from qhpc.store.migrations import LATEST_VERSION


def add_job(store: Store, job_id: str) -> None:
    job = JobRecord(job_id, "alice", "chem", None, "aer", "batch", 0, "queued", 1.0, None,
                    None, None, 1)  # fmt: skip
    task = TaskRecord(
        f"{job_id}.0", job_id, "aer", 0, "queued", b"qasm", "sampler", 1.0, None, None, None,
        None, 0, None, "chem", "alice", 0, 0.1,
    )  # fmt: skip
    store.create_job(job, [task])
    store.finish_task(task.task_id, TaskOutcome("completed", b"counts", None, 1.0, 5, 1, 2.0))


def contents(path: Path) -> tuple[list[str], list[object]]:
    with Store.open(path) as store:
        return [j.job_id for j in store.list_jobs()], list(store.usage())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "qhpc.db"
    with Store.open(path) as store:
        store.upsert_account(AccountRecord("chem", 1.0, None))
        add_job(store, "a")
        add_job(store, "b")
    return path


def test_backup_is_a_private_checked_copy_and_restore_puts_it_back(
    db: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "backups" / "qhpc-1.db"
    before = contents(db)
    previous = os.umask(0)
    try:
        report = backup(db, dest)
    finally:
        os.umask(previous)
    assert (report.path, report.schema_version) == (dest, LATEST_VERSION)
    assert report.bytes == dest.stat().st_size > 0
    assert dest.stat().st_mode & 0o777 == 0o600
    assert not dest.with_name(dest.name + "-wal").exists()  # one self-contained file
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary left
    with sqlite3.connect(f"{dest.as_uri()}?mode=ro", uri=True) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    with Store.open(db) as store:  # the store moves on after the backup …
        add_job(store, "c")
    # … and a stale WAL of the store it replaces must not be replayed into the copy.
    wal = db.with_name(db.name + "-wal")
    wal.write_bytes(b"stale")
    assert restore(dest, db, force=True).schema_version == LATEST_VERSION
    assert not wal.exists()
    assert contents(db) == before
    assert db.stat().st_mode & 0o777 == 0o600


def test_backup_refuses_what_it_must_not_do(db: Path, tmp_path: Path) -> None:
    dest = tmp_path / "b.db"
    dest.write_bytes(b"keep me")
    with pytest.raises(StoreError, match="exists; pass --force"):
        backup(db, dest)
    assert dest.read_bytes() == b"keep me"
    backup(db, dest, force=True)
    assert contents(dest) == contents(db)
    with pytest.raises(StoreError, match="the store itself"):
        backup(db, db, force=True)
    with pytest.raises(StoreError, match="is a directory"):
        backup(db, tmp_path, force=True)
    with pytest.raises(StoreError, match="no store at"):
        backup(tmp_path / "missing.db", tmp_path / "x.db")
    assert not (tmp_path / "missing.db").exists()
    plain = tmp_path / "other.db"
    with sqlite3.connect(plain) as other:
        other.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a qhpc store"):
        backup(plain, tmp_path / "y.db")
    with pytest.raises(StoreError, match="nothing to back up"):
        backup(":memory:", tmp_path / "z.db")


def test_restore_refuses_an_open_store_damaged_or_newer_backups(db: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    backup(db, good)
    # A broker has it open:
    with Store.open(db), pytest.raises(StoreError, match=r"in use .* stop the broker first"):
        restore(good, db, force=True)
    with pytest.raises(StoreError, match="holds a store; pass --force"):
        restore(good, db)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    original = db.read_bytes()
    with pytest.raises(StoreError, match=r"not a qhpc store|cannot open"):
        restore(damaged, db, force=True)
    assert db.read_bytes() == original
    newer = tmp_path / "newer.db"
    shutil.copy(good, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(
            "INSERT INTO schema_version VALUES (?, 'from the future', 0)", (LATEST_VERSION + 1,)
        )
    with pytest.raises(StoreError, match="newer than"):
        restore(newer, db, force=True)
    with pytest.raises(StoreError, match="no backup at"):
        restore(tmp_path / "nothing.db", db, force=True)
    # Restoring into a place with no store yet needs no --force.
    fresh = tmp_path / "new-home" / "qhpc.db"
    restore(good, fresh)
    assert contents(fresh) == contents(db)


def test_no_store_opens_while_a_restore_holds_the_lock(db: Path, tmp_path: Path) -> None:
    from qhpc.store.database import in_use_lock

    lock = db.with_name(db.name + ".lock")
    assert lock.stat().st_mode & 0o777 == 0o600
    fd = in_use_lock(db, exclusive=True)  # what restore holds while it swaps the file
    try:
        with pytest.raises(StoreError, match="being restored"):
            Store.open(db)
    finally:
        os.close(fd)
    Store.open(db).close()


def test_postgresql_stores_are_pointed_at_pg_dump(tmp_path: Path) -> None:
    url = "postgresql://qhpc:s3cret@db.example:5433/qhpc?options=-c%20search_path%3Dqhpc_x"
    with pytest.raises(NotSqliteError) as caught:
        backup(url, tmp_path / "dump")
    message = str(caught.value)
    assert "s3cret" not in message
    assert caught.value.command == pg_dump_command(url, tmp_path / "dump")
    assert caught.value.command in message
    assert caught.value.command.startswith("umask 077; pg_dump --format=custom")
    assert "--schema=qhpc_x" in caught.value.command
    assert "--dbname=postgresql://qhpc@db.example:5433/qhpc" in caught.value.command
    with pytest.raises(NotSqliteError, match="pg_restore --clean") as restoring:
        restore(tmp_path / "dump", url)
    assert "s3cret" not in str(restoring.value)
    assert not (tmp_path / "dump").exists()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url("qhpc_dump")


@pytest.mark.postgres
def test_the_named_pg_commands_back_up_and_restore(pg_url: str, tmp_path: Path) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore are not installed")
    with Store.open(pg_url) as store:
        add_job(store, "before")
    dump = tmp_path / "qhpc.dump"
    # The commands carry no password (admins keep it in ~/.pgpass); the test hands it over.
    env = {**os.environ, "PGPASSWORD": make_url(pg_url).password or ""}
    subprocess.run(["sh", "-c", pg_dump_command(pg_url, dump)], env=env, check=True, timeout=120)
    assert dump.stat().st_mode & 0o777 == 0o600
    with Store.open(pg_url) as store:
        add_job(store, "after")  # then the broker was stopped, and the dump restored:
    subprocess.run(["sh", "-c", pg_restore_command(pg_url, dump)], env=env, check=True, timeout=120)
    with Store.open(pg_url) as store:
        assert [j.job_id for j in store.list_jobs()] == ["before"]
        assert [u.task_id for u in store.usage()] == ["before.0"]
