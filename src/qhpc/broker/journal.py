"""Write-behind for session tasks: an append-only log on the hot path, group commits off it.

A session task runs from memory as soon as it is admitted. When it has finished,
:meth:`Journal.append` does two things, both O(1) and neither waiting for a disk:

1. it writes the task and its outcome (usage included) as one record to the
   journal's *log*, an append-only file next to the store (one ``write(2)``, no
   fsync: the record is in the kernel's page cache when ``append`` returns, so it
   survives a crash of the broker process, though not of the machine);
2. it queues the pair for the writer thread, which stores everything that
   finished within the last ``commit_interval`` in one transaction (group commit)
   and then deletes the log segments that are covered.

A segment is deleted only once the commit covering it would survive whatever the
segment survives: on SQLite the commit is relaxed (``synchronous = NORMAL``, lost
only with the machine, like the un-fsync'd log); on PostgreSQL it is synchronous,
because the server can crash on its own and would lose relaxed commits whose
segments are gone. A commit that fails (a restarting server, a locked file) is
retried with backoff, and nothing of it is forgotten meanwhile: its tasks stay in
memory and in the log. Tasks the store refuses for good (their job is gone or
final) are appended to ``dead-letter.msgpack`` in the log directory, never dropped.

The broker releases a session task's result as soon as ``append`` returns, before
the commit. That is safe because of the log: when the broker is killed between
the two, the next start replays the log into the store (:meth:`Journal.recover`),
so a task whose result was released is stored, and booked, exactly once: a crash
of the broker loses nothing released, a crash of the machine may lose the last few
milliseconds. A task still in flight at a crash was never released; its live
client retries it. If the log cannot be written (disk full, no log directory),
``append`` says so and the broker falls back to releasing the result only after
the commit.

Log format: segment files ``NNNNNNNNNNNN.log`` in the log directory, each a
sequence of frames ``!I`` (body length) + msgpack ``[TaskRecord, TaskOutcome]``.
The writer holds an exclusive ``flock`` on the segment it appends to, so a
recovering broker never replays the live segment of another process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

import msgspec

from qhpc.files import open_private, private_dir, secure_dir, tighten_file
from qhpc.store import (
    CommitterProcess,
    ConflictError,
    NotFoundError,
    Store,
    StoreError,
    TaskOutcome,
    TaskRecord,
    UsageRecord,
    task_is_stored,
)

log = logging.getLogger(__name__)

#: most finished tasks written in one transaction
MAX_BATCH = 1000
#: how long the writer gathers finished tasks before it commits them (seconds): a
#: commit costs ~0.7 ms plus ~35 µs per task of the broker's interpreter, so the
#: fewer commits the better; results do not wait for it (see above)
COMMIT_INTERVAL: Final = 0.05
FRAME: Final = struct.Struct("!I")
SEGMENT_SUFFIX: Final = ".log"
#: where tasks the store refuses for good (their job is gone or final) are kept, in the
#: segments' format; not a ``.log`` file, so recovery never replays it
DEAD_LETTER: Final = "dead-letter.msgpack"
#: seconds before the first retry of a commit that failed (a restarting database, a
#: locked SQLite file); doubles per failure up to RETRY_MAX_SECONDS
RETRY_FIRST_SECONDS: Final = 0.05
RETRY_MAX_SECONDS: Final = 5.0
#: how long :meth:`Journal.stop` waits for outstanding commits before it leaves them
#: to the log (replayed at the next start)
STOP_PATIENCE: Final = 15.0

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(tuple[TaskRecord, TaskOutcome])

Finished = tuple[TaskRecord, TaskOutcome]


class Writer(Protocol):
    """What commits the journal's batches: the store itself, in this process, or a
    :class:`~qhpc.store.CommitterProcess` (the same calls in a child process)."""

    def record_finished_tasks(
        self,
        finished: Sequence[Finished],
        *,
        relaxed: bool = True,
        encoded: Sequence[bytes] | None = None,
    ) -> list[UsageRecord]: ...

    def is_stored(self, task_id: str) -> bool: ...

    def close(self) -> None: ...


class InProcess:
    """The store's own calls, run by the journal's thread (an in-memory store, which
    no other process can open, or a broker configured so)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record_finished_tasks(
        self,
        finished: Sequence[Finished],
        *,
        relaxed: bool = True,
        encoded: Sequence[bytes] | None = None,
    ) -> list[UsageRecord]:
        return self.store.record_finished_tasks(finished, relaxed=relaxed)

    def is_stored(self, task_id: str) -> bool:
        return task_is_stored(self.store, task_id)

    def close(self) -> None:
        pass


