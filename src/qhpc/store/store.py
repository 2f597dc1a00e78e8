"""The broker's persistent state behind one interface, on SQLite or PostgreSQL.

``Store.open(url)`` picks the backend from the URL, migrates the schema (see
``migrations.py``) and returns a thread-safe store: every method runs in its own
transaction on a pooled connection, so the broker's threads may share one ``Store``.

Durability, per backend. A method that changes data returns only after its
transaction committed; what "committed" survives depends on the backend:

* SQLite (a file, the embedded default): WAL journal with ``synchronous = FULL``. A
  commit returns after the WAL has been fsync'd, so a returned ``create_job`` survives
  a crash of the broker process *and* power loss / a kernel crash (as far as the disk
  honours fsync). ``synchronous = NORMAL`` would save an fsync per commit but lets the
  last commits roll back on power loss, which would break "acknowledged means stored".
  A ``:memory:`` database is, of course, lost with the process.
* PostgreSQL: a commit returns after the server has flushed its WAL, as long as the
  server runs with its defaults ``fsync = on`` and ``synchronous_commit = on``; the
  store does not change them. With synchronous replication configured, also after a
  standby confirmed. A server set to ``synchronous_commit = off`` can lose the last
  ~0.6 s of acknowledged work on a server crash.

Exactly-once accounting: :meth:`Store.finish_task` moves a task to its final state and
books its usage in one transaction, guarded by ``WHERE state IN ('queued', 'running')``
and by the primary key of ``usage.task_id``; of two concurrent finishers exactly one
wins and the other gets :class:`ConflictError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from sqlalchemy import Connection, func, insert, select, update

from qhpc.states import TaskStatus
from qhpc.store import schema
from qhpc.store._admin import AdminMixin
from qhpc.store._drains import DrainsMixin
from qhpc.store._idempotency import IdempotencyMixin, claim_key
from qhpc.store._maintenance import MaintenanceMixin
from qhpc.store._output import OutputMixin
from qhpc.store._programs import ProgramsMixin
from qhpc.store._usage import UsageMixin
from qhpc.store.database import Database
from qhpc.store.errors import ConflictError, NotFoundError, PurgedError
from qhpc.store.migrations import migrate
from qhpc.store.records import (
    FINAL_STATES,
    JOB_KINDS,
    JOB_STATES,
    OPEN_TASK_STATES,
    PAYLOAD_KINDS,
    TASK_STATES,
    IdempotencyRecord,
    JobRecord,
    TaskOutcome,
    TaskRecord,
    UsageRecord,
)

_j = schema.jobs
_t = schema.tasks
# Everything but the result blob, which only task_result reads.
_TASK_COLUMNS = [c for c in _t.c if c.name != "result"]


class Store(
    AdminMixin, ProgramsMixin, OutputMixin, IdempotencyMixin, MaintenanceMixin, DrainsMixin,
    UsageMixin,
):  # fmt: skip
    """Jobs, tasks, sessions, reservations, accounts, tokens and usage of one broker."""

    def __init__(self, db: Database, schema_version: int) -> None:
        self._db = db
        self._schema_version = schema_version

    @classmethod
    def open(cls, url: str | Path) -> Store:
        """Opens (creating or migrating as needed) the store at ``url``.

        ``url`` is ``postgresql://user:password@host:port/db``, ``sqlite:///path``, a
        plain file path (SQLite) or ``":memory:"``. Query parameters of a PostgreSQL
        URL go to libpq, e.g. ``?sslmode=require`` or
        ``?options=-csearch_path%3Dqhpc`` to keep the tables in schema ``qhpc``.
        Raises StoreError for an unknown scheme, an unreachable server or a schema
        newer than this code.
        """
        db = Database.connect(url)
        try:
            version = migrate(db)
        except BaseException:
            db.close()
            raise
        return cls(db, version)

    @property
    def url(self) -> str:
        """Where the store lives, password hidden."""
        return self._db.display_url

    def reopen_url(self) -> str | None:
        """The URL another process opens this store with, password included (hand it
        over a pipe, never log it); None for an in-memory store, which no other
        process can share."""
        return self._db.reopen_url()

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.backend

    @property
    def schema_version(self) -> int:
        return self._schema_version

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- jobs -------------------------------------------------------------------------

    def create_job(
        self,
        job: JobRecord,
        tasks: Sequence[TaskRecord],
        idempotency: IdempotencyRecord | None = None,
    ) -> None:
        """Stores a job and its tasks in one transaction; durable once this returns.

        ``job.task_count`` must equal ``len(tasks)``. ConflictError on a duplicate job
        or task id, or when ``idempotency`` names a key that is live already (and
        nothing is stored).
        """
        if idempotency is not None and idempotency.job_id != job.job_id:
            raise ValueError(f"idempotency key of {idempotency.job_id!r} given with {job.job_id!r}")
        _check_job(job)
        if job.task_count != len(tasks):
            raise ValueError(
                f"job {job.job_id!r} has task_count {job.task_count}, not {len(tasks)}"
            )
        job_row = schema.to_row(job)
        task_rows = _task_rows(job.job_id, tasks)
        with self._db.tx(write=True) as conn:
            conn.execute(insert(_j).values(job_row))
            if task_rows:
                conn.execute(insert(_t), task_rows)
            if idempotency is not None:
                claim_key(conn, idempotency)

    def add_tasks(self, job_id: str, tasks: Sequence[TaskRecord]) -> None:
        """Appends tasks to a job that is not final (sessions grow over time)."""
        task_rows = _task_rows(job_id, tasks)
        with self._db.tx(write=True) as conn:
            # FOR UPDATE (PostgreSQL) keeps the job from becoming final meanwhile.
            state = conn.execute(
                select(_j.c.state).where(_j.c.job_id == job_id).with_for_update()
            ).scalar()
            if state is None:
                raise NotFoundError(f"no job {job_id!r}")
            if state in FINAL_STATES:
                raise ConflictError(f"job {job_id!r} is {state}; it takes no more tasks")
            if task_rows:
                conn.execute(insert(_t), task_rows)
                conn.execute(
                    update(_j)
                    .where(_j.c.job_id == job_id)
                    .values(task_count=_j.c.task_count + len(task_rows))
                )

    def get_job(self, job_id: str) -> JobRecord:
        with self._db.tx() as conn:
            row = conn.execute(select(_j).where(_j.c.job_id == job_id)).one_or_none()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return schema.from_row(JobRecord, row)

    def list_jobs(
        self,
        *,
        user: str | None = None,
        account: str | None = None,
        centre: str | None = None,
        state: str | None = None,
        resource: str | None = None,
        limit: int = 100,
        offset: int = 0,
        local: bool = False,
    ) -> list[JobRecord]:
        """Jobs matching every filter given, newest first; ``local``: only jobs of no
        centre (a local user's, not a federated namesake's)."""
        query = select(_j)
        if local:
            query = query.where(_j.c.centre.is_(None))
        for column, value in (
            (_j.c.username, user),
            (_j.c.account, account),
            (_j.c.centre, centre),
            (_j.c.state, state),
            (_j.c.resource, resource),
        ):
            if value is not None:
                query = query.where(column == value)
        query = query.order_by(_j.c.created_at.desc(), _j.c.job_id.desc())
        with self._db.tx() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [schema.from_row(JobRecord, r) for r in rows]

    def set_job_state(self, job_id: str, state: str, finished_at: float | None = None) -> None:
        """Sets a job's state and finish time; ConflictError if the job is already final."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}; one of {JOB_STATES}")
        with self._db.tx(write=True) as conn:
            done = conn.execute(
                update(_j)
                .where(_j.c.job_id == job_id, _j.c.state.not_in(FINAL_STATES))
                .values(state=state, finished_at=finished_at)
            ).rowcount
            if done == 0:
                old = conn.execute(select(_j.c.state).where(_j.c.job_id == job_id)).scalar()
                if old is None:
                    raise NotFoundError(f"no job {job_id!r}")
                raise ConflictError(f"job {job_id!r} is already {old}")

    def job_counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        with self._db.tx() as conn:
            rows = conn.execute(select(_j.c.state, func.count()).group_by(_j.c.state)).all()
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: int(n) for state, n in rows})
        return counts

    # -- tasks ------------------------------------------------------------------------

    def get_task(self, task_id: str) -> TaskRecord:
        with self._db.tx() as conn:
            row = conn.execute(select(*_TASK_COLUMNS).where(_t.c.task_id == task_id)).first()
        if row is None:
            raise NotFoundError(f"no task {task_id!r}")
        return schema.from_row(TaskRecord, row)

    def tasks_of_job(self, job_id: str) -> list[TaskRecord]:
        """A job's tasks by index (NotFoundError if there is no such job)."""
        with self._db.tx() as conn:
            rows = conn.execute(
                select(*_TASK_COLUMNS).where(_t.c.job_id == job_id).order_by(_t.c.idx)
            ).all()
            if (
                not rows
                and conn.execute(select(_j.c.job_id).where(_j.c.job_id == job_id)).first() is None
            ):
                raise NotFoundError(f"no job {job_id!r}")
        return [schema.from_row(TaskRecord, r) for r in rows]

    def queued_tasks(
        self, resource: str | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """Queued tasks (of one resource, if given), oldest first."""
        query = select(*_TASK_COLUMNS).where(_t.c.state == TaskStatus.QUEUED)
        if resource is not None:
            query = query.where(_t.c.resource == resource)
        query = query.order_by(_t.c.submitted_at, _t.c.job_id, _t.c.idx).limit(limit)
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        return [schema.from_row(TaskRecord, r) for r in rows]

    def queue_length(self, resource: str | None = None) -> int:
        """Number of queued tasks (of one resource, if given)."""
        query = select(func.count()).select_from(_t).where(_t.c.state == TaskStatus.QUEUED)
        if resource is not None:
            query = query.where(_t.c.resource == resource)
        with self._db.tx() as conn:
            return int(conn.execute(query).scalar_one())

    def mark_task_running(
        self, task_id: str, resource_task_id: str | None, started_at: float
    ) -> None:
        """queued -> running, counting an attempt; ConflictError from any other state."""
        with self._db.tx(write=True) as conn:
            done = conn.execute(
                update(_t)
                .where(_t.c.task_id == task_id, _t.c.state == TaskStatus.QUEUED)
                .values(
                    state=TaskStatus.RUNNING,
                    started_at=started_at,
                    resource_task_id=resource_task_id,
                    attempts=_t.c.attempts + 1,
                )
            ).rowcount
            if done == 0:
                state = _task_state(conn, task_id)
                raise ConflictError(f"task {task_id!r} is {state}, not queued")

    def set_resource_task_id(self, task_id: str, resource_task_id: str) -> None:
        """Remember the resource's own id of a running task (to stop an orphan later)."""
        with self._db.tx(write=True) as conn:
            conn.execute(
                update(_t)
                .where(_t.c.task_id == task_id, _t.c.state == TaskStatus.RUNNING)
                .values(resource_task_id=resource_task_id)
            )

    def finish_task(self, task_id: str, outcome: TaskOutcome) -> UsageRecord | None:
        """Ends a queued or running task and books its usage, in one transaction.

        Usage is booked when the task completed, or when it ended otherwise but used
        the QPU (``qpu_seconds > 0``): a failed run that held the device is still
        charged. User, account, resource and session come from the task row, the
        centre from its job. Returns the booked record, or ``None`` if nothing was
        booked. ConflictError if the task is already final (nothing is booked twice).
        """
        _check_outcome(outcome)
        with self._db.tx(write=True) as conn:
            row = conn.execute(
                update(_t)
                .where(_t.c.task_id == task_id, _t.c.state.in_(OPEN_TASK_STATES))
                .values(
                    state=outcome.state,
                    result=outcome.result,
                    error=outcome.error,
                    finished_at=outcome.finished_at,
                )
                .returning(_t.c.job_id, _t.c.username, _t.c.account, _t.c.resource, _t.c.session_id)
            ).first()
            if row is None:
                state = _task_state(conn, task_id)
                raise ConflictError(f"task {task_id!r} is already {state}")
            # In the same transaction, so a reader who sees the task final also sees
            # its job settled.
            _settle_job(conn, row.job_id, outcome.finished_at)
            if outcome.state != TaskStatus.COMPLETED and outcome.qpu_seconds <= 0:
                return None
            centre = conn.execute(select(_j.c.centre).where(_j.c.job_id == row.job_id)).scalar()
            record = UsageRecord(
                task_id=task_id,
                job_id=row.job_id,
                user=row.username,
                account=row.account,
                centre=centre,
                resource=row.resource,
                session_id=row.session_id,
                qpu_seconds=outcome.qpu_seconds,
                shots=outcome.shots,
                circuits=outcome.circuits,
                finished_at=outcome.finished_at,
            )
            conn.execute(insert(schema.usage).values(schema.to_row(record)))
            return record

    def record_finished_tasks(
        self, finished: Sequence[tuple[TaskRecord, TaskOutcome]], *, relaxed: bool = True
    ) -> list[UsageRecord]:
        """Write-behind for session tasks: stores tasks that already ran, with their
        outcome and usage, in one transaction (one commit for a whole batch).

        The tasks' jobs must exist and not be final (ConflictError otherwise; nothing is
        stored). ``relaxed`` commits without waiting for the disk (see
        :meth:`Database.tx`): a crash of the broker loses nothing committed, a crash of
        the machine may lose the last commits — allowed for session tasks, whose client
        is live and retries, never used for batch work. Usage is booked as in
        :meth:`finish_task`, exactly once per task (primary key).
        """
        if not finished:
            return []
        for _, outcome in finished:
            _check_outcome(outcome)
        by_job: dict[str, list[tuple[TaskRecord, TaskOutcome]]] = {}
        for task, outcome in finished:
            by_job.setdefault(task.job_id, []).append((task, outcome))
        booked: list[UsageRecord] = []
        with self._db.tx(write=True, relaxed=relaxed) as conn:
            for job_id, items in by_job.items():
                job = conn.execute(
                    select(_j.c.state, _j.c.centre).where(_j.c.job_id == job_id).with_for_update()
                ).first()
                if job is None:
                    raise NotFoundError(f"no job {job_id!r}")
                if job.state in FINAL_STATES:
                    raise ConflictError(f"job {job_id!r} is {job.state}; it takes no more tasks")
                rows = _task_rows(job_id, [t for t, _ in items])
                for row, (_, outcome) in zip(rows, items, strict=True):
                    row.update(
                        state=outcome.state, result=outcome.result, error=outcome.error,
                        finished_at=outcome.finished_at,
                    )  # fmt: skip
                conn.execute(insert(_t), rows)
                conn.execute(
                    update(_j)
                    .where(_j.c.job_id == job_id)
                    .values(task_count=_j.c.task_count + len(rows))
                )
                usage = [
                    UsageRecord(
                        task_id=task.task_id, job_id=job_id, user=task.user,
                        account=task.account, centre=job.centre, resource=task.resource,
                        session_id=task.session_id, qpu_seconds=outcome.qpu_seconds,
                        shots=outcome.shots, circuits=outcome.circuits,
                        finished_at=outcome.finished_at,
                    )
                    for task, outcome in items
                    if outcome.state == TaskStatus.COMPLETED or outcome.qpu_seconds > 0
                ]  # fmt: skip
                if usage:
                    conn.execute(insert(schema.usage), [schema.to_row(u) for u in usage])
                booked.extend(usage)
        return booked

    def task_result(self, task_id: str) -> bytes | None:
        """The result bytes a finished task stored (``None`` if none); PurgedError once
        its job's results were purged (see ``_maintenance.py``)."""
        with self._db.tx() as conn:
            row = conn.execute(
                select(_t.c.result, _t.c.job_id, _j.c.purged_at)
                .join_from(_t, _j, _t.c.job_id == _j.c.job_id)
                .where(_t.c.task_id == task_id)
            ).first()
        if row is None:
            raise NotFoundError(f"no task {task_id!r}")
        if row.purged_at is not None:
            raise PurgedError(row.job_id, row.purged_at)
        return None if row.result is None else bytes(row.result)

    def cancel_queued_tasks(self, job_id: str, at: float) -> list[str]:
        """Cancels a job's queued tasks (running ones are left to finish) and settles the
        job's state in the same transaction; returns the cancelled ids by index."""
        with self._db.tx(write=True) as conn:
            if conn.execute(select(_j.c.job_id).where(_j.c.job_id == job_id)).first() is None:
                raise NotFoundError(f"no job {job_id!r}")
            rows = conn.execute(
                update(_t)
                .where(_t.c.job_id == job_id, _t.c.state == TaskStatus.QUEUED)
                .values(state=TaskStatus.CANCELLED, finished_at=at)
                .returning(_t.c.task_id, _t.c.idx)
            ).all()
            _settle_job(conn, job_id, at)
        return [task_id for task_id, _ in sorted(rows, key=lambda r: r[1])]

    def requeue_running_tasks(
        self, resource: str | None = None, task_id: str | None = None
    ) -> list[str]:
        """Crash recovery (and a drain that stops running work): running -> queued,
        keeping ``attempts``; returns the ids.

        ``started_at`` is cleared; ``resource_task_id`` is kept so that recovery can
        still find (and cancel) the orphaned run on the resource.
        """
        query = update(_t).where(_t.c.state == TaskStatus.RUNNING)
        if resource is not None:
            query = query.where(_t.c.resource == resource)
        if task_id is not None:
            query = query.where(_t.c.task_id == task_id)
        with self._db.tx(write=True) as conn:
            ids = conn.execute(
                query.values(state=TaskStatus.QUEUED, started_at=None).returning(_t.c.task_id)
            ).scalars()
            return sorted(ids)


def _settle_job(conn: Connection, job_id: str, at: float) -> None:
    """Derive a batch job's state from its tasks' (session jobs end with their session).

    Any task open → running (or queued if none started); all completed → completed;
    any failed → failed; otherwise cancelled.
    """
    job = conn.execute(select(_j.c.state, _j.c.kind).where(_j.c.job_id == job_id)).first()
    if job is None or job.kind == "session" or job.state in FINAL_STATES:
        return
    counts = {
        str(state): int(n)
        for state, n in conn.execute(
            select(_t.c.state, func.count()).where(_t.c.job_id == job_id).group_by(_t.c.state)
        ).all()
    }
    if counts.get(TaskStatus.QUEUED, 0) or counts.get(TaskStatus.RUNNING, 0):
        new, finished = (
            (TaskStatus.RUNNING if set(counts) - {TaskStatus.QUEUED} else TaskStatus.QUEUED),
            None,
        )
    elif set(counts) <= {TaskStatus.COMPLETED}:
        new, finished = TaskStatus.COMPLETED, at
    elif counts.get(TaskStatus.FAILED, 0):
        new, finished = TaskStatus.FAILED, at
    else:
        new, finished = TaskStatus.CANCELLED, at
    if new != job.state:
        conn.execute(
            update(_j).where(_j.c.job_id == job_id).values(state=new, finished_at=finished)
        )


def _task_state(conn: Connection, task_id: str) -> str:
    state = conn.execute(select(_t.c.state).where(_t.c.task_id == task_id)).scalar()
    if state is None:
        raise NotFoundError(f"no task {task_id!r}")
    return str(state)


def _check_job(job: JobRecord) -> None:
    if job.kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {job.kind!r}; one of {JOB_KINDS}")
    if job.state not in JOB_STATES:
        raise ValueError(f"unknown job state {job.state!r}; one of {JOB_STATES}")


def _task_rows(job_id: str, tasks: Sequence[TaskRecord]) -> list[dict[str, object]]:
    rows = []
    for task in tasks:
        if task.job_id != job_id:
            raise ValueError(f"task {task.task_id!r} belongs to {task.job_id!r}, not {job_id!r}")
        if task.state not in TASK_STATES:
            raise ValueError(f"unknown task state {task.state!r}; one of {TASK_STATES}")
        if task.payload_kind not in PAYLOAD_KINDS:
            raise ValueError(f"unknown payload kind {task.payload_kind!r}; one of {PAYLOAD_KINDS}")
        if not isinstance(task.payload, bytes):
            raise ValueError(f"task {task.task_id!r}: payload must be bytes")
        rows.append(schema.to_row(task))
    return rows


def _check_outcome(outcome: TaskOutcome) -> None:
    if outcome.state not in FINAL_STATES:
        raise ValueError(f"a task finishes as one of {sorted(FINAL_STATES)}, not {outcome.state!r}")
    if outcome.qpu_seconds < 0 or outcome.shots < 0 or outcome.circuits < 0:
        raise ValueError(f"negative usage in {outcome}")
