"""Tests of qhpc.store on SQLite (a temp file) and PostgreSQL (QHPC_TEST_POSTGRES_URL).

The PostgreSQL cases run in a fresh schema each (search_path set through the URL), so
they are independent of each other and of leftovers. Without QHPC_TEST_POSTGRES_URL
they are skipped, except under CI=true, where they fail: CI must exercise PostgreSQL.
`make unit` starts the private cluster (scripts/postgres.sh) and sets the variable.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text

from qhpc.store import (
    LATEST_VERSION,
    AccountRecord,
    ConflictError,
    JobRecord,
    NotFoundError,
    OutputPiece,
    ProgramRecord,
    ReservationRecord,
    SessionRecord,
    Store,
    StoreError,
    TaskOutcome,
    TaskRecord,
    TokenRecord,
    UsageRecord,
)
from qhpc.store import schema as store_schema
from qhpc.store.database import Database
from qhpc.store.migrations import MIGRATIONS, Migration, migrate

T = TypeVar("T")

# -- fixtures -------------------------------------------------------------------------


# -- record factories -----------------------------------------------------------------


def job_with_tasks(
    job_id: str,
    n: int = 3,
    *,
    user: str = "alice",
    account: str = "physics",
    centre: str | None = "jsc",
    resource: str = "aer",
    created_at: float = 100.0,
    kind: str = "batch",
    session_id: str | None = None,
) -> tuple[JobRecord, list[TaskRecord]]:
    job = JobRecord(
        job_id=job_id,
        user=user,
        account=account,
        centre=centre,
        resource=resource,
        kind=kind,
        priority=5,
        state="queued",
        created_at=created_at,
        finished_at=None,
        session_id=session_id,
        name=f"{job_id}-name",
        task_count=n,
    )
    tasks = [make_task(job, i) for i in range(n)]
    return job, tasks


def make_task(job: JobRecord, index: int, *, submitted_at: float | None = None) -> TaskRecord:
    return TaskRecord(
        task_id=f"{job.job_id}.{index}",
        job_id=job.job_id,
        resource=job.resource,
        index=index,
        state="queued",
        payload=bytes([index % 256]) * 8 + b"\x00\xff",
        payload_kind="sampler" if index % 2 == 0 else "estimator",
        submitted_at=job.created_at + index if submitted_at is None else submitted_at,
        started_at=None,
        finished_at=None,
        resource_task_id=None,
        error=None,
        attempts=0,
        session_id=job.session_id,
        account=job.account,
        user=job.user,
        priority=job.priority,
        estimated_seconds=0.25,
    )


def done(at: float = 200.0, *, state: str = "completed", qpu: float = 1.5) -> TaskOutcome:
    return TaskOutcome(
        state=state,
        result=b"result\x00",
        error=None,
        qpu_seconds=qpu,
        shots=1000,
        circuits=2,
        finished_at=at,
    )


def session(session_id: str = "s1", *, resource: str = "aer") -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        resource=resource,
        user="alice",
        account="physics",
        centre="jsc",
        mode="dedicated",
        opened_at=10.0,
        deadline=3610.0,
        closed_at=None,
        slurm_job_id="4242",
    )


def reservation(rid: str, start: float, end: float, *, resource: str = "aer") -> ReservationRecord:
    return ReservationRecord(
        reservation_id=rid,
        resource=resource,
        account="physics",
        start=start,
        end=end,
        allow_backfill=True,
        created_by="admin",
    )


def token(token_id: str, *, session_id: str | None = None, created_at: float = 1.0) -> TokenRecord:
    return TokenRecord(
        token_id=token_id,
        token_hash=f"sha256:{token_id}",
        role="session" if session_id else "user",
        subject="alice",
        account="physics",
        centre="jsc",
        session_id=session_id,
        resource="aer" if session_id else None,
        created_at=created_at,
        expires_at=None,
        revoked_at=None,
    )


def run_threads(n: int, target: Callable[[int], T]) -> list[T | BaseException]:
    """Runs target(0..n-1) on n threads released together; returns results or errors."""
    barrier = threading.Barrier(n)
    results: list[T | BaseException] = [RuntimeError("not run")] * n

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target(i)
        except BaseException as error:
            results[i] = error

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# -- opening and migrations -----------------------------------------------------------


def test_migrates_from_empty_and_reopens_idempotently(store_url: str) -> None:
    with Store.open(store_url) as first:
        assert first.schema_version == LATEST_VERSION
        first.upsert_account(AccountRecord("physics", 2.0, None))
    with Store.open(store_url) as second:
        assert second.schema_version == LATEST_VERSION
        assert second.get_account("physics").shares == 2.0
        with second._db.tx() as conn:
            versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
    assert sorted(versions) == [m.version for m in MIGRATIONS]


def test_migrated_schema_matches_table_definitions(store: Store) -> None:
    # Guards the rule of migrations.py: what the migrations build is what the code uses.
    inspector = sa_inspect(store._db.engine)
    assert set(inspector.get_table_names()) == set(store_schema.metadata.tables)
    for table in store_schema.metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == set(table.c.keys()), table.name
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        assert {i.name for i in table.indexes} <= indexes, table.name
    hash_index = next(
        i for i in inspector.get_indexes("tokens") if i["name"] == "ux_tokens_token_hash"
    )
    assert hash_index["unique"]


def test_newer_schema_is_refused(store_url: str) -> None:
    with Store.open(store_url) as opened, opened._db.tx(write=True) as conn:
        conn.execute(
            text(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (:v, 'x', 0)"
            ),
            {"v": LATEST_VERSION + 1},
        )
    with pytest.raises(StoreError, match="newer"):
        Store.open(store_url)


def test_failed_migration_rolls_back_and_keeps_version(store_url: str) -> None:
    def create_then_fail(conn: Any) -> None:
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("migration bug")

    broken = (*MIGRATIONS, Migration(LATEST_VERSION + 1, "broken", create_then_fail))
    db = Database.connect(store_url)
    try:
        with pytest.raises(RuntimeError, match="migration bug"):
            migrate(db, broken)
        assert "half_done" not in sa_inspect(db.engine).get_table_names()
        with db.tx() as conn:
            version = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
        assert version == LATEST_VERSION
    finally:
        db.close()


def test_concurrent_opens_migrate_once(store_url: str) -> None:
    results = run_threads(3, lambda _: Store.open(store_url))
    for result in results:
        assert isinstance(result, Store), result
        result.close()
    with Store.open(store_url) as opened, opened._db.tx() as conn:
        count = conn.execute(text("SELECT count(*) FROM schema_version")).scalar()
    assert count == len(MIGRATIONS)


def test_url_forms(tmp_path: Path) -> None:
    for url in (tmp_path / "a.db", str(tmp_path / "b.db"), f"sqlite:///{tmp_path / 'c.db'}"):
        with Store.open(url) as opened:
            assert opened.backend == "sqlite"
            opened.upsert_account(AccountRecord("x", 1.0, None))
    assert (tmp_path / "c.db").exists()
    with Store.open(tmp_path / "deeper" / "state.db") as nested:
        assert nested.list_accounts() == []


def test_memory_store_is_thread_safe() -> None:
    with Store.open(":memory:") as memory:
        job, tasks = job_with_tasks("m", 8)
        memory.create_job(job, tasks)
        results = run_threads(
            4, lambda i: [memory.finish_task(f"m.{j}", done()) for j in (i, i + 4)]
        )
        assert all(isinstance(r, list) for r in results), results
        assert len(memory.usage()) == 8


def test_unknown_scheme_is_named() -> None:
    with pytest.raises(StoreError, match="'mysql'"):
        Store.open("mysql://user@host/db")


def test_unreachable_postgres_fails_fast_without_leaking_password() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect") as caught:
        Store.open("postgresql://qhpc:s3cret@127.0.0.1:1/qhpc")
    assert "s3cret" not in str(caught.value)
    assert time.monotonic() - started < 10


def test_closed_store_refuses_work(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_accounts()


# -- jobs and tasks -------------------------------------------------------------------


def test_create_and_read_job(store: Store) -> None:
    job, tasks = job_with_tasks("j1", 3)
    store.create_job(job, tasks)
    assert store.get_job("j1") == job
    assert store.tasks_of_job("j1") == tasks
    assert store.get_task("j1.1") == tasks[1]
    assert store.task_result("j1.1") is None


def test_create_job_is_all_or_nothing(store: Store) -> None:
    job, tasks = job_with_tasks("j1", 2)
    store.create_job(job, tasks)
    with pytest.raises(ConflictError):
        store.create_job(job, tasks)
    # A task id clash rolls back the new job row as well.
    other, other_tasks = job_with_tasks("j2", 1)
    clashing = [*other_tasks, replace(tasks[0], job_id="j2", index=1)]
    with pytest.raises(ConflictError):
        store.create_job(replace(other, task_count=2), clashing)
    with pytest.raises(NotFoundError):
        store.get_job("j2")
    assert store.get_task("j1.0").job_id == "j1"


def test_create_job_validates_arguments(store: Store) -> None:
    job, tasks = job_with_tasks("j1", 2)
    with pytest.raises(ValueError, match="task_count"):
        store.create_job(job, tasks[:1])
    with pytest.raises(ValueError, match="kind"):
        store.create_job(replace(job, kind="bogus"), tasks)
    foreign = replace(tasks[1], job_id="other")
    with pytest.raises(ValueError, match="belongs to"):
        store.create_job(job, [tasks[0], foreign])
    with pytest.raises(NotFoundError):
        store.get_job("j1")


def test_unstorable_text_is_refused(store: Store) -> None:
    job, tasks = job_with_tasks("j1", 1)
    with pytest.raises(ValueError, match="NUL"):
        store.create_job(replace(job, name="a\x00b"), tasks)
    with pytest.raises(ValueError, match="UTF-8"):
        store.create_job(job, [replace(tasks[0], error="\ud800")])
    with pytest.raises(ValueError, match="NUL"):
        store.create_session(replace(session(), mode="\x00"))
    with pytest.raises(NotFoundError):
        store.get_job("j1")


def test_missing_ids_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.get_job("nope")
    with pytest.raises(NotFoundError):
        store.get_task("nope")
    with pytest.raises(NotFoundError):
        store.tasks_of_job("nope")
    with pytest.raises(NotFoundError):
        store.task_result("nope")
    with pytest.raises(NotFoundError):
        store.mark_task_running("nope", None, 1.0)
    with pytest.raises(NotFoundError):
        store.finish_task("nope", done())
    with pytest.raises(NotFoundError):
        store.cancel_queued_tasks("nope", 1.0)
    with pytest.raises(NotFoundError):
        store.set_job_state("nope", "running")
    with pytest.raises(NotFoundError):
        store.add_tasks("nope", [])


def test_list_jobs_filters_and_orders_newest_first(store: Store) -> None:
    specs = [
        ("a", "alice", "physics", "jsc", "aer", 1.0),
        ("b", "bob", "physics", "lrz", "qx", 2.0),
        ("c", "alice", "chem", None, "qx", 3.0),
        ("d", "bob", "chem", "jsc", "aer", 4.0),
    ]
    for job_id, user, account, centre, resource, at in specs:
        job, tasks = job_with_tasks(
            job_id, 1, user=user, account=account, centre=centre, resource=resource, created_at=at
        )
        store.create_job(job, tasks)
    store.set_job_state("d", "running")

    def ids(**filters: Any) -> list[str]:
        return [j.job_id for j in store.list_jobs(**filters)]

    assert ids() == ["d", "c", "b", "a"]
    assert ids(user="alice") == ["c", "a"]
    assert ids(account="chem") == ["d", "c"]
    assert ids(centre="jsc") == ["d", "a"]
    assert ids(resource="qx", user="bob") == ["b"]
    assert ids(state="running") == ["d"]
    assert ids(limit=2) == ["d", "c"]
    assert ids(limit=2, offset=2) == ["b", "a"]
    assert store.job_counts() == {
        "queued": 3,
        "running": 1,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }


def test_set_job_state_refuses_to_leave_final_states(store: Store) -> None:
    job, tasks = job_with_tasks("j1", 1)
    store.create_job(job, tasks)
    store.set_job_state("j1", "running")
    store.set_job_state("j1", "completed", finished_at=300.0)
    finished = store.get_job("j1")
    assert (finished.state, finished.finished_at) == ("completed", 300.0)
    with pytest.raises(ConflictError, match="completed"):
        store.set_job_state("j1", "running")
    with pytest.raises(ValueError, match="state"):
        store.set_job_state("j1", "paused")


def test_add_tasks_grows_session_jobs(store: Store) -> None:
    job, _ = job_with_tasks("s-job", 0, kind="session", session_id="s1")
    store.create_job(job, [])
    assert store.tasks_of_job("s-job") == []
    first = [make_task(job, 0), make_task(job, 1)]
    store.add_tasks("s-job", first)
    store.add_tasks("s-job", [make_task(job, 2)])
    assert store.get_job("s-job").task_count == 3
    assert [t.index for t in store.tasks_of_job("s-job")] == [0, 1, 2]
    assert store.get_task("s-job.2").session_id == "s1"
    with pytest.raises(ConflictError):
        store.add_tasks("s-job", [replace(make_task(job, 3), index=1)])
    assert store.get_job("s-job").task_count == 3
    store.set_job_state("s-job", "cancelled", finished_at=1.0)
    with pytest.raises(ConflictError, match="cancelled"):
        store.add_tasks("s-job", [make_task(job, 4)])


def test_record_finished_tasks_writes_behind_in_one_batch(store: Store) -> None:
    one, _ = job_with_tasks("s-a", 0, kind="session", session_id="sa")
    two, _ = job_with_tasks("s-b", 0, kind="session", session_id="sb", centre=None)
    store.create_job(one, [])
    store.create_job(two, [])
    batch = [
        (make_task(one, 0), done(10.0)),
        (make_task(two, 0), done(11.0, state="cancelled", qpu=0.0)),
        (make_task(one, 1), done(12.0, state="failed", qpu=0.5)),
    ]
    booked = store.record_finished_tasks(batch)
    assert [u.task_id for u in booked] == ["s-a.0", "s-a.1"]  # cancelled without QPU time: no usage
    assert booked[0].centre == "jsc"
    assert [t.state for t in store.tasks_of_job("s-a")] == ["completed", "failed"]
    assert store.get_job("s-a").task_count == 2
    assert store.task_result("s-a.0") == b"result\x00"
    assert store.get_task("s-b.0").finished_at == 11.0
    with pytest.raises(ConflictError):  # the same task twice is refused, nothing doubled
        store.record_finished_tasks([(make_task(one, 0), done())], relaxed=False)
    assert len(store.usage()) == 2
    store.set_job_state("s-b", "completed", finished_at=20.0)
    with pytest.raises(ConflictError, match="completed"):
        store.record_finished_tasks([(make_task(two, 1), done())])
    assert store.record_finished_tasks([]) == []


def test_relaxed_commits_survive_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "relaxed.db"
    script = f"""
