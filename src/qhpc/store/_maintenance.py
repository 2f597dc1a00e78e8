"""Store methods for the data lifecycle: purging what is kept for a limited time, and
how much room the store takes (a mixin of :class:`qhpc.store.Store`).

Retention splits a job in two. Its *accounting* — the job and task rows (who, which
account and centre, which resource, states, timestamps, attempts, errors), the
program's status and counters, and every ``usage`` row — is kept for ever, so
rollups and Slurm's accounting read the same before and after a purge. What the job
*carried* — task payloads (the circuits) and results, a program's source, arguments,
return value, progress and output — is kept for a limited time:
:meth:`MaintenanceMixin.purge_jobs` drops it and stamps ``jobs.purged_at``, so that a
later read of a result is told "purged" (:class:`PurgedError`, HTTP 410) rather than
"not found".

A purge works in batches of whole jobs (at most ``max_jobs`` jobs and about
``max_tasks`` tasks, one transaction each) so that it never holds SQLite's single
write lock for long; the caller (the broker's retention schedule, ``qhpc store
purge``) loops and pauses between batches. Only final jobs are purged, and a final
job takes no more tasks or output, so a purge never races with the job's writers.

SQLite reuses the pages a purge frees but does not shrink its file; ``VACUUM`` (with
the broker stopped) gives the space back to the filesystem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    ColumnElement,
    Connection,
    ScalarSelect,
    and_,
    delete,
    func,
    select,
    text,
    update,
)

from qhpc.store import schema
from qhpc.store.database import Database
from qhpc.store.records import FINAL_STATES

_j = schema.jobs
_t = schema.tasks
_p = schema.programs
_o = schema.program_output

#: what a purge leaves in a program's columns that held what the user sent or got
#: (``args`` cannot be NULL: the JSON ``null`` says "nothing kept")
_PURGED_PROGRAM: dict[str, str | None] = {
    "source": None, "args": "null", "return_value": None, "progress": None,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge dropped, or (a dry run) would drop.

    ``bytes`` adds up the lengths of the payloads, results, output and sources
    dropped (characters for text columns): what the store no longer holds, not
    what the filesystem gets back.
    """

    jobs: int = 0
    tasks: int = 0
    bytes: int = 0

    def __add__(self, other: PurgeReport) -> PurgeReport:
        return PurgeReport(
            self.jobs + other.jobs, self.tasks + other.tasks, self.bytes + other.bytes
        )


def _expired(finished_before: float) -> ColumnElement[bool]:
    """Jobs whose carried data is due: final, ended before the cutoff, not purged yet."""
    return and_(
        _j.c.purged_at.is_(None),
        _j.c.finished_at < finished_before,
        _j.c.state.in_(FINAL_STATES),
    )


class MaintenanceMixin:
    _db: Database

    def purgeable(self, finished_before: float) -> PurgeReport:
        """What :meth:`purge_jobs` would drop of the jobs that ended before
        ``finished_before`` (UNIX seconds), all batches together; changes nothing."""
        due = _expired(finished_before)
        ids = select(_j.c.job_id).where(due).scalar_subquery()
        with self._db.tx() as conn:
            jobs = conn.execute(select(func.count()).select_from(_j).where(due)).scalar_one()
            tasks, size = _measure(conn, ids)
        return PurgeReport(int(jobs), tasks, size)

    def purge_jobs(
        self, finished_before: float, at: float, *, max_jobs: int = 100, max_tasks: int = 2000
    ) -> PurgeReport:
        """Drops the carried data of the oldest jobs that ended before
        ``finished_before`` and marks them purged at ``at``; one batch, one transaction.

        A batch holds at most ``max_jobs`` jobs and, past its first job, no more than
        ``max_tasks`` tasks (a job is never split). An empty report means nothing is
        due any more. Usage rows are never touched.
        """
        if max_jobs < 1 or max_tasks < 1:
            raise ValueError("a purge batch holds at least one job and one task")
        with self._db.tx(write=True, lock="qhpc-purge") as conn:
            due = conn.execute(
                select(_j.c.job_id, _j.c.task_count)
                .where(_expired(finished_before))
                .order_by(_j.c.finished_at, _j.c.job_id)
                .limit(max_jobs)
            ).all()
            ids: list[str] = []
            tasks_in_batch = 0
            for job_id, task_count in due:
                if ids and tasks_in_batch + task_count > max_tasks:
                    break
                ids.append(job_id)
                tasks_in_batch += task_count
            if not ids:
                return PurgeReport()
            tasks, size = _measure(conn, ids)
            conn.execute(update(_t).where(_t.c.job_id.in_(ids)).values(result=None, payload=b""))
            conn.execute(delete(_o).where(_o.c.job_id.in_(ids)))
            conn.execute(update(_p).where(_p.c.job_id.in_(ids)).values(_PURGED_PROGRAM))
            conn.execute(update(_j).where(_j.c.job_id.in_(ids)).values(purged_at=at))
        return PurgeReport(len(ids), tasks, size)

    def size_bytes(self) -> int:
        """Bytes the store takes: an SQLite file with its write-ahead log; an in-memory
        database's pages; on PostgreSQL the store's tables with their indexes and
        TOAST, in the schema the store uses (other schemas of the database excluded)."""
        path = self._db.path
        if path is not None:
            return sum(_file_size(path.with_name(path.name + end)) for end in ("", "-wal"))
        with self._db.tx() as conn:
            if self._db.is_sqlite:
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
                page_size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
                return int(pages) * int(page_size)
            size = conn.execute(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
                    "AND c.relname = ANY(:names)"
                ),
                {"names": sorted(schema.metadata.tables)},
            ).scalar_one()
        return int(size)


def _measure(conn: Connection, ids: Sequence[str] | ScalarSelect[str]) -> tuple[int, int]:
    """The tasks of the jobs ``ids`` and the bytes the purge drops of them."""
    length = func.length
    task_bytes = func.coalesce(length(_t.c.result), 0) + length(_t.c.payload)
    tasks, task_total = conn.execute(
        select(func.count(), func.coalesce(func.sum(task_bytes), 0)).where(_t.c.job_id.in_(ids))
    ).one()
    output = conn.execute(
        select(func.coalesce(func.sum(length(_o.c.data)), 0)).where(_o.c.job_id.in_(ids))
    ).scalar_one()
    carried = (
        func.coalesce(length(_p.c.source), 0)
        + func.coalesce(length(_p.c.return_value), 0)
        + func.coalesce(length(_p.c.progress), 0)
    )
    programs = conn.execute(
        select(func.coalesce(func.sum(carried), 0)).where(_p.c.job_id.in_(ids))
    ).scalar_one()
    # PostgreSQL sums BIGINT into NUMERIC (Decimal): report plain ints.
    return int(tasks), int(task_total) + int(output) + int(programs)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
