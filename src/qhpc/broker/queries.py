"""Reads of jobs and tasks that see session tasks still in flight.

A session task lives in memory until the journal commits it (sessions.py), so every
read merges the store with :class:`~qhpc.broker.sessions.Sessions`: a session job's
task count includes its tasks in flight, a task in flight is shown as it stands
(final once finished, before its commit), and a waiter wakes at the commit.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from qhpc.broker.sessions import Sessions
from qhpc.resources import TaskResult, decode_result
from qhpc.states import OPEN_STATES
from qhpc.store import JobRecord, Store, TaskRecord


class TaskQueries:
    """The store and the tasks in flight, read together (takes the lock itself)."""

    def __init__(self, store: Store, sessions: Sessions, cond: threading.Condition) -> None:
        self.store = store
        self.sessions = sessions
        self.cond = cond

    def job(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        with self.cond:
            extra = sum(1 for t in self.sessions.in_flight.values() if t.job_id == job_id)
        return replace(job, task_count=job.task_count + extra) if extra else job

    def of_job(self, job_id: str) -> list[TaskRecord]:
        stored = self.store.tasks_of_job(job_id)
        with self.cond:
            pending = self.sessions.of_job(job_id)
        if not pending:
            return stored
        known = {t.task_id for t in stored}
        merged = stored + [t for t in pending if t.task_id not in known]
        return sorted(merged, key=lambda t: t.index)

    def get(self, task_id: str) -> TaskRecord:
        with self.cond:
            pending = self.sessions.in_flight.get(task_id)
            if pending is not None:
                return self.sessions.visible(pending)
        return self.store.get_task(task_id)

    def wait(self, task_id: str, timeout: float | None = None) -> TaskRecord:
        with self.cond:
            event = self.sessions.done_event(task_id)
            in_flight = task_id in self.sessions.in_flight
        if in_flight:
            event.wait(timeout)
            with self.cond:
                pending = self.sessions.in_flight.get(task_id)
                if pending is not None:  # still running: not stored yet
                    return self.sessions.visible(pending)
            return self.store.get_task(task_id)
        task = self.store.get_task(task_id)
        if task.state in OPEN_STATES:
            event.wait(timeout)
            task = self.store.get_task(task_id)
        return task

    def result(self, task_id: str) -> TaskResult | None:
        with self.cond:
            finished = self.sessions.unstored(task_id)
        data = finished.result if finished is not None else self.store.task_result(task_id)
        return None if data is None else decode_result(data)
