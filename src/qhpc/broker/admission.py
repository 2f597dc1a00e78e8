"""Admission: a submission checked against its resource and turned into records.

Pure functions of their inputs (no lock, no store): the broker calls them before it
stores a batch job (:func:`batch_job`) or takes a session task in flight
(:func:`session_task`). Each refusal is a :class:`~qhpc.resources.PayloadError`
naming the task and the limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from qhpc.resources import Payload, PayloadError, QuantumResource, encode_payload, validate_payload
from qhpc.states import TaskStatus
from qhpc.store import JobRecord, SessionRecord, TaskRecord


def encoded(
    payload: Payload,
    resource: QuantumResource,
    max_bytes: int,
    what: str = "",
    data: bytes | None = None,
) -> bytes:
    """``payload`` checked against ``resource``'s target, and its encoding (``data`` when
    the caller has it already: the hot path does not encode twice), at most ``max_bytes``."""
    try:
        validate_payload(payload, resource.target())
    except PayloadError as exc:
        raise PayloadError(f"{what}{exc}") from None
    if data is None:
        data = encode_payload(payload)
    if len(data) > max_bytes:
        raise PayloadError(f"{what}{len(data)} bytes exceed the limit of {max_bytes} bytes")
    return data


def refusal(resource: QuantumResource, payloads: Sequence[Payload]) -> str | None:
    """Why ``payloads`` do not fit ``resource``'s target (None: they all do): the check
    :func:`encoded` makes of each task, without encoding. A pool asks it of each member."""
    target = resource.target()
    for index, payload in enumerate(payloads):
        try:
            validate_payload(payload, target)
        except PayloadError as exc:
            return f"task {index}: {exc}" if len(payloads) > 1 else str(exc)
    return None


def batch_job(
    *,
    resource: QuantumResource,
    payloads: Sequence[Payload],
    user: str,
    account: str,
    centre: str | None,
    priority: int,
    name: str | None,
    session_id: str | None,
    now: float,
    max_tasks: int,
    max_bytes: int,
    learnt_seconds: float,
    pool: str | None = None,
) -> tuple[JobRecord, list[TaskRecord]]:
    """The job and its queued tasks for a batch submission (``pool``: the pool it named,
    ``resource`` being the member chosen)."""
    if not payloads:
        raise PayloadError("a job needs at least one task")
    if len(payloads) > max_tasks:
        raise PayloadError(f"{len(payloads)} tasks exceed the limit of {max_tasks} per job")
    job_id = uuid.uuid4().hex
    tasks = []
    for index, payload in enumerate(payloads):
        data = encoded(payload, resource, max_bytes, f"task {index}: ")
        tasks.append(
            TaskRecord(
                # Job id + index: tasks of one job share a submission time, and the
                # policies break ties by task id, so this keeps them in index order.
                task_id=f"{job_id}{index:06x}", job_id=job_id, resource=resource.name,
                index=index, state=TaskStatus.QUEUED, payload=data, payload_kind=payload.kind,
                submitted_at=now, started_at=None, finished_at=None, resource_task_id=None,
                error=None, attempts=0, session_id=session_id, account=account, user=user,
                priority=priority,
                estimated_seconds=resource.estimate_seconds(payload) or learnt_seconds,
            )
        )  # fmt: skip
    job = JobRecord(
        job_id=job_id, user=user, account=account, centre=centre, resource=resource.name,
        kind="session" if session_id else "batch", priority=priority, state=TaskStatus.QUEUED,
        created_at=now, finished_at=None, session_id=session_id, name=name,
        task_count=len(tasks), pool=pool,
    )  # fmt: skip
    return job, tasks


def session_task(
    *,
    session: SessionRecord,
    resource: QuantumResource,
    payload: Payload,
    data: bytes,
    task_id: str,
    index: int,
    now: float,
    learnt_seconds: float,
) -> TaskRecord:
    """The in-memory record of one session task (``data``: its checked encoding)."""
    return TaskRecord(
        task_id=task_id, job_id=session.session_id, resource=session.resource, index=index,
        state=TaskStatus.QUEUED, payload=data, payload_kind=payload.kind, submitted_at=now,
        started_at=None, finished_at=None, resource_task_id=None, error=None, attempts=0,
        session_id=session.session_id, account=session.account, user=session.user,
        priority=0, estimated_seconds=resource.estimate_seconds(payload) or learnt_seconds,
    )  # fmt: skip
