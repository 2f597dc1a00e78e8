"""Ending work before it has run: a user's cancel, and the broker's own stop.

A batch task lives in the store, so cancelling it there is enough; a session task
waiting in a queue lives only in memory (sessions.py), so it is taken out of the
queue and ended through the journal like any finished session task, or its client
would wait for ever. Running tasks are asked to stop; the executor books how they
ended.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from qhpc.broker.executor import ResourceExecutor, Shared
from qhpc.broker.scheduler import QueuedTask
from qhpc.broker.sessions import Sessions
from qhpc.states import TaskStatus
from qhpc.store import Store, TaskOutcome, TaskRecord


class Cancels:
    """Cancel a job's work; end the queued session tasks when the broker stops."""

    def __init__(
        self,
        store: Store,
        shared: Shared,
        executors: Mapping[str, ResourceExecutor],
        sessions: Sessions,
        clock: Callable[[], float],
        settled: Callable[[str], None],
    ) -> None:
        self.store = store
        self.shared = shared
        self.executors = executors
        self.sessions = sessions
        self.clock = clock
        #: told a job's id once some of its tasks were cancelled (it may have ended)
        self.settled = settled

    def job(self, job_id: str) -> list[str]:
        """Cancel queued tasks now and stop running ones; returns affected task ids."""
        now = self.clock()
        cancelled = self.store.cancel_queued_tasks(job_id, now)
        with self.shared.cond:
            for executor in self.executors.values():
                for task_id in cancelled:
                    executor.drop(task_id)
            unstarted = self.take_queued(
                lambda t: t.job_id == job_id and t.task_id in self.sessions.in_flight
            )
            cancelled += [t.task_id for t in unstarted]
            runs = [r for e in self.executors.values() for r in e.runs()]
            stopped = [r.task.task_id for r in runs if r.task.job_id == job_id]
            for running in runs:
                if running.task.job_id == job_id:
                    running.cancelled = True
                    running.stop.set()
            self.shared.cond.notify_all()
        self.end(unstarted, "cancelled before it started", now)
        with self.shared.cond:
            for task_id in cancelled:
                if task_id not in self.sessions.in_flight:
                    self.sessions.signal(task_id)
        if cancelled:
            self.settled(job_id)  # ended now unless a task still runs
        return cancelled + stopped

    def stopping(self) -> None:
        """The broker stops: stop every run, end the queued session tasks (their clients
        wait); batch tasks stay queued in the store for the next start."""
        with self.shared.cond:
            self.shared.stopping = True
            for executor in self.executors.values():
                for running in executor.runs():
                    running.stop.set()
            unstarted = self.take_queued(lambda t: t.task_id in self.sessions.in_flight)
            self.shared.cond.notify_all()
        self.end(unstarted, "the broker stopped before it started", self.clock())

    def take_queued(self, which: Callable[[QueuedTask], bool]) -> list[TaskRecord]:
        """Take the queued session tasks ``which`` picks out of every queue (lock held)."""
        taken = []
        for executor in self.executors.values():
            for task in [t for t in executor.queue.values() if which(t)]:
                executor.drop(task.task_id)
                taken.append(self.sessions.in_flight[task.task_id])
        return taken

    def end(self, tasks: list[TaskRecord], why: str, now: float) -> None:
        """End session tasks that never ran (not stored yet: the journal stores them)."""
        never_ran = TaskOutcome(TaskStatus.CANCELLED, None, why, 0.0, 0, 0, now)
        for task in tasks:
            self.sessions.finished(task, never_ran)