import sys  # the path: test_store itself, and helpers beside it
sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
from test_store import job_with_tasks, make_task, done
from qhpc.store import Store
store = Store.open({str(path)!r})
job, _ = job_with_tasks("s", 0, kind="session", session_id="s")
store.create_job(job, [])
store.record_finished_tasks([(make_task(job, i), done()) for i in range(50)])
print("acked", flush=True)
import time; time.sleep(60)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "acked"
    finally:
        child.kill()
        child.wait()
    with Store.open(path) as reopened:
        assert len(reopened.tasks_of_job("s")) == 50
        assert len(reopened.usage()) == 50


def test_task_lifecycle_and_usage(store: Store) -> None:
    job, tasks = job_with_tasks("j1", 3)
    store.create_job(job, tasks)
    store.mark_task_running("j1.0", "remote-7", 150.0)
    running = store.get_task("j1.0")
    assert (running.state, running.attempts, running.resource_task_id, running.started_at) == (
        "running",
        1,
        "remote-7",
        150.0,
    )
    with pytest.raises(ConflictError, match="running"):
        store.mark_task_running("j1.0", "remote-8", 151.0)
    booked = store.finish_task("j1.0", done(200.0))
    assert booked is not None
    assert (booked.user, booked.account, booked.centre, booked.resource) == (
        "alice",
        "physics",
        "jsc",
        "aer",
    )
    assert store.task_result("j1.0") == b"result\x00"
    finished = store.get_task("j1.0")
    assert (finished.state, finished.finished_at) == ("completed", 200.0)
    with pytest.raises(ConflictError, match="already completed"):
        store.finish_task("j1.0", done(201.0))
    with pytest.raises(ConflictError):
        store.mark_task_running("j1.0", None, 202.0)
    # A task that failed without using the QPU books nothing; one that used it is charged.
    assert (
        store.finish_task("j1.1", TaskOutcome("failed", None, "bad circuit", 0.0, 0, 0, 210.0))
        is None
    )
    charged = store.finish_task("j1.2", TaskOutcome("failed", None, "lost", 0.75, 10, 1, 220.0))
    assert charged is not None and charged.qpu_seconds == 0.75
    assert store.get_task("j1.1").error == "bad circuit"
    assert [u.task_id for u in store.usage()] == ["j1.0", "j1.2"]
    with pytest.raises(ValueError, match="finishes as"):
        store.finish_task("j1.1", done(state="running"))


