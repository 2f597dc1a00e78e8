"""Open sessions, their tasks in flight, how those tasks ended, and who waits for them.

A session task lives in memory from admission until the journal has committed it
(write-behind, see journal.py): :class:`Sessions` holds it *in flight*, shows it as
it stands (final once finished, before its commit), and hands its outcome — one
type, :class:`SessionTaskOutcome` — to whoever asked to be told: a fast-path
connection's callback, a direct-channel caller waiting on a lock, a REST
``wait_task``. Waiters of batch tasks use the same table (:meth:`Sessions.signal`
is called when the store has the task final).

Every method that says "caller holds the lock" expects the broker's condition held;
the rest take it themselves. Callbacks run under the lock: they hand an id over and
never block.
"""

from __future__ import annotations

import itertools
import math
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from qhpc.broker.duty import DutyCycles
from qhpc.broker.journal import Journal, Writer
from qhpc.broker.scheduler import SessionRhythms
from qhpc.broker.telemetry import Telemetry
from qhpc.states import OPEN_STATES, TaskStatus
from qhpc.store import SessionRecord, Store, TaskOutcome, TaskRecord


@dataclass(frozen=True)
class SessionTaskOutcome:
    """How one session task ended, as its submitter receives it."""

    task_id: str
    state: str
    #: the codec-encoded result when completed
    result: bytes | None
    error: str | None
    qpu_seconds: float = 0.0

    @classmethod
    def of(cls, task_id: str, outcome: TaskOutcome) -> SessionTaskOutcome:
        return cls(task_id, outcome.state, outcome.result, outcome.error, outcome.qpu_seconds)


