"""Store finished session tasks from a process of its own: commits off the broker's interpreter.

The journal (:mod:`qhpc.broker.journal`) stores session tasks in group commits, a
few hundred tasks per transaction. On SQLAlchemy that costs ~35 µs of Python per
task, and in the broker's process every one of those microseconds holds the
interpreter lock that the session data plane needs: a profile of the fast path
under load put a fifth of the broker's lock-held time in the journal's thread, and a
thread waiting for the lock waits up to the interpreter's 5 ms switch interval (the
p99 of a session step). :class:`CommitterProcess` moves that work into a child
process (``python -m qhpc.store.commit_child``) with its own interpreter and its own
connection to the same store; the broker only encodes the batch (msgspec, ~1 µs a
task) and waits on a pipe, which releases the lock.

Nothing about durability changes: the journal deletes a log segment only after the
child has answered that the commit covering it is done, and a child that dies or
hangs is a transient failure like a lost database connection — the journal retries
the batch (the next call starts a new child) and the log keeps it meanwhile. The
child exits when its stdin closes, so it never outlives the broker.

Wire: frames ``!I`` (length) + MessagePack, on the child's stdin/stdout. The first
frame carries the store URL with its password (a pipe, never the command line or
the environment of a process others can read); then requests ``["store", relaxed,
[[task, outcome], ...]]`` or ``["stored", task_id]``, answered ``["ok", value]`` or
``["error", kind, message]`` where ``kind`` names the store error to raise again
(``conflict``, ``not_found``, ``store``), ``record`` for a batch the store cannot
take at all (:class:`CommitFailed`: the journal then sorts it out task by task), or
``unopened`` when the child could not open the store (it exits after saying so, and
the next request starts a new child).
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

from qhpc.store.errors import ConflictError, NotFoundError, StoreError
from qhpc.store.records import TaskOutcome, TaskRecord, UsageRecord

if TYPE_CHECKING:
    from qhpc.store.store import Store

FRAME: Final = struct.Struct("!I")
#: longest a commit may take before the child is called hung, killed and replaced (its
#: batch is retried); far above PostgreSQL's connect timeout and SQLite's busy timeout
ANSWER_SECONDS: Final = 120.0
#: an answer larger than this is nonsense (a batch's usage records are ~200 B a task)
MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024

Finished = tuple[TaskRecord, TaskOutcome]

ENCODER = msgspec.msgpack.Encoder()
#: an answer's parts, each decoded for what it is once the status is known
PARTS = msgspec.msgpack.Decoder(list[msgspec.Raw])
_usage = msgspec.msgpack.Decoder(list[UsageRecord])
_ERRORS: Final[dict[str, type[StoreError]]] = {
    "conflict": ConflictError,
    "not_found": NotFoundError,
    "store": StoreError,
}


def task_is_stored(store: Store, task_id: str) -> bool:
    """Whether ``store`` holds the task: the journal's question after a commit whose
    answer was lost, asked in process or in the committer process."""
    try:
        store.get_task(task_id)
    except NotFoundError:
        return False
    return True


class CommitFailed(Exception):
    """The committer process could not store a batch because of its records, not the
    store: a value the store refuses outright (``_check_outcome``) or one the driver
    cannot bind. Not a :class:`StoreError`, which the journal retries: the journal sorts
    such a batch out task by task and keeps what cannot be stored in its dead letters,
    exactly as when it commits in process."""


class CommitterProcess:
    """The journal's writer in a child process; one request at a time (the journal's
    one writer thread), thread-safe all the same."""

    def __init__(self, url: str, *, answer_seconds: float = ANSWER_SECONDS) -> None:
        self._url = url
        self.answer_seconds = answer_seconds
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    # -- the journal's two calls ---------------------------------------------------------

    def record_finished_tasks(
        self,
        finished: Sequence[Finished],
        *,
        relaxed: bool = True,
        encoded: Sequence[bytes] | None = None,
    ) -> list[UsageRecord]:
        """As :meth:`Store.record_finished_tasks`, in the child. ``encoded``: the same
        tasks already encoded each as MessagePack ``[task, outcome]`` (the journal's log
        records), sent as they are instead of encoding the objects again."""
        if encoded is not None and len(encoded) == len(finished):
            body: list[Any] = [msgspec.Raw(record) for record in encoded]
        else:
            body = list(finished)
        answer = self._ask(ENCODER.encode(("store", relaxed, body)))
        return _usage.decode(answer)

    def is_stored(self, task_id: str) -> bool:
        return bool(msgspec.msgpack.decode(self._ask(ENCODER.encode(("stored", task_id)))))

    def close(self) -> None:
        with self._lock:
            self._stop()

    @property
    def pid(self) -> int | None:
        """The child's pid while one runs (tests kill it to prove a restart)."""
        process = self._process
        return None if process is None or process.poll() is not None else process.pid

    # -- internals -------------------------------------------------------------------------

    def _ask(self, request: bytes) -> bytes:
        with self._lock:
            process = self._process
            if process is None or process.poll() is not None:
                self._stop()
                process = self._start()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(FRAME.pack(len(request)) + request)
                process.stdin.flush()
                deadline = time.monotonic() + self.answer_seconds
                answer = _read_frame(process.stdout.fileno(), deadline)
            except (OSError, StoreError) as error:
                self._stop()  # the next call starts a fresh child
                if isinstance(error, StoreError):
                    raise
                raise StoreError(f"the committer process failed: {error}") from None
        try:
            status, *rest = PARTS.decode(answer)
            if msgspec.msgpack.decode(status) == "ok" and len(rest) == 1:
                return bytes(rest[0])
            kind, message = (str(msgspec.msgpack.decode(part)) for part in rest)
        except (msgspec.DecodeError, ValueError):
            with self._lock:
                self._stop()
            raise StoreError("the committer process answered nonsense") from None
        if kind == "unopened":
            # The child could not open the store and has exited after saying so: the
            # next call starts a new one (a database that was down may be back).
            with self._lock:
                self._stop()
            raise StoreError(message)
        raise _ERRORS.get(kind, CommitFailed)(message)

    def _start(self) -> subprocess.Popen[bytes]:
        # The broker's own environment, which is the operator's, not a tenant's: libpq
        # reads PGPASSFILE, PGSSL*, PGSERVICEFILE and KRB5CCNAME from it, and systemd's
        # CREDENTIALS_DIRECTORY points at the password file of the documented set-up. Only
        # qhpc's own variables (tokens among them) are left out: the child needs none.
        env = {k: v for k, v in os.environ.items() if not k.startswith("QHPC_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "qhpc.store.commit_child"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                env=env, cwd="/", close_fds=True,
            )  # fmt: skip
        except OSError as error:
            raise StoreError(f"cannot start the committer process: {error.strerror}") from None
        assert process.stdin is not None
        hello = ENCODER.encode({"url": self._url})
        try:
            process.stdin.write(FRAME.pack(len(hello)) + hello)
            process.stdin.flush()
        except OSError as error:
            process.kill()
            process.wait()
            raise StoreError(f"the committer process failed at start: {error}") from None
        self._process = process
        return process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        try:
            process.wait(timeout=5)  # stdin closed: it exits after its current commit
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise StoreError("the committer process did not answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise StoreError("the committer process exited")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float) -> bytes:
    (size,) = FRAME.unpack(_read_exactly(fd, FRAME.size, deadline))
    if size > MAX_ANSWER_BYTES:
        raise StoreError("the committer process answered nonsense")
    return _read_exactly(fd, size, deadline)