def test_queued_tasks_oldest_first_per_resource(store: Store) -> None:
    late, late_tasks = job_with_tasks("late", 2, created_at=50.0)
    early, early_tasks = job_with_tasks("early", 2, created_at=10.0)
    other, other_tasks = job_with_tasks("other", 1, created_at=0.0, resource="qx")
    for job, tasks in ((late, late_tasks), (early, early_tasks), (other, other_tasks)):
        store.create_job(job, tasks)
    store.mark_task_running("early.0", None, 60.0)
    assert [t.task_id for t in store.queued_tasks("aer")] == ["early.1", "late.0", "late.1"]
    assert [t.task_id for t in store.queued_tasks()] == ["other.0", "early.1", "late.0", "late.1"]
    assert [t.task_id for t in store.queued_tasks(limit=2)] == ["other.0", "early.1"]
    assert store.queue_length() == 4
    assert store.queue_length("qx") == 1


def test_cancel_queued_tasks_leaves_running_ones(store: Store) -> None:
    job, tasks = job_with_tasks("j1", 4)
    store.create_job(job, tasks)
    store.mark_task_running("j1.1", None, 1.0)
    store.finish_task("j1.3", done())
    assert store.cancel_queued_tasks("j1", 9.0) == ["j1.0", "j1.2"]
    states = [t.state for t in store.tasks_of_job("j1")]
    assert states == ["cancelled", "running", "cancelled", "completed"]
    assert store.get_task("j1.0").finished_at == 9.0
    assert store.cancel_queued_tasks("j1", 10.0) == []


