"""The records the store keeps: plain frozen dataclasses, one per table.

Times are float UNIX seconds chosen by the caller (the store never reads a clock for
data, so tests and replays are deterministic). Task and job states are the members
of :class:`qhpc.states.TaskStatus` (strings in the tables); the tuples below name the
valid values of each column and the store refuses others with ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from qhpc.states import FINAL_STATES as FINAL_STATES  # re-exported: the store's own name
from qhpc.states import OPEN_STATES, TaskStatus

#: a job's state is its tasks' (queued until one runs, final once all are)
JOB_STATES: tuple[str, ...] = tuple(TaskStatus)
TASK_STATES: tuple[str, ...] = JOB_STATES
#: States a task can be finished from.
OPEN_TASK_STATES: tuple[str, ...] = tuple(s for s in TaskStatus if s in OPEN_STATES)
JOB_KINDS: tuple[str, ...] = ("batch", "session", "hybrid")
PAYLOAD_KINDS: tuple[str, ...] = ("sampler", "estimator")
TOKEN_ROLES: tuple[str, ...] = ("admin", "centre", "user", "session")
ROLLUP_GROUPS: tuple[str, ...] = ("job", "user", "account", "centre", "resource")
#: The output streams of a hybrid program.
OUTPUT_STREAMS: tuple[str, ...] = ("stdout", "stderr")
#: How a hybrid program ended (``queued``/``running`` while it has not).
PROGRAM_STATUSES: tuple[str, ...] = (
    "queued", "running", "completed", "failed", "timeout", "cancelled", "limit", "killed",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    user: str
    account: str
    centre: str | None
    resource: str
    kind: str
    priority: int
    state: str
    created_at: float
    finished_at: float | None
    session_id: str | None
    name: str | None
    task_count: int
    #: when its results, output and sources were purged (retention); None while kept
    purged_at: float | None = None
    #: the pool it was submitted to (``resource`` is the member the broker chose); None:
    #: it named its resource itself
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    job_id: str
    resource: str
    index: int
    state: str
    payload: bytes
    payload_kind: str
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    resource_task_id: str | None
    error: str | None
    attempts: int
    session_id: str | None
    account: str
    user: str
    priority: int
    estimated_seconds: float


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How a task ended, as given to :meth:`Store.finish_task`."""

    state: str
    result: bytes | None
    error: str | None
    qpu_seconds: float
    shots: int
    circuits: int
    finished_at: float


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    resource: str
    user: str
    account: str
    centre: str | None
    mode: str
    opened_at: float
    deadline: float
    closed_at: float | None
    slurm_job_id: str | None
    #: the pool it was opened on (``resource`` is the member the broker chose)
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    """Exclusive use of ``resource`` by ``account`` during ``[start, end)``."""

    reservation_id: str
    resource: str
    account: str
    start: float
    end: float
    allow_backfill: bool
    created_by: str


@dataclass(frozen=True, slots=True)
class DrainRecord:
    """``resource`` taken out of service by an operator since ``since``, until ``until``
    (None: until someone resumes it)."""

    resource: str
    reason: str
    since: float
    until: float | None
    drained_by: str


@dataclass(frozen=True, slots=True)
class AccountRecord:
    name: str
    shares: float
    centre: str | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token; only its hash is ever stored (hashing is the caller's job)."""

    token_id: str
    token_hash: str
    role: str
    subject: str
    account: str | None
    centre: str | None
    session_id: str | None
    resource: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One finished task's consumption, booked exactly once."""

    task_id: str
    job_id: str
    user: str
    account: str
    centre: str | None
    resource: str
    session_id: str | None
    qpu_seconds: float
    shots: int
    circuits: int
    finished_at: float


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """A hybrid job's program: what was submitted and, once it ended, its outcome.

    ``source`` is the program text, or ``None`` when ``entry_point`` names a program
    registered on the server (``args`` then carries its JSON spec). JSON columns
    (``args``, ``return_value``, ``timings``, ``progress``) hold JSON text. Its output
    is kept apart, as bytes (:class:`OutputPiece`, ``Store.read_output``).
    """

    job_id: str
    source: str | None
    entry_point: str | None
    entry: str
    args: str
    timeout: float
    max_iterations: int | None
    status: str
    session_id: str | None = None
    message: str | None = None
    return_value: str | None = None
    timings: str | None = None
    progress: str | None = None
    iterations: int = 0
    qpu_calls: int = 0
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class OutputPiece:
    """Bytes of a program's ``stream`` from byte ``offset`` on (what replaces the rest)."""

    job_id: str
    stream: str
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A submission's ``Idempotency-Key``: who sent it, what for, and the job it made.

    ``scope`` names the principal the key belongs to (keys of different principals
    never meet); ``request_hash`` is a hash of the canonical request body, so a
    reused key with another body is told apart from a retry.
    """

    scope: str
    key: str
    request_hash: str
    job_id: str
    created_at: float
    expires_at: float
