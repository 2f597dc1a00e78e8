"""Write-behind for session tasks: group commits off the hot path.

A session task is run from memory as soon as it is admitted; only once it has
finished is it written — task, outcome and usage in one relaxed-durability
transaction shared with every other task that finished meanwhile (group
commit). Its result is released to the client only after that commit, so a
result once returned is never lost to a crash of the broker; what a crash can
lose is a task still in flight, which its live client retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from qhpc.store import Store, TaskOutcome, TaskRecord

log = logging.getLogger(__name__)

#: most finished tasks written in one transaction
MAX_BATCH = 1000


class Journal:
    """One writer thread; ``append`` never blocks on the disk."""

    def __init__(
        self,
        store: Store,
        on_committed: Callable[[Sequence[tuple[TaskRecord, TaskOutcome]]], None],
    ) -> None:
        self.store = store
        self.on_committed = on_committed
        self._pending: list[tuple[TaskRecord, TaskOutcome]] = []
        self._cond = threading.Condition()
        self._appended = 0
        self._committed = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._write_loop, name="qhpc-journal", daemon=True)

    def start(self) -> None:
        with self._cond:
            if not self._thread.is_alive() and not self._stopping:
                self._thread.start()

    def stop(self) -> None:
        self.flush()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def append(self, task: TaskRecord, outcome: TaskOutcome) -> None:
        self.start()  # also serves a broker whose executors were never started
        with self._cond:
            self._pending.append((task, outcome))
            self._appended += 1
            self._cond.notify_all()

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything appended so far is committed (or failed)."""
        with self._cond:
            target = self._appended
            return self._cond.wait_for(
                lambda: self._committed >= target or not self._thread.is_alive(), timeout
            )

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._pending))
                if not self._pending and self._stopping:
                    return
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            try:
                self.store.record_finished_tasks(batch)
            except Exception:
                # One bad task (e.g. its session job was closed meanwhile) must not
                # take the batch down with it: write them one by one.
                batch = self._write_one_by_one(batch)
            try:
                self.on_committed(batch)
            finally:
                with self._cond:
                    self._committed += len(batch) if batch else 0
                    self._cond.notify_all()

    def _write_one_by_one(
        self, batch: list[tuple[TaskRecord, TaskOutcome]]
    ) -> list[tuple[TaskRecord, TaskOutcome]]:
        for item in batch:
            try:
                self.store.record_finished_tasks([item])
            except Exception as error:  # the writer must outlive any one bad task
                log.error("session task %s not recorded: %s", item[0].task_id, error)
        return batch