def test_requeue_running_tasks_keeps_attempts(store: Store) -> None:
    aer_job, aer_tasks = job_with_tasks("a", 2)
    qx_job, qx_tasks = job_with_tasks("q", 1, resource="qx")
    store.create_job(aer_job, aer_tasks)
    store.create_job(qx_job, qx_tasks)
    for task_id in ("a.0", "a.1", "q.0"):
        store.mark_task_running(task_id, f"r-{task_id}", 5.0)
    assert store.requeue_running_tasks("aer") == ["a.0", "a.1"]
    requeued = store.get_task("a.0")
    assert (requeued.state, requeued.attempts, requeued.started_at) == ("queued", 1, None)
    assert requeued.resource_task_id == "r-a.0"
    assert store.get_task("q.0").state == "running"
    assert store.requeue_running_tasks() == ["q.0"]
    store.mark_task_running("a.0", "r2", 6.0)
    assert store.get_task("a.0").attempts == 2


# -- sessions, reservations, accounts, tokens -----------------------------------------


def test_sessions(store: Store) -> None:
    store.create_session(session("s1"))
    store.create_session(session("s2", resource="qx"))
    assert store.get_session("s1") == session("s1")
    with pytest.raises(ConflictError):
        store.create_session(session("s1"))
    store.close_session("s1", 99.0)
    assert store.get_session("s1").closed_at == 99.0
    with pytest.raises(ConflictError, match="closed"):
        store.close_session("s1", 100.0)
    with pytest.raises(NotFoundError):
        store.close_session("nope", 1.0)
    with pytest.raises(NotFoundError):
        store.get_session("nope")
    assert [s.session_id for s in store.list_sessions()] == ["s2"]
    assert [s.session_id for s in store.list_sessions(open_only=False)] == ["s1", "s2"]
    assert [s.session_id for s in store.list_sessions(open_only=False, resource="aer")] == ["s1"]