def writer_for(store: Store, in_process: bool = False) -> Writer:
    """A committer process for a store other processes can open, unless ``in_process``."""
    url = None if in_process else store.reopen_url()
    return InProcess(store) if url is None else CommitterProcess(url)


class Journal:
    """One writer thread; ``append`` never waits for the disk or the store."""

    def __init__(
        self,
        store: Store,
        on_committed: Callable[[Sequence[Finished]], None],
        *,
        log_dir: Path | None = None,
        commit_interval: float = COMMIT_INTERVAL,
        on_booked: Callable[[Sequence[UsageRecord]], None] | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.store = store
        #: commits the batches (the store in this process unless a committer is given)
        self.writer = writer or InProcess(store)
        self.on_committed = on_committed
        #: told the usage each commit booked (the broker counts it for /metrics)
        self.on_booked = on_booked
        self.log_dir = log_dir
        self.commit_interval = commit_interval
        self._pending: list[Finished] = []
        #: the same tasks as their log records: a committer process is sent these bytes
        #: rather than the objects encoded a second time
        self._records: list[bytes] = []
        self._cond = threading.Condition()
        self._appended = 0
        self._committed = 0
        #: when the oldest task of the batch being committed finished (None: no commit)
        self._committing_since: float | None = None
        self._flush_waiters = 0
        self._stopping = False
        self._log_failed = False
        self._segment_number = 0
        self._numbering = threading.Lock()
        self._started = False
        #: the segment appends go to: (path, fd), opened on the first append after a rotation
        self._segment: tuple[Path, int] | None = None
        #: the next segment, opened ahead by the writer so that appends never open files
        self._spare: tuple[Path, int] | None = None
        #: rotated segments and the append count they end at; deleted once committed
        self._closed_segments: list[tuple[int, Path, int]] = []
        #: commits wait for the disk unless the store shares the log's failure domain:
        #: an SQLite file on this machine loses a relaxed commit only when the machine
        #: crashes, and then the log (never fsync'd) is gone too; a PostgreSQL server
        #: fails on its own, and with ``synchronous_commit = off`` its crash would lose
        #: commits whose log segments were already deleted
        self.relaxed = store.backend == "sqlite"
        #: the writer stopped with tasks uncommitted (their segments are kept)
        self._abandoned = False
        self._thread = threading.Thread(target=self._write_loop, name="qhpc-journal", daemon=True)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if not self._started and not self._stopping:
                self._started = True
                self._thread.start()

    def stop(self) -> None:
        self.flush(STOP_PATIENCE)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        with self._cond:
            self._rotate()
            self._drop_committed_segments()
            kept, self._closed_segments = self._closed_segments, []
            spare, self._spare = self._spare, None
            uncommitted = self._appended - self._committed
        for _, _path, fd in kept:  # uncommitted: the next start's recover() stores them
            os.close(fd)
        if uncommitted:
            where = (
                f"their log is kept in {self.log_dir} and replayed at the next start"
                if kept and not self._log_failed
                else "they were not logged and are lost"
            )
            log.error("journal: stopped with %d session task(s) not committed; %s",
                      uncommitted, where)  # fmt: skip
        if spare is not None:
            _discard(spare)
        self.writer.close()

    def recover(self) -> int:
        """Store what the log of an earlier run holds and the store does not (a crash
        between release and commit); returns how many tasks were stored. Call before
        :meth:`start`. Segments another live process is writing are left alone."""
        if self.log_dir is None or not self.log_dir.is_dir():
            return 0
        # An earlier run (or an older qhpc) may have left it readable: tighten or refuse.
        secure_dir(self.log_dir)
        tighten_file(self.log_dir / DEAD_LETTER)
        stored = 0
        for path in sorted(self.log_dir.glob("*" + SEGMENT_SUFFIX)):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live broker's current segment
                records = _read_segment(path)
                missing = [item for item in records if not self._is_stored(item[0].task_id)]
                if missing:
                    # A store that fails now raises: the segment stays for the next start.
                    self._store(missing, relaxed=False)
                    stored += len(missing)
                    log.warning(
                        "journal: stored %d session task(s) from %s that a crash left uncommitted",
                        len(missing),
                        path.name,
                    )
                path.unlink()
            finally:
                os.close(fd)
        return stored

    # -- appending -------------------------------------------------------------------

    def append(self, task: TaskRecord, outcome: TaskOutcome) -> bool:
        """Log and queue a finished task; ``True`` if it is in the log (its result may
        be released now), ``False`` if only queued (release it after :meth:`flush`)."""
        if not self._started:
            self.start()  # also serves a broker whose executors were never started
        record = _encoder.encode((task, outcome))
        with self._cond:
            logged = self._log(record)
            self._pending.append((task, outcome))
            self._records.append(record)
            self._appended += 1
            if len(self._pending) == 1:
                self._cond.notify_all()
        return logged

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything appended so far is committed (or failed)."""
        with self._cond:
            target = self._appended
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(
                    lambda: self._committed >= target or not self._thread.is_alive(), timeout
                )
            finally:
                self._flush_waiters -= 1

    @property
    def uncommitted(self) -> int:
        """Finished tasks appended but not committed yet."""
        with self._cond:
            return self._appended - self._committed

    def lag(self, now: float) -> tuple[int, float]:
        """Finished tasks not committed yet, and how long ago (``now`` on the clock of
        the outcomes' ``finished_at``) the oldest of them finished; 0 s when none."""
        with self._cond:
            count = self._appended - self._committed
            oldest = self._committing_since
            if oldest is None and self._pending:
                oldest = self._pending[0][1].finished_at
        return count, 0.0 if oldest is None or count == 0 else max(0.0, now - oldest)

    # -- internals -------------------------------------------------------------------

    def _log(self, record: bytes) -> bool:
        # Caller holds self._cond.
        if self.log_dir is None or self._log_failed:
            return False
        try:
            if self._segment is None:
                self._segment, self._spare = self._spare or self._open_segment(), None
            os.write(self._segment[1], FRAME.pack(len(record)) + record)
        except OSError as error:
            # Releasing after the commit is still correct, only slower: keep serving.
            log.error("journal: cannot write the log in %s (%s); results of session "
                      "tasks are now released after their commit", self.log_dir, error)  # fmt: skip
            self._log_failed = True
            return False
        return True

    def _open_segment(self) -> tuple[Path, int]:
        assert self.log_dir is not None
        private_dir(self.log_dir, tighten=False)  # recover() judged an existing one
        while True:
            with self._numbering:
                if self._segment_number == 0:
                    existing = [
                        int(p.stem)
                        for p in self.log_dir.glob("*" + SEGMENT_SUFFIX)
                        if p.stem.isdigit()
                    ]
                    self._segment_number = max(existing, default=0)
                self._segment_number += 1
                path = self.log_dir / f"{self._segment_number:012d}{SEGMENT_SUFFIX}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            except FileExistsError:
                continue  # another broker's segment
            fcntl.flock(fd, fcntl.LOCK_EX)
            return path, fd

    def _rotate(self) -> None:
        # Caller holds self._cond: later appends go to a new segment; this one is
        # deleted once everything appended so far is committed.
        if self._segment is not None:
            path, fd = self._segment
            self._closed_segments.append((self._appended, path, fd))
            self._segment = None

    def _drop_committed_segments(self) -> None:
        # Caller holds self._cond.
        while self._closed_segments and self._closed_segments[0][0] <= self._committed:
            _, path, fd = self._closed_segments.pop(0)
            try:
                path.unlink()
            except OSError as error:
                log.warning("journal: cannot delete %s: %s", path, error)
            os.close(fd)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or bool(self._pending))
                if not self._pending and self._stopping:
                    return
                # Gather: more tasks finish meanwhile and share the commit. A flush
                # or a full batch does not wait.
                self._cond.wait_for(
                    lambda: (
                        self._stopping or self._flush_waiters > 0 or len(self._pending) >= MAX_BATCH
                    ),
                    self.commit_interval,
                )
                batch = self._pending[:MAX_BATCH]
                records = self._records[:MAX_BATCH]
                del self._pending[:MAX_BATCH], self._records[:MAX_BATCH]
                self._committing_since = batch[0][1].finished_at if batch else None
                if not self._pending:
                    self._rotate()
            if not self._commit(batch, records):
                with self._cond:
                    self._abandoned = True  # the segments stay; stop() says so
                    self._cond.notify_all()
                return
            with self._cond:
                self._committed += len(batch)
                self._committing_since = None
                self._drop_committed_segments()
            try:
                self.on_committed(batch)
            finally:
                with self._cond:
                    self._cond.notify_all()
            self._prepare_spare()

    def _prepare_spare(self) -> None:
        with self._cond:
            if self._spare is not None or self.log_dir is None or self._log_failed:
                return
        try:
            opened = self._open_segment()
        except OSError:
            return  # the next append opens one itself (and reports what fails)
        with self._cond:
            installed = self._spare is None and not self._stopping
            if installed:
                self._spare = opened
        if not installed:
            _discard(opened)

    def _commit(self, batch: list[Finished], records: list[bytes]) -> bool:
        """Store ``batch``, retrying while the store fails; False if the journal is
        stopping and the store still fails (the log keeps the batch for recovery)."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                self._store(batch, relaxed=self.relaxed, records=records)
                return True
            except Exception as error:  # transient (see _store): the batch waits, whole
                with self._cond:
                    if self._stopping:
                        log.error("journal: giving up storing %d session task(s) at stop: %s",
                                  len(batch), error)  # fmt: skip
                        return False
                log.error("journal: cannot store %d session task(s), retrying in %.2f s: %s",
                          len(batch), delay, error)  # fmt: skip
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, delay)
                delay = min(2 * delay, RETRY_MAX_SECONDS)

    def _booked(self, records: list[UsageRecord]) -> None:
        """Tell ``on_booked`` what a transaction that has just committed booked."""
        if records and self.on_booked is not None:
            try:
                self.on_booked(records)
            except Exception:  # counting is never a reason to lose a commit
                log.exception("journal: reporting booked usage failed")

    def _store(
        self, batch: list[Finished], *, relaxed: bool, records: list[bytes] | None = None
    ) -> None:
        """Store ``batch``: every task ends stored, or dead-lettered when the store
        refuses it for good. Raises on a transient failure (nothing is lost then: the
        caller retries, and tasks stored meanwhile are recognised and skipped)."""
        try:
            self._booked(self.writer.record_finished_tasks(batch, relaxed=relaxed, encoded=records))
            return
        except StoreError as error:
            if not _permanent(error):
                raise
        except Exception:
            pass  # a bad record: sorted out one by one below
        # One bad task (its session job closed meanwhile, or stored by a commit whose
        # answer was lost) must not take the batch down with it: one by one.
        for item in batch:
            try:
                self._booked(self.writer.record_finished_tasks([item], relaxed=relaxed))
            except StoreError as error:
                if not _permanent(error):
                    raise
                if not self._is_stored(item[0].task_id):
                    self._dead_letter(item, error)
            except Exception as error:  # not storable at all: keep it for an admin
                self._dead_letter(item, error)

    def _dead_letter(self, item: Finished, error: Exception) -> None:
        """Keep a task the store refuses for good where an admin finds it."""
        task, outcome = item
        directory = self.log_dir
        path = None if directory is None else directory / DEAD_LETTER
        if directory is not None and path is not None:
            record = _encoder.encode(item)
            try:
                private_dir(directory, tighten=False)
                fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                try:
                    os.write(fd, FRAME.pack(len(record)) + record)
                    os.fsync(fd)  # rare, and its segment is deleted once this returns
                finally:
                    os.close(fd)
            except OSError as write_error:
                log.error("journal: cannot write %s: %s", path, write_error)
                path = None
        kept = f"kept in {path}" if path is not None else "not kept anywhere else"
        log.error(
            "journal: the store refuses session task %s (job %s, account %s, %s, "
            "%.6f QPU s): %s; %s",
            task.task_id, task.job_id, task.account, outcome.state, outcome.qpu_seconds, error,
            kept,
        )  # fmt: skip

    def _is_stored(self, task_id: str) -> bool:
        return self.writer.is_stored(task_id)


def _permanent(error: StoreError) -> bool:
    """Whether retrying cannot help: the task's job is missing or final, or the task
    conflicts with a stored one. Anything else (a lost connection, a locked file) may
    pass on the next attempt."""
    return isinstance(error, ConflictError | NotFoundError)


def _discard(segment: tuple[Path, int]) -> None:
    """Delete an unused (empty) segment."""
    path, fd = segment
    try:
        path.unlink()
    except OSError:
        pass
    os.close(fd)


def _read_segment(path: Path) -> list[Finished]:
    """The records of one segment; a torn last frame (a crash mid-write) ends it."""
    data = path.read_bytes()
    records: list[Finished] = []
    offset = 0
    while offset + FRAME.size <= len(data):
        (size,) = FRAME.unpack_from(data, offset)
        body = data[offset + FRAME.size : offset + FRAME.size + size]
        if len(body) < size:
            log.warning("journal: %s ends with a torn record (ignored)", path.name)
            break
        offset += FRAME.size + size
        try:
            records.append(_decoder.decode(body))
        except msgspec.DecodeError as error:
            log.error("journal: unreadable record in %s skipped: %s", path.name, error)
    return records
