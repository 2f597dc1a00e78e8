"""Store methods for hybrid jobs' programs (a mixin of :class:`qhpc.store.Store`).

A program row lives next to its job row (``jobs.kind = 'hybrid'``) and both change
in one transaction, so a reader never sees a finished program with an open job.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import Connection, insert, select, update

from qhpc.store import schema
from qhpc.store._idempotency import claim_key
from qhpc.store.database import Database
from qhpc.store.errors import ConflictError, NotFoundError
from qhpc.store.records import (
    FINAL_STATES,
    PROGRAM_STATUSES,
    IdempotencyRecord,
    JobRecord,
    ProgramRecord,
)

_p = schema.programs
_j = schema.jobs
#: program statuses that are not final
OPEN_PROGRAM_STATUSES: tuple[str, ...] = ("queued", "running")


class ProgramsMixin:
    _db: Database

    def create_program(
        self,
        job: JobRecord,
        program: ProgramRecord,
        idempotency: IdempotencyRecord | None = None,
    ) -> None:
        """Stores a hybrid job and its program (and the key of its submission, if given)
        in one transaction; durable on return. ConflictError if the key is live already."""
        if job.kind != "hybrid" or job.task_count != 0:
            raise ValueError("a program belongs to a hybrid job created without tasks")
        if program.job_id != job.job_id:
            raise ValueError(f"program of {program.job_id!r} given with job {job.job_id!r}")
        if idempotency is not None and idempotency.job_id != job.job_id:
            raise ValueError(f"idempotency key of {idempotency.job_id!r} given with {job.job_id!r}")
        _check_status(program.status)
        with self._db.tx(write=True) as conn:
            conn.execute(insert(_j).values(schema.to_row(job)))
            conn.execute(insert(_p).values(schema.to_row(program)))
            if idempotency is not None:
                claim_key(conn, idempotency)

    def get_program(self, job_id: str) -> ProgramRecord:
        with self._db.tx() as conn:
            row = conn.execute(select(_p).where(_p.c.job_id == job_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no program for job {job_id!r}")
        return schema.from_row(ProgramRecord, row)

    def open_programs(self) -> list[ProgramRecord]:
        """Programs not finished yet (queued or running), oldest job first."""
        with self._db.tx() as conn:
            rows = conn.execute(
                select(_p).where(_p.c.status.in_(OPEN_PROGRAM_STATUSES)).order_by(_p.c.job_id)
            ).all()
        return [schema.from_row(ProgramRecord, r) for r in rows]

    def start_program(self, job_id: str, session_id: str, started_at: float) -> None:
        """queued → running, with the session its tasks go to; the job becomes running."""
        with self._db.tx(write=True) as conn:
            done = conn.execute(
                update(_p)
                .where(_p.c.job_id == job_id, _p.c.status == "queued")
                .values(status="running", session_id=session_id, started_at=started_at)
            ).rowcount
            if done == 0:
                raise self._not_open(conn, job_id)
            conn.execute(
                update(_j)
                .where(_j.c.job_id == job_id, _j.c.state.not_in(FINAL_STATES))
                .values(state="running")
            )

    def finish_program(self, outcome: ProgramRecord, job_state: str) -> None:
        """Stores a program's outcome and ends its job (``job_state``) in one transaction.

        ``outcome`` is the full record as it should be stored; ConflictError if the
        program had already finished.
        """
        _check_status(outcome.status)
        if outcome.status in OPEN_PROGRAM_STATUSES or job_state not in FINAL_STATES:
            raise ValueError(f"{outcome.status!r}/{job_state!r} is not a final program state")
        row = schema.to_row(outcome)
        for fixed in ("job_id", "source", "entry_point", "entry", "args"):
            del row[fixed]
        with self._db.tx(write=True) as conn:
            done = conn.execute(
                update(_p)
                .where(_p.c.job_id == outcome.job_id, _p.c.status.in_(OPEN_PROGRAM_STATUSES))
                .values(row)
            ).rowcount
            if done == 0:
                raise self._not_open(conn, outcome.job_id)
            conn.execute(
                update(_j)
                .where(_j.c.job_id == outcome.job_id, _j.c.state.not_in(FINAL_STATES))
                .values(state=job_state, finished_at=outcome.finished_at)
            )

    def fail_program(self, job_id: str, message: str, at: float) -> ProgramRecord:
        """Ends an unfinished program as failed with ``message``; returns the stored record."""
        record = replace(self.get_program(job_id), status="failed", message=message, finished_at=at)
        self.finish_program(record, "failed")
        return record

    @staticmethod
    def _not_open(conn: Connection, job_id: str) -> Exception:
        status = conn.execute(select(_p.c.status).where(_p.c.job_id == job_id)).scalar()
        if status is None:
            return NotFoundError(f"no program for job {job_id!r}")
        return ConflictError(f"the program of job {job_id!r} is already {status}")


def _check_status(status: str) -> None:
    if status not in PROGRAM_STATUSES:
        raise ValueError(f"unknown program status {status!r}; one of {PROGRAM_STATUSES}")