def test_reservations(store: Store) -> None:
    store.create_reservation(reservation("r1", 100.0, 200.0))
    store.create_reservation(reservation("r2", 200.0, 300.0))  # touching is not overlapping
    store.create_reservation(reservation("r3", 150.0, 250.0, resource="qx"))
    for start, end in ((150.0, 160.0), (50.0, 101.0), (299.0, 400.0), (0.0, 1000.0)):
        with pytest.raises(ConflictError, match="overlaps"):
            store.create_reservation(reservation("bad", start, end))
    with pytest.raises(ValueError, match="start before"):
        store.create_reservation(reservation("empty", 5.0, 5.0))
    with pytest.raises(ConflictError):
        store.create_reservation(reservation("r1", 500.0, 600.0))
    assert [r.reservation_id for r in store.list_reservations()] == ["r1", "r3", "r2"]
    assert [r.reservation_id for r in store.list_reservations("aer", ending_after=200.0)] == ["r2"]
    assert store.list_reservations("qx") == [reservation("r3", 150.0, 250.0, resource="qx")]
    store.delete_reservation("r1")
    with pytest.raises(NotFoundError):
        store.delete_reservation("r1")
    store.create_reservation(reservation("r4", 150.0, 160.0))


def test_overlapping_reservations_race_one_wins(store: Store) -> None:
    results = run_threads(4, lambda i: store.create_reservation(reservation(f"r{i}", i, 100.0 + i)))
    assert sum(r is None for r in results) == 1, results
    assert all(r is None or isinstance(r, ConflictError) for r in results), results
    assert len(store.list_reservations()) == 1


def test_accounts(store: Store) -> None:
    store.upsert_account(AccountRecord("physics", 1.0, "jsc"))
    store.upsert_account(AccountRecord("chem", 3.0, None))
    store.upsert_account(AccountRecord("physics", 2.5, None))
    assert store.get_account("physics") == AccountRecord("physics", 2.5, None)
    assert [a.name for a in store.list_accounts()] == ["chem", "physics"]
    with pytest.raises(NotFoundError):
        store.get_account("nope")


def test_tokens(store: Store) -> None:
    store.create_token(token("t1", created_at=1.0))
    store.create_token(token("t2", session_id="s1", created_at=2.0))
    store.create_token(token("t3", session_id="s1", created_at=3.0))
    assert store.token_by_hash("sha256:t2") == token("t2", session_id="s1", created_at=2.0)
    assert store.token_by_hash("sha256:unknown") is None
    with pytest.raises(ConflictError):
        store.create_token(replace(token("t1"), token_id="t9"))  # same hash
    with pytest.raises(ValueError, match="role"):
        store.create_token(replace(token("t8"), role="root"))
    store.revoke_token("t2", 10.0)
    store.revoke_token("t2", 20.0)
    assert store.token_by_hash("sha256:t2").revoked_at == 10.0  # type: ignore[union-attr]
    with pytest.raises(NotFoundError):
        store.revoke_token("nope", 1.0)
    assert store.revoke_session_tokens("s1", 30.0) == ["t3"]
    assert store.revoke_session_tokens("s1", 31.0) == []
    assert [t.token_id for t in store.list_tokens()] == ["t1", "t2", "t3"]
    assert [t.token_id for t in store.list_tokens(include_revoked=False)] == ["t1"]
    assert store.list_tokens(subject="bob") == []


# -- accounting -----------------------------------------------------------------------


