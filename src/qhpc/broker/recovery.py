"""What a broker rebuilds from its store when it starts (after a clean stop or a crash).

The store is the truth; memory is rebuilt from it: session tasks released before a
crash are committed from the journal's log first (so usage counts them), tasks
that were running are queued again (and runs a remote device may still be doing
for them are stopped), fair-share usage is replayed over ten half-lives, and the
queued tasks and open sessions go back into memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from qhpc.broker.executor import ResourceExecutor, Shared
from qhpc.broker.journal import Journal
from qhpc.broker.sessions import Sessions
from qhpc.broker.usage import UsageTracker
from qhpc.resources import ResourceRegistry
from qhpc.store import Store, TaskRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    store: Store
    resources: ResourceRegistry
    executors: Mapping[str, ResourceExecutor]
    sessions: Sessions
    journal: Journal
    usage: UsageTracker
    shared: Shared

    def run(self, now: float, half_life: float) -> None:
        self.journal.recover()  # session tasks released before a crash, before usage is read
        requeued = self.store.requeue_running_tasks()
        if requeued:
            log.warning(
                "requeued %d task(s) that were running when the broker stopped", len(requeued)
            )
            self.stop_orphans(requeued)
        for record in self.store.usage(since=now - 10 * half_life):
            self.usage.record(record.account, record.qpu_seconds, record.finished_at)
        with self.shared.cond:
            for task in self.store.queued_tasks():
                self.enqueue(task)
            for open_session in self.store.list_sessions(open_only=True):
                self.sessions.open[open_session.session_id] = open_session

    def stop_orphans(self, task_ids: list[str]) -> None:
        """Stop runs a remote device may still be doing for tasks we will run again."""
        for task_id in task_ids:
            task = self.store.get_task(task_id)
            if task.resource_task_id is None or task.resource not in self.executors:
                continue
            try:
                self.resources.get(task.resource).task_stop(task.resource_task_id)
            except Exception as error:  # gone already, or the device is unreachable
                log.info("orphaned run %s of task %s: %s", task.resource_task_id, task_id, error)

    def enqueue(self, record: TaskRecord) -> None:
        """Back into its executor's queue (caller holds the lock)."""
        executor = self.executors.get(record.resource)
        if executor is None:
            log.error(
                "task %s targets unknown resource %s; left queued", record.task_id, record.resource
            )
            return
        executor.enqueue(record)
