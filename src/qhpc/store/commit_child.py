"""The child's side of :mod:`qhpc.store.committer`: ``python -m qhpc.store.commit_child``.

A module of its own so that running it does not import it twice (the package's
``__init__`` imports the parent's side). It reads the store URL from its first
frame, opens the store and answers the journal's requests until its stdin closes.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from qhpc.store.committer import ENCODER, FRAME, PARTS, task_is_stored
from qhpc.store.errors import ConflictError, NotFoundError, StoreError
from qhpc.store.records import TaskOutcome, TaskRecord
from qhpc.store.store import Store


def _error_kind(error: Exception) -> str:
    if isinstance(error, ConflictError):
        return "conflict"
    if isinstance(error, NotFoundError):
        return "not_found"
    if isinstance(error, StoreError):
        return "store"
    return "record"


def _serve(stdin: Any, stdout: Any) -> int:
    def read() -> bytes | None:
        head = stdin.read(FRAME.size)
        if len(head) < FRAME.size:
            return None  # the broker closed the pipe (or died): we are done
        (size,) = FRAME.unpack(head)
        body: bytes = stdin.read(size)
        return body if len(body) == size else None

    def write(body: object) -> None:
        data = ENCODER.encode(body)
        stdout.write(FRAME.pack(len(data)) + data)
        stdout.flush()

    hello = read()
    if hello is None:
        return 0
    url = msgspec.msgpack.decode(hello)["url"]
    batch = msgspec.msgpack.Decoder(tuple[bool, list[tuple[TaskRecord, TaskOutcome]]])
    try:
        store = Store.open(url)
    except Exception as error:  # say so once, then exit: the broker starts a new child
        if read() is not None:
            write(("error", "unopened", f"the committer cannot open the store: {error}"))
        return 1
    with store:
        while (request := read()) is not None:
            try:
                kind, *parts = PARTS.decode(request)
                if msgspec.msgpack.decode(kind) == "stored":
                    write(("ok", task_is_stored(store, str(msgspec.msgpack.decode(parts[0])))))
                    continue
                relaxed, finished = batch.decode(ENCODER.encode(parts))
                write(("ok", store.record_finished_tasks(finished, relaxed=relaxed)))
            except Exception as error:
                write(("error", _error_kind(error), str(error)))
    return 0


if __name__ == "__main__":  # pragma: no cover - the child, run by the journal's tests
    sys.exit(_serve(sys.stdin.buffer, sys.stdout.buffer))