def test_usage_filters_and_rollups(store: Store) -> None:
    rows = [
        ("a", "alice", "physics", "jsc", "aer"),
        ("b", "bob", "physics", "lrz", "qx"),
        ("c", "carol", "chem", None, "aer"),
    ]
    for n, (job_id, user, account, centre, resource) in enumerate(rows):
        job, tasks = job_with_tasks(
            job_id, 2, user=user, account=account, centre=centre, resource=resource
        )
        store.create_job(job, tasks)
        for i, task in enumerate(tasks):
            store.finish_task(task.task_id, done(at=10.0 * n + i, qpu=1.0 + n))
    assert len(store.usage()) == 6
    assert [u.task_id for u in store.usage(since=10.0, until=20.0)] == ["b.0", "b.1"]
    assert [u.task_id for u in store.usage(user="carol")] == ["c.0", "c.1"]
    assert [u.task_id for u in store.usage(account="physics", resource="aer")] == ["a.0", "a.1"]
    assert [u.task_id for u in store.usage(centre="lrz")] == ["b.0", "b.1"]
    by_account = store.usage_rollup("account")
    assert by_account == [
        {"group": "chem", "tasks": 2, "qpu_seconds": 6.0, "shots": 2000, "circuits": 4},
        {"group": "physics", "tasks": 4, "qpu_seconds": 6.0, "shots": 4000, "circuits": 8},
    ]
    assert [(r["group"], r["tasks"]) for r in store.usage_rollup("centre")] == [
        ("jsc", 2),
        ("lrz", 2),
        (None, 2),
    ]
    assert [r["group"] for r in store.usage_rollup("job")] == ["a", "b", "c"]
    assert [r["group"] for r in store.usage_rollup("user", since=10.0)] == ["bob", "carol"]
    assert store.usage_rollup("resource", until=0.5) == [
        {"group": "aer", "tasks": 1, "qpu_seconds": 1.0, "shots": 1000, "circuits": 2}
    ]
    with pytest.raises(ValueError, match="group"):
        store.usage_rollup("day")


# -- durability and concurrency -------------------------------------------------------

_ACK_THEN_HANG = """
import sys, time
from qhpc.store import JobRecord, Store, TaskRecord
store = Store.open(sys.argv[1])
job = JobRecord("durable", "alice", "physics", None, "aer", "batch", 0, "queued", 1.0,
                None, None, None, 200)
tasks = [TaskRecord(f"durable.{i}", "durable", "aer", i, "queued", b"p%d" % i, "sampler",
                    1.0, None, None, None, None, 0, None, "physics", "alice", 0, 0.1)
         for i in range(200)]
store.create_job(job, tasks)
print("acked", flush=True)
time.sleep(60)
"""


