"""Program output: bounded per stream, served live, written to the store behind the program.

Path of a line a co-located program prints::

    program's pipe → pool I/O thread → ProgramOutput.write   (append to memory, O(1))
                                             │ every FLUSH_INTERVAL_S, or at once
                                             ▼ past FLUSH_BYTES unwritten
                               OutputWriter thread → Store.append_output
                               (one transaction for every running program's new bytes)

So a print costs the program's pipe and an append, never a store write, and what a
program printed is in the store at most ~FLUSH_INTERVAL_S later: ``qhpc logs`` shows
it after the broker was killed (the restart marks the program interrupted, see
``ProgramManager.recover``).

Each stream keeps its first ``limit`` bytes (``BrokerConfig.program_output_limit``,
4 MiB by default) including, once a program prints more, the marker
``[qhpc: stdout truncated after N bytes]``; what comes after the marker is dropped.
Offsets are byte offsets into a stream as kept (UTF-8; bytes that are not become
U+FFFD), the same in memory and in the store, since the store holds a prefix of it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from qhpc.store import OUTPUT_STREAMS, OutputPiece, Store

log = logging.getLogger(__name__)

#: longest a printed line waits in memory before it is written to the store (s)
FLUSH_INTERVAL_S = 0.5
#: unwritten bytes of one program that make the writer write at once
FLUSH_BYTES = 64 << 10
#: bytes each stream of a program keeps, marker included (BrokerConfig's default)
DEFAULT_OUTPUT_LIMIT = 4 << 20
#: the smallest limit a broker accepts: room for the marker and some output
MIN_OUTPUT_LIMIT = 1024
_MARKER = "\n[qhpc: {stream} truncated after {kept} bytes]\n"


@dataclass(frozen=True)
class ProgramLogs:
    """Output from the given byte offsets on; ``final`` once the program ended."""

    stdout: str
    stderr: str
    stdout_offset: int
    stderr_offset: int
    final: bool


class _Stream:
    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.data = bytearray()
        self.written = 0  # bytes already in the store
        self.truncated = False
        # The most output it keeps, so the marker (whatever its count) fits in the limit.
        self.room = limit - len(_MARKER.format(stream=name, kept=limit).encode())

    def add(self, chunk: bytes) -> None:
        if self.truncated:
            return
        if len(self.data) + len(chunk) <= self.room:
            self.data += chunk
            return
        # Cut before a character, not inside one: the first byte dropped must not be a
        # UTF-8 continuation byte (0b10xxxxxx). ``data`` ends where a chunk ended, so at
        # a character, and the cut never goes below it (that may be in the store).
        have = len(self.data)
        kept = self.room
        while kept > have and chunk[kept - have] & 0xC0 == 0x80:
            kept -= 1
        self.data += chunk[: kept - have]
        self.data += _MARKER.format(stream=self.name, kept=kept).encode()
        self.truncated = True


class ProgramOutput:
    """The kept output of one running program (see the module docstring)."""

    def __init__(self, job_id: str, limit: int = DEFAULT_OUTPUT_LIMIT) -> None:
        if limit < MIN_OUTPUT_LIMIT:
            raise ValueError(f"the output limit is {limit} bytes; at least {MIN_OUTPUT_LIMIT}")
        self.job_id = job_id
        self._streams = {name: _Stream(name, limit) for name in OUTPUT_STREAMS}
        self._lock = threading.Lock()

    def write(self, stream: str, text: str) -> int:
        """Keeps what fits of ``text``; returns the bytes not yet in the store."""
        chunk = text.encode("utf-8", "replace")
        with self._lock:
            self._streams[stream].add(chunk)
            return self._unwritten()

    def read(self, stream: str, offset: int) -> tuple[bytes, int]:
        """Bytes of ``stream`` from ``offset`` on, and its length."""
        with self._lock:
            data = self._streams[stream].data
            return bytes(data[offset:]), len(data)

    def unwritten(self) -> list[OutputPiece]:
        """What the store does not have yet, one piece per stream that has some."""
        with self._lock:
            return [
                OutputPiece(self.job_id, s.name, s.written, bytes(s.data[s.written :]))
                for s in self._streams.values()
                if len(s.data) > s.written
            ]

    def stored(self, pieces: list[OutputPiece]) -> None:
        """Marks ``pieces`` (from :meth:`unwritten`) as written."""
        with self._lock:
            for piece in pieces:
                stream = self._streams[piece.stream]
                stream.written = max(stream.written, piece.offset + len(piece.data))

    def _unwritten(self) -> int:
        return sum(len(s.data) - s.written for s in self._streams.values())


class OutputWriter:
    """One thread writes every registered program's new output to the store in batches."""

    def __init__(self, store: Store, interval: float = FLUSH_INTERVAL_S) -> None:
        self.store = store
        self.interval = interval
        self._outputs: dict[str, ProgramOutput] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one batch at a time, in order
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, output: ProgramOutput) -> None:
        """Writes ``output`` behind its program from now on (starts the thread)."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("the output writer is stopped")
            self._outputs[output.job_id] = output
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="qhpc-program-output", daemon=True
                )
                self._thread.start()

    def nudge(self) -> None:
        """Write now rather than at the next interval (a program printed a lot)."""
        self._wake.set()

    def finish(self, output: ProgramOutput) -> bool:
        """Writes the rest of ``output`` and forgets it; False if the store refused."""
        with self._lock:
            self._outputs.pop(output.job_id, None)
        return self._write([output])

    def close(self) -> None:
        """Stops the thread after a last write of everything registered."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()
        with self._lock:
            outputs = list(self._outputs.values())
        self._write(outputs)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                if self._stopping:
                    return
                outputs = list(self._outputs.values())
            self._write(outputs)

    def _write(self, outputs: list[ProgramOutput]) -> bool:
        with self._write_lock:
            batch = [(output, output.unwritten()) for output in outputs]
            pieces = [piece for _, found in batch for piece in found]
            if not pieces:
                return True
            try:
                self.store.append_output(pieces)
            except Exception as error:  # kept in memory: the next round tries again
                if not self._failing:
                    log.warning("cannot write program output to the store: %s", error)
                self._failing = True
                return False
            if self._failing:
                log.warning("program output is written to the store again")
                self._failing = False
            for output, found in batch:
                output.stored(found)
            return True


def read_logs(
    read: Callable[[str, int], tuple[bytes, int]], stdout_offset: int, stderr_offset: int,
    *, final: bool,
) -> ProgramLogs:  # fmt: skip
    """Both streams from their offsets on, through ``read(stream, offset)``.

    Output is UTF-8 cut at characters, so text ends where the bytes do; an offset a
    client made up may land inside a character, which then reads as U+FFFD.
    """
    out, out_end = read("stdout", stdout_offset)
    err, err_end = read("stderr", stderr_offset)
    return ProgramLogs(
        out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), out_end, err_end, final
    )