class Sessions:
    """The broker's in-memory session state (see the module docstring)."""

    def __init__(
        self,
        cond: threading.Condition,
        store: Store,
        rhythms: SessionRhythms,
        clock: Callable[[], float],
        journal_dir: Path | None,
        commit_interval: float,
        telemetry: Telemetry,
        duties: DutyCycles | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.cond = cond
        self.store = store
        self.rhythms = rhythms
        #: each open session's duty cycle, for admission (steering.py)
        self.duties = duties or DutyCycles()
        self.clock = clock
        self.telemetry = telemetry
        self.journal = Journal(
            store, self.committed, log_dir=journal_dir, commit_interval=commit_interval,
            on_booked=telemetry.booked, writer=writer,
        )  # fmt: skip
        self.open: dict[str, SessionRecord] = {}
        #: tasks per session so far (a session task's index), filled lazily
        self._counts: dict[str, int] = {}
        #: admitted, not committed yet
        self.in_flight: dict[str, TaskRecord] = {}
        #: finished (outcome released) but not committed yet
        self._unstored: dict[str, TaskOutcome] = {}
        #: outcomes kept for a take_outcome() that is still to come
        self._outcomes: dict[str, SessionTaskOutcome] = {}
        self._done_events: dict[str, threading.Event] = {}
        self._callbacks: dict[str, Callable[[str], None]] = {}
        #: the channel each queued task came on, to time its step when it ends (a task
        #: run inline is timed by its submitter, which knows the channel)
        self._channels: dict[str, str] = {}
        # Session task ids: 80 random bits per broker run + a counter (uuid4 per task
        # costs a getrandom call on the hot path); unique across runs like uuid4.
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_counter = itertools.count()

    # -- sessions (caller holds the lock) ---------------------------------------------
    def next_task_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    def next_index(self, session_id: str) -> int:
        """The index of the session's next task (its job's task count so far)."""
        index = self._counts.get(session_id)
        if index is None:  # first task since this broker started
            index = self.store.get_job(session_id).task_count
        self._counts[session_id] = index + 1
        return index

    def forget(self, session_id: str) -> None:
        self._counts.pop(session_id, None)

    def close(self, session_id: str) -> None:
        self.open.pop(session_id, None)
        self.rhythms.forget(session_id)
        self.duties.forget(session_id, self.clock())

    # -- tasks in flight (caller holds the lock) --------------------------------------
    def visible(self, task: TaskRecord) -> TaskRecord:
        """An in-flight record as it stands: final once finished, before its commit."""
        finished = self._unstored.get(task.task_id)
        if finished is None:
            return task
        return replace(
            task, state=finished.state, error=finished.error, finished_at=finished.finished_at
        )

    def of_job(self, job_id: str) -> list[TaskRecord]:
        return [self.visible(t) for t in self.in_flight.values() if t.job_id == job_id]

    def unstored(self, task_id: str) -> TaskOutcome | None:
        return self._unstored.get(task_id)

    # -- waiters ----------------------------------------------------------------------
    def done_event(self, task_id: str) -> threading.Event:
        """An event set when ``task_id`` is final in the store (caller holds the lock)."""
        return self._done_events.setdefault(task_id, threading.Event())

    def call_when_done(self, task_id: str, callback: Callable[[str], None]) -> None:
        """(Caller holds the lock.)"""
        self._callbacks[task_id] = callback

    def queued_on(self, task_id: str, channel: str) -> None:
        """A task that came on ``channel`` was queued: time its step when it ends
        (caller holds the lock)."""
        self._channels[task_id] = channel

    def _step_ended(self, task: TaskRecord, outcome: TaskOutcome) -> None:
        # Caller holds the lock.
        channel = self._channels.pop(task.task_id, None)
        if channel is not None:
            self.telemetry.resource(task.resource).step(
                channel, outcome.finished_at - task.submitted_at
            )

    def when_done(self, task_id: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(task_id)`` once the task is final (at once if it already is)."""
        with self.cond:
            finished = self._unstored.get(task_id)
            if finished is not None:  # released already, not committed yet
                self._outcomes[task_id] = SessionTaskOutcome.of(task_id, finished)
                callback(task_id)
                return
            self._callbacks[task_id] = callback
            if task_id in self.in_flight:
                return  # signalled when it has finished
        if self.store.get_task(task_id).state not in OPEN_STATES:
            with self.cond:
                if self._callbacks.pop(task_id, None) is not None:
                    callback(task_id)

    def take_outcome(self, task_id: str) -> SessionTaskOutcome:
        """How a final task ended, from memory when the journal has just released it
        (the fast path's read), else from the store."""
        with self.cond:
            kept = self._outcomes.pop(task_id, None)
        if kept is not None:
            return kept
        task = self.store.get_task(task_id)
        data = self.store.task_result(task_id) if task.state == TaskStatus.COMPLETED else None
        return SessionTaskOutcome(task_id, task.state, data, task.error)

    def signal(self, task_id: str) -> None:
        """``task_id`` is final in the store: wake its waiters (caller holds the lock)."""
        event = self._done_events.pop(task_id, None)
        if event is not None:
            event.set()
        callback = self._callbacks.pop(task_id, None)
        if callback is not None:
            callback(task_id)

    # -- ends of session tasks ----------------------------------------------------------
    def finished(self, task: TaskRecord, outcome: TaskOutcome) -> None:
        """A session task ended: hand it to the journal and release its outcome.

        Released at once when the journal has logged it (a crash before the commit is
        replayed from the log, so its usage is never lost); otherwise only after the
        commit, as :meth:`committed` does.
        """
        if not self.journal.append(task, outcome):
            with self.cond:
                self._step_ended(task, outcome)
                self._measure(task, outcome)
            self.journal.flush()
            return
        task_id = task.task_id
        with self.cond:
            if self._channels:  # (an inline run, the hot path, has none to look up)
                self._step_ended(task, outcome)
            if task.session_id is not None:
                self.rhythms.released(task.session_id, self.clock())
                self._measure(task, outcome)
            if task_id not in self.in_flight:
                return  # committed (and signalled) already
            self._unstored[task_id] = outcome  # shown final from memory (visible)
            callback = self._callbacks.pop(task_id, None)
            if callback is not None:
                self._outcomes[task_id] = SessionTaskOutcome.of(task_id, outcome)
                callback(task_id)  # waiters of wait_task() are woken by the commit

    def _measure(self, task: TaskRecord, outcome: TaskOutcome) -> None:
        """Count a session task's device time into its session's duty cycle (caller holds
        the lock); a task ending after its session closed counts for nothing."""
        session_id = task.session_id
        if session_id is None or session_id not in self.open:
            return
        started = math.nan if task.started_at is None else task.started_at
        self.duties.finished(
            session_id, submitted_at=task.submitted_at, started_at=started,
            finished_at=outcome.finished_at, qpu_seconds=outcome.qpu_seconds,
            group=task.resource,
        )  # fmt: skip

    def committed(self, batch: Sequence[tuple[TaskRecord, TaskOutcome]]) -> None:
        """The journal's callback: these tasks are in the store now."""
        with self.cond:
            for task, outcome in batch:
                self.in_flight.pop(task.task_id, None)
                self._unstored.pop(task.task_id, None)
                if task.task_id in self._callbacks:
                    self._outcomes[task.task_id] = SessionTaskOutcome.of(task.task_id, outcome)
                self.signal(task.task_id)