def test_acknowledged_job_survives_kill_9(store_url: str) -> None:
    Store.open(store_url).close()  # migrate first, so the child only writes the job
    child = subprocess.Popen(
        [sys.executable, "-c", _ACK_THEN_HANG, store_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "acked"
    finally:
        child.kill()  # SIGKILL: no atexit, no connection close, no checkpoint
        child.wait(timeout=30)
    assert child.returncode == -9
    with Store.open(store_url) as reopened:
        assert reopened.get_job("durable").task_count == 200
        tasks = reopened.tasks_of_job("durable")
        assert [t.payload for t in tasks] == [b"p%d" % i for i in range(200)]


def test_threads_finishing_different_tasks_lose_nothing(store: Store) -> None:
    job, tasks = job_with_tasks("j", 40)
    store.create_job(job, tasks)

    def finish_share(worker: int) -> int:
        for task in tasks[worker::4]:
            store.mark_task_running(task.task_id, f"r{worker}", 1.0)
            store.finish_task(task.task_id, done(at=2.0 + task.index, qpu=0.5))
        return worker

    assert run_threads(4, finish_share) == [0, 1, 2, 3]
    finished = store.tasks_of_job("j")
    assert {t.state for t in finished} == {"completed"}
    assert all(t.attempts == 1 for t in finished)
    assert len(store.usage()) == 40
    assert store.usage_rollup("job") == [
        {"group": "j", "tasks": 40, "qpu_seconds": 20.0, "shots": 40_000, "circuits": 80}
    ]


def test_racing_finishers_book_usage_exactly_once(store: Store) -> None:
    job, tasks = job_with_tasks("j", 6)
    store.create_job(job, tasks)

    def finish(i: int) -> UsageRecord | None:
        # Threads 2k and 2k+1 race for task k; all twelve start together.
        return store.finish_task(tasks[i // 2].task_id, done(at=5.0 + i))

    results = run_threads(12, finish)
    for k in range(6):
        pair = results[2 * k : 2 * k + 2]
        winners = [r for r in pair if isinstance(r, UsageRecord)]
        losers = [r for r in pair if isinstance(r, ConflictError)]
        assert (len(winners), len(losers)) == (1, 1), pair
    assert sorted(u.task_id for u in store.usage()) == [t.task_id for t in tasks]


# -- round trips of arbitrary records -------------------------------------------------

# Text the store accepts: UTF-8 without NUL (see test_unstorable_text_is_refused).
_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
_times = st.floats(allow_nan=False, allow_infinity=False)
_int32 = st.integers(-(2**31), 2**31 - 1)


@st.composite
def _jobs(draw: st.DrawFn) -> tuple[JobRecord, list[TaskRecord]]:
    job_id = uuid.uuid4().hex + draw(_text)
    job = JobRecord(
        job_id=job_id,
        user=draw(_text),
        account=draw(_text),
        centre=draw(st.none() | _text),
        resource=draw(_text),
        kind=draw(st.sampled_from(["batch", "session", "hybrid"])),
        priority=draw(_int32),
        state=draw(st.sampled_from(["queued", "running", "completed"])),
        created_at=draw(_times),
        finished_at=draw(st.none() | _times),
        session_id=draw(st.none() | _text),
        name=draw(st.none() | _text),
        task_count=draw(st.integers(0, 3)),
    )
    tasks = [
        TaskRecord(
            task_id=f"{job_id}/{i}{draw(_text)}",
            job_id=job_id,
            resource=draw(_text),
            index=i,
            state=draw(st.sampled_from(["queued", "running", "failed"])),
            payload=draw(st.binary(max_size=64)),
            payload_kind=draw(st.sampled_from(["sampler", "estimator"])),
            submitted_at=draw(_times),
            started_at=draw(st.none() | _times),
            finished_at=draw(st.none() | _times),
            resource_task_id=draw(st.none() | _text),
            error=draw(st.none() | _text),
            attempts=draw(st.integers(0, 1000)),
            session_id=draw(st.none() | _text),
            account=draw(_text),
            user=draw(_text),
            priority=draw(_int32),
            estimated_seconds=draw(_times),
        )
        for i in range(job.task_count)
    ]
    return job, tasks


# One store serves every example (ids are unique), hence the health-check exemption.
_examples = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_examples
@given(case=_jobs())
def test_jobs_and_tasks_round_trip(store: Store, case: tuple[JobRecord, list[TaskRecord]]) -> None:
    job, tasks = case
    store.create_job(job, tasks)
    assert store.get_job(job.job_id) == job
    assert store.tasks_of_job(job.job_id) == tasks


@_examples
@given(
    hash_=_text,
    subject=_text,
    scope=st.none() | _text,
    times=st.tuples(_times, st.none() | _times, st.none() | _times),
    result=st.binary(max_size=256),
)
def test_tokens_and_results_round_trip(
    store: Store,
    hash_: str,
    subject: str,
    scope: str | None,
    times: tuple[float, float | None, float | None],
    result: bytes,
) -> None:
    unique = uuid.uuid4().hex
    record = TokenRecord(
        unique, unique + hash_, "centre", subject, scope, scope, scope, scope, *times
    )
    store.create_token(record)
    assert store.token_by_hash(record.token_hash) == record
    job, tasks = job_with_tasks(unique, 1)
    store.create_job(job, tasks)
    store.finish_task(tasks[0].task_id, replace(done(), result=result))
    assert store.task_result(tasks[0].task_id) == result


def test_finishing_a_task_settles_its_job_in_the_same_transaction(store: Store) -> None:
    job, tasks = job_with_tasks("settle", 2)
    store.create_job(job, tasks)
    store.mark_task_running("settle.0", None, 101.0)
    store.finish_task("settle.0", done(102.0))
    assert store.get_job("settle").state == "running"  # one task still queued
    store.finish_task("settle.1", done(103.0, state="failed", qpu=0.0))
    settled = store.get_job("settle")
    assert (settled.state, settled.finished_at) == ("failed", 103.0)


# -- programs of hybrid jobs --------------------------------------------------------------


def _hybrid_job(job_id: str) -> tuple[JobRecord, ProgramRecord]:
    job, _ = job_with_tasks(job_id, 0, kind="hybrid")
    program = ProgramRecord(
        job_id=job_id, source="def main(qpu):\n    return 1\n", entry_point=None, entry="main",
        args='{"x": 1}', timeout=60.0, max_iterations=10, status="queued",
    )  # fmt: skip
    return job, program


def test_program_lifecycle(store: Store) -> None:
    job, program = _hybrid_job("h1")
    store.create_program(job, program)
    assert store.get_program("h1") == program
    assert [p.job_id for p in store.open_programs()] == ["h1"]
    store.start_program("h1", "s1", 101.0)
    running = store.get_program("h1")
    assert (running.status, running.session_id, running.started_at) == ("running", "s1", 101.0)
    assert store.get_job("h1").state == "running"
    with pytest.raises(ConflictError, match="already running"):
        store.start_program("h1", "s2", 102.0)
    finished = replace(
        running, status="timeout", message="wall-clock timeout", return_value=None,
        timings='{"run_s": 1.5}', progress='{"iteration": 3}', iterations=3, qpu_calls=7,
        finished_at=110.0,
    )  # fmt: skip
    store.finish_program(finished, "failed")
    assert store.get_program("h1") == finished
    job_after = store.get_job("h1")
    assert (job_after.state, job_after.finished_at) == ("failed", 110.0)
    assert store.open_programs() == []
    with pytest.raises(ConflictError, match="already timeout"):
        store.fail_program("h1", "again", 120.0)


def test_program_creation_is_atomic_and_validated(store: Store) -> None:
    job, program = _hybrid_job("h2")
    with pytest.raises(ValueError, match="hybrid"):
        store.create_program(replace(job, kind="batch"), program)
    with pytest.raises(ValueError, match="unknown program status"):
        store.create_program(job, replace(program, status="weird"))
    store.create_program(job, program)
    with pytest.raises(ConflictError):
        store.create_program(job, program)  # the job row exists: nothing new is stored
    with pytest.raises(NotFoundError):
        store.get_program("nope")
    with pytest.raises(NotFoundError):
        store.start_program("nope", "s", 1.0)
    failed = store.fail_program("h2", "the broker restarted", 130.0)
    assert store.get_program("h2") == failed
    assert store.get_job("h2").state == "failed"


def test_program_output_is_appended_and_read_from_byte_offsets(store: Store) -> None:
    job, program = _hybrid_job("o1")
    store.create_program(job, program)
    chunk = store_schema.OUTPUT_CHUNK
    assert store.read_output("o1", "stdout") == (b"", 0)
    first = bytes(range(256)) * (chunk // 256) + b"\x00tail"  # over one row, NUL included
    store.append_output([OutputPiece("o1", "stdout", 0, first[:100])])
    store.append_output(
        [OutputPiece("o1", "stdout", 100, first[100:]), OutputPiece("o1", "stderr", 0, b"e")]
    )
    assert store.read_output("o1", "stdout") == (first, len(first))
    assert store.read_output("o1", "stdout", chunk + 1) == (first[chunk + 1 :], len(first))
    assert store.read_output("o1", "stdout", 10 * chunk) == (b"", len(first))
    assert store.read_output("o1", "stderr") == (b"e", 1)
    # An offset inside what is stored replaces the rest (a truncation marker does so).
    store.append_output([OutputPiece("o1", "stdout", 50, b"[cut]")])
    assert store.read_output("o1", "stdout") == (first[:50] + b"[cut]", 55)
    with pytest.raises(ValueError, match="55 bytes long"):
        store.append_output([OutputPiece("o1", "stderr", 1, b"ok"),
                             OutputPiece("o1", "stdout", 56, b"gap")])  # fmt: skip
    assert store.read_output("o1", "stderr") == (b"e", 1)  # the whole call was refused
    with pytest.raises(ValueError, match="unknown output stream"):
        store.append_output([OutputPiece("o1", "stdin", 0, b"x")])
    store.fail_program("o1", "interrupted", 120.0)  # finishing keeps the output
    assert store.read_output("o1", "stdout")[1] == 55


def test_migration_3_moves_stored_output_into_byte_rows(store_url: str) -> None:
    db = Database.connect(store_url)
    try:
        migrate(db, MIGRATIONS[:2])
        job, _ = job_with_tasks("old", 0, kind="hybrid")
        text_out = "héllo\n" * (store_schema.OUTPUT_CHUNK // 4)
        with db.tx(write=True) as conn:
            # The row as version 2 had it: purged_at came with migration 5, pool with 7.
            row = {
                k: v for k, v in store_schema.to_row(job).items() if k not in ("purged_at", "pool")
            }
            conn.execute(store_schema.jobs.insert().values(row))
            conn.execute(
                text(
                    "INSERT INTO programs (job_id, entry, args, timeout, status, iterations, "
                    "qpu_calls, stdout, stderr) VALUES ('old', 'main', '{}', 1, 'completed', "
                    "0, 0, :out, '')"
                ),
                {"out": text_out},
            )
        assert migrate(db) == LATEST_VERSION
    finally:
        db.close()
    with Store.open(store_url) as opened:
        assert opened.read_output("old", "stdout") == (text_out.encode(), len(text_out.encode()))
        assert opened.read_output("old", "stderr") == (b"", 0)
        assert opened.get_program("old").status == "completed"


def test_the_pool_of_a_job_and_a_session_round_trips(store: Store) -> None:
    job, tasks = job_with_tasks("pooled", 1)
    store.create_job(replace(job, pool="sims"), tasks)
    store.create_job(*job_with_tasks("direct", 1))
    assert store.get_job("pooled").pool == "sims"
    assert store.get_job("direct").pool is None
    assert {j.job_id: j.pool for j in store.list_jobs()} == {"pooled": "sims", "direct": None}
    store.create_session(replace(session("s1"), pool="sims"))
    store.create_session(session("s2"))
    assert store.get_session("s1").pool == "sims"
    assert {s.session_id: s.pool for s in store.list_sessions()} == {"s1": "sims", "s2": None}


def test_migration_7_keeps_jobs_and_sessions_of_version_6(store_url: str) -> None:
    db = Database.connect(store_url)
    try:
        migrate(db, tuple(m for m in MIGRATIONS if m.version <= 6))
        job, _ = job_with_tasks("old", 0)
        old_session = session("s-old")
        with db.tx(write=True) as conn:
            row = {k: v for k, v in store_schema.to_row(job).items() if k != "pool"}
            conn.execute(store_schema.jobs.insert().values(row))
            row = {k: v for k, v in store_schema.to_row(old_session).items() if k != "pool"}
            conn.execute(store_schema.sessions.insert().values(row))
        assert migrate(db) == LATEST_VERSION
    finally:
        db.close()
    with Store.open(store_url) as opened:
        assert opened.get_job("old") == job
        assert opened.get_session("s-old") == old_session
        assert opened.get_job("old").pool is None
