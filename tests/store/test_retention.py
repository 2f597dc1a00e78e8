"""Retention in the store: purging what jobs carried keeps their accounting identical.

Runs on SQLite (a temp file) and on PostgreSQL (QHPC_TEST_POSTGRES_URL, one fresh
schema per test), like test_store.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from helpers import postgres_schema_url
from qhpc.store import (
    ROLLUP_GROUPS,
    JobRecord,
    OutputPiece,
    ProgramRecord,
    PurgedError,
    PurgeReport,
    Store,
    TaskOutcome,
    TaskRecord,
)
from qhpc.store import schema as store_schema
from qhpc.store.database import Database
from qhpc.store.migrations import MIGRATIONS, migrate

DAY = 86400.0
NOW = 1_000 * DAY


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
    else:
        yield from postgres_schema_url("qhpc_retention")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store.open(store_url) as opened:
        yield opened


def _job(job_id: str, n: int, *, created_at: float, kind: str = "batch") -> JobRecord:
    return JobRecord(
        job_id=job_id, user="alice", account="physics", centre="jsc", resource="aer",
        kind=kind, priority=0, state="queued", created_at=created_at, finished_at=None,
        session_id=None, name=job_id, task_count=n,
    )  # fmt: skip


def _task(job: JobRecord, index: int) -> TaskRecord:
    return TaskRecord(
        task_id=f"{job.job_id}.{index}", job_id=job.job_id, resource=job.resource, index=index,
        state="queued", payload=b"circuit" * 100, payload_kind="sampler",
        submitted_at=job.created_at, started_at=None, finished_at=None, resource_task_id=None,
        error=None, attempts=0, session_id=None, account=job.account, user=job.user,
        priority=0, estimated_seconds=0.1,
    )  # fmt: skip


def batch_job(store: Store, job_id: str, n: int, *, ended: float | None) -> JobRecord:
    """A batch job of ``n`` tasks, all completed at ``ended`` (left queued if None)."""
    job = _job(job_id, n, created_at=(ended or NOW) - 60)
    tasks = [_task(job, i) for i in range(n)]
    store.create_job(job, tasks)
    if ended is not None:
        for i, task in enumerate(tasks):
            store.mark_task_running(task.task_id, None, ended - 10)
            state = "completed" if i % 3 else "failed"
            store.finish_task(
                task.task_id,
                TaskOutcome(state, b"counts" * 50 if state == "completed" else None,
                            None if state == "completed" else "boom", 1.25, 100, 1, ended),
            )  # fmt: skip
    return store.get_job(job_id)


def hybrid_job(store: Store, job_id: str, *, ended: float) -> None:
    job = _job(job_id, 0, created_at=ended - 60, kind="hybrid")
    program = ProgramRecord(
        job_id=job_id, source="def main():\n    return 42\n", entry_point=None, entry="main",
        args='{"x": 1}', timeout=60.0, max_iterations=None, status="queued",
    )  # fmt: skip
    store.create_program(job, program)
    store.start_program(job_id, "s-" + job_id, ended - 30)
    store.append_output([OutputPiece(job_id, "stdout", 0, b"hello\n" * 1000)])
    record = store.get_program(job_id)
    finished = ProgramRecord(
        **{**_fields(record), "status": "completed", "return_value": "42",
           "progress": '{"iteration": 3}', "timings": '{"total": 1.0}', "iterations": 3,
           "qpu_calls": 7, "finished_at": ended},
    )  # fmt: skip
    store.finish_program(finished, "completed")


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def accounting(store: Store) -> Any:
    """Everything accounting reads: usage rows, every rollup, job and task metadata."""
    jobs = store.list_jobs(limit=1000)
    return (
        store.usage(),
        {group: store.usage_rollup(group) for group in ROLLUP_GROUPS},
        [
            {k: v for k, v in _fields(job).items() if k != "purged_at"} for job in jobs
        ],  # the purge stamp is the one change
        [
            {k: v for k, v in _fields(t).items() if k != "payload"}
            for job in jobs
            for t in store.tasks_of_job(job.job_id)
        ],
    )


def test_purge_drops_what_old_jobs_carried_and_keeps_accounting_identical(store: Store) -> None:
    batch_job(store, "old", 6, ended=NOW - 40 * DAY)
    hybrid_job(store, "old-hybrid", ended=NOW - 31 * DAY)
    recent = batch_job(store, "recent", 3, ended=NOW - 2 * DAY)
    open_job = batch_job(store, "open", 2, ended=None)
    recent_tasks = store.tasks_of_job("recent")
    recent_results = [store.task_result(t.task_id) for t in recent_tasks]
    before = accounting(store)
    cutoff = NOW - 30 * DAY

    due = store.purgeable(cutoff)
    assert (due.jobs, due.tasks) == (2, 6)
    assert due.bytes > 6 * 700 + 6000  # payloads, results, output, source
    assert accounting(store) == before  # a dry run changes nothing

    done = store.purge_jobs(cutoff, NOW)
    assert done == due
    assert store.purge_jobs(cutoff, NOW) == PurgeReport()  # nothing left to do

    assert accounting(store) == before
    assert store.get_job("old").purged_at == NOW
    assert store.get_job("old-hybrid").purged_at == NOW
    for task in store.tasks_of_job("old"):
        assert task.payload == b""
        with pytest.raises(PurgedError, match="purged") as gone:
            store.task_result(task.task_id)
        assert gone.value.job_id == "old"
    program = store.get_program("old-hybrid")
    assert (program.source, program.args, program.return_value, program.progress) == (
        None, "null", None, None,
    )  # fmt: skip
    assert (program.status, program.iterations, program.qpu_calls, program.timings) == (
        "completed", 3, 7, '{"total": 1.0}',
    )  # fmt: skip
    assert store.read_output("old-hybrid", "stdout") == (b"", 0)
    # Recent and open jobs are untouched, to the byte.
    assert store.get_job("recent") == recent
    assert store.tasks_of_job("recent") == recent_tasks
    assert [store.task_result(t.task_id) for t in recent_tasks] == recent_results
    assert store.get_job("open") == open_job
    assert [t.payload for t in store.tasks_of_job("open")] == [b"circuit" * 100] * 2


def test_purge_runs_in_bounded_batches_of_whole_jobs(store: Store) -> None:
    for i in range(5):
        batch_job(store, f"j{i}", 2, ended=NOW - (50 - i) * DAY)
    batch_job(store, "big", 7, ended=NOW - 45 * DAY)
    cutoff = NOW - DAY
    batches = []
    while True:
        report = store.purge_jobs(cutoff, NOW, max_jobs=3, max_tasks=5)
        if report.jobs == 0:
            break
        batches.append(report)
    # Oldest first; at most 3 jobs and, past the first job, at most 5 tasks; a job
    # larger than the budget goes alone rather than never.
    assert [(b.jobs, b.tasks) for b in batches] == [(2, 4), (2, 4), (1, 2), (1, 7)]
    assert all(store.get_job(j).purged_at == NOW for j in ("j0", "j4", "big"))
    with pytest.raises(ValueError, match="at least one"):
        store.purge_jobs(cutoff, NOW, max_jobs=0)


def test_purge_leaves_open_jobs_and_jobs_without_an_end(store: Store) -> None:
    old = _job("queued-long-ago", 1, created_at=NOW - 400 * DAY)
    store.create_job(old, [_task(old, 0)])
    assert store.purgeable(NOW).jobs == 0
    assert store.purge_jobs(NOW, NOW) == PurgeReport()
    assert store.get_job("queued-long-ago").purged_at is None
    assert store.tasks_of_job("queued-long-ago")[0].payload == b"circuit" * 100


def test_migration_5_keeps_existing_jobs_unpurged(store_url: str) -> None:
    db = Database.connect(store_url)
    try:
        migrate(db, MIGRATIONS[:4])
        # The row as version 4 had it (purged_at came with migration 5, pool with 7).
        row = {k: v for k, v in store_schema.to_row(_job("v4", 0, created_at=1.0)).items()
               if k not in ("purged_at", "pool")}  # fmt: skip
        with db.tx(write=True) as conn:
            conn.execute(store_schema.jobs.insert().values(row))
        migrate(db)
        with db.tx() as conn:
            purged = conn.execute(
                select(store_schema.jobs.c.purged_at).where(store_schema.jobs.c.job_id == "v4")
            ).scalar_one()
        assert purged is None
    finally:
        db.close()


def test_size_bytes_counts_what_the_store_holds(store: Store, store_url: str) -> None:
    empty = store.size_bytes()
    assert empty > 0
    job = _job("big", 1, created_at=1.0)
    blob = random.Random(5).randbytes(2 << 20)  # 2 MiB that do not compress
    store.create_job(job, [TaskRecord(**{**_fields(_task(job, 0)), "payload": blob})])
    grown = store.size_bytes()
    assert grown >= empty + len(blob) * 0.9  # pages and free space round it
    if store.backend == "sqlite":
        path = Path(store_url)
        wal = path.with_name(path.name + "-wal")
        on_disk = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        assert grown == on_disk


def test_size_bytes_of_a_memory_store() -> None:
    with Store.open(":memory:") as memory:
        empty = memory.size_bytes()
        job = _job("m", 1, created_at=1.0)
        blob = b"x" * 1_000_000
        memory.create_job(job, [TaskRecord(**{**_fields(_task(job, 0)), "payload": blob})])
        assert memory.size_bytes() >= empty + len(blob) * 0.9
