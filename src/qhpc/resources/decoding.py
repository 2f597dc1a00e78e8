"""Decode untrusted circuit data in worker processes that cannot stall or bloat the broker.

The budgets of :mod:`qhpc.resources.limits` bound what a *decoded* circuit may cost,
but decoding itself can be the expensive part: Qiskit's OpenQASM 3 importer (ANTLR)
takes ~28 µs and ~0.7 kB per byte of source, libqasm's cQASM analyser ~17 µs and
~1.2 kB per byte (bench/bench_decoding.py), and a crafted QPY header can ask for
billions of qubits. None of that can be interrupted inside the broker's own process.
So the broker hands each request's circuit text and every QPY blob it has not seen
before to a :class:`DecodePool`:

* each worker is a separate Python process (``python -m qhpc.resources.decoding``)
  with an address-space limit (its footprint after imports + ``max_memory_bytes``),
  an empty environment (no token the broker holds reaches it), ``/`` as its working
  directory and, when the broker runs as root, the uid and gid of ``nobody``;
* the broker waits at most ``max_seconds`` for an answer; past that, or when the
  worker dies (a Rust allocator aborts instead of raising), the worker is killed and
  replaced, and the request fails with :class:`LimitExceeded` naming the limit;
* answers are MessagePack, never pickle, so even a compromised worker cannot make
  the broker run code: it can only send circuits as QPY, which the broker reads back
  and measures again against the same budget.

QIR (LLVM IR text or bitcode) is read here too, since LLVM cannot be interrupted either.
A circuit sent as QPY that carries QIR metadata (``qhpc_qir``, which resources taking
QIR run instead of the gates) has that QIR converted again and compared with its gates
here (:func:`~qhpc.resources.qir.check_qir_metadata`): the broker never parses QIR.

Circuit text comes back as QPY (the broker never parses the text itself); for a QPY
blob or an encoded payload the worker's answer is only "within budget", after which
the broker decodes the same bytes itself — deterministic, so the same bounded cost.
A worker answers in ~0.3 ms for a small circuit (~0.1 ms to screen QPY); sessions'
hot paths only pay it for a circuit they have not sent before (``PayloadDecoder``
remembers the rest).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import resource
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import msgspec
from qiskit.circuit import QuantumCircuit

from qhpc.resources.errors import (
    CircuitParseError,
    LimitExceeded,
    PayloadError,
    ResourceError,
)
from qhpc.resources.limits import DEFAULT_LIMITS, DecodeLimits

_FRAME = struct.Struct(">I")
#: largest answer a worker may send (its circuits as QPY; far above any budgeted circuit)
_MAX_ANSWER_BYTES = 256 * 1024 * 1024
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
#: errors a worker may report, by name; anything else becomes a PayloadError
_ERRORS: dict[str, type[Exception]] = {
    "CircuitParseError": CircuitParseError,
    "LimitExceeded": LimitExceeded,
    "PayloadError": PayloadError,
}


class DecoderUnavailable(ResourceError):
    """No decoding worker could be started or freed in time (the service's state: 503)."""


class _Worker:
    """One decoding process and its pipes."""

    def __init__(self, limits: DecodeLimits) -> None:
        env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            kwargs = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qhpc.resources.decoding"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/",
            close_fds=True,
            **kwargs,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin
        self._out = self.process.stdout.fileno()
        _send(self._in, {"limits": asdict(limits)})

    def ask(self, request: dict[str, Any], deadline: float, limits: DecodeLimits) -> Any:
        _send(self._in, request)
        answer = _receive(self._out, deadline, limits)
        if not isinstance(answer, dict):
            raise PayloadError("the decoder answered nonsense")
        return answer

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(Exception):
            self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()


def _send(stream: Any, body: object) -> None:
    data = _encoder.encode(body)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def _read_exactly(fd: int, size: int, deadline: float, limits: DecodeLimits) -> bytes:
    chunks = []
    while size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise LimitExceeded("max_seconds", limits.max_seconds, "decoding took too long")
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise LimitExceeded(
                "max_memory_bytes",
                limits.max_memory_bytes,
                "the decoder stopped while reading this input (memory or a crash)",
            )
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float, limits: DecodeLimits) -> Any:
    (size,) = _FRAME.unpack(_read_exactly(fd, _FRAME.size, deadline, limits))
    if size > _MAX_ANSWER_BYTES:
        raise PayloadError("the decoder's answer is too large")
    return _decoder.decode(_read_exactly(fd, size, deadline, limits))


class DecodePool:
    """Worker processes that decode untrusted circuit data under ``limits``.

    Thread-safe: each call borrows an idle worker (waiting up to ``max_seconds`` for
    one) and gives it back, or kills it and starts a new one after a breach. Workers
    start on first use; :meth:`start` starts them ahead (the broker does, at boot).
    """

    def __init__(self, limits: DecodeLimits = DEFAULT_LIMITS, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError("a decode pool needs at least one worker")
        self.limits = limits
        self.size = workers
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(workers):
            self._idle.put(None)  # a slot; its worker starts when first borrowed
        self._closed = False
        self._lock = threading.Lock()
        self._live: set[_Worker] = set()

    def start(self) -> None:
        """Start every worker now (in the background of the first requests otherwise)."""
        slots = [self._idle.get() for _ in range(self.size)]
        try:
            slots = [slot or self._spawn() for slot in slots]
        finally:
            for slot in slots:
                self._idle.put(slot)

    def _spawn(self) -> _Worker:
        try:
            worker = _Worker(self.limits)
        except OSError as exc:
            raise DecoderUnavailable(f"cannot start a decoding worker: {exc.strerror}") from None
        with self._lock:
            self._live.add(worker)
        return worker

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[_Worker]:
        if self._closed:
            raise DecoderUnavailable("the decode pool is closed")
        try:
            slot = self._idle.get(timeout=self.limits.max_seconds)
        except queue.Empty:
            raise DecoderUnavailable("every decoding worker is busy; retry later") from None
        worker: _Worker | None = None
        try:
            if slot is not None and slot.process.poll() is not None:
                self._retire(slot)  # died between requests (killed from outside)
                slot = None
            worker = slot or self._spawn()
            yield worker
        except (LimitExceeded, BrokenPipeError, OSError, msgspec.DecodeError) as exc:
            # A breach or a broken worker: never reuse it (it may be mid-answer or bloated).
            if worker is not None:
                self._retire(worker)
            worker = None
            if isinstance(exc, LimitExceeded):
                raise
            raise LimitExceeded(
                "max_memory_bytes",
                self.limits.max_memory_bytes,
                "the decoder stopped while reading this input (memory or a crash)",
            ) from None
        finally:
            self._idle.put(worker)

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._live.discard(worker)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        deadline = self.limits.deadline()
        with self._borrow() as worker:
            answer: dict[str, Any] = worker.ask(request, deadline, self.limits)
        error = answer.get("error")
        if error is not None:
            raise _error_from(answer)
        return answer

    def circuits(self, sources: list[str | bytes]) -> list[list[QuantumCircuit]]:
        """The circuits of each source (text or QPY), all measured as one request."""
        from qhpc.resources.codec import load_qpy

        answer = self._ask({"op": "circuits", "sources": sources})
        blob, counts = answer.get("qpy"), answer.get("counts")
        if not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
            raise PayloadError("the decoder answered nonsense")
        circuits = load_qpy(blob, allow_empty=True, limits=self.limits) if counts else []
        if sum(counts) != len(circuits):
            raise PayloadError("the decoder answered nonsense")
        out, at = [], 0
        for count in counts:
            out.append(circuits[at : at + count])
            at += count
        return out

    def check_payloads(self, blobs: list[bytes]) -> None:
        """Raise if any encoded payload is outside the budget (or unreadable)."""
        self._ask({"op": "payloads", "blobs": blobs})

    def check_qpy(self, blob: bytes) -> None:
        self._ask({"op": "qpy", "blob": blob})

    def close(self) -> None:
        self._closed = True
        with self._lock:
            live, self._live = self._live, set()
        for worker in live:
            worker.kill()


def _error_from(answer: dict[str, Any]) -> Exception:
    kind = answer.get("error")
    args = answer.get("args")
    cls = _ERRORS.get(kind) if isinstance(kind, str) else None
    try:
        if cls is LimitExceeded and isinstance(args, list) and len(args) == 3:
            value = args[1] if isinstance(args[1], int | float) else float("nan")
            return LimitExceeded(str(args[0]), value, str(args[2]))
        if cls is CircuitParseError and isinstance(args, list) and len(args) == 4:
            line, column = args[2], args[3]
            return CircuitParseError(
                str(args[0]),
                str(args[1]),
                line if isinstance(line, int) else None,
                column if isinstance(column, int) else None,
            )
        if cls is PayloadError and isinstance(args, list) and len(args) == 1:
            return PayloadError(str(args[0]))
    except (TypeError, ValueError):
        pass
    return PayloadError("the decoder refused this input")


_shared: dict[DecodeLimits, DecodePool] = {}
_shared_lock = threading.Lock()


def shared_pool(limits: DecodeLimits = DEFAULT_LIMITS) -> DecodePool:
    """One pool per set of limits for the whole process (brokers in one process share it)."""
    with _shared_lock:
        pool = _shared.get(limits)
        if pool is None:
            pool = _shared[limits] = DecodePool(limits)
        return pool


# --- the worker side ---------------------------------------------------------------------


def _limit_memory(extra: int) -> None:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    footprint = pages * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (footprint + extra, footprint + extra))


def _load_one(load: Any, source: str | bytes, limits: DecodeLimits, index: int) -> Any:
    try:
        return load(source, limits=limits)
    except CircuitParseError as exc:  # keep line and column; add which circuit of the list
        raise CircuitParseError(
            exc.format, f"{exc.detail} (circuit {index})", exc.line, exc.column
        ) from None
    except PayloadError as exc:
        raise PayloadError(f"circuit {index}: {exc}") from None


def _error_answer(exc: Exception, limits: DecodeLimits) -> dict[str, Any]:
    if isinstance(exc, LimitExceeded):
        return {"error": "LimitExceeded", "args": [exc.limit, exc.value, exc.detail]}
    if isinstance(exc, CircuitParseError):
        return {
            "error": "CircuitParseError",
            "args": [exc.format, exc.detail, exc.line, exc.column],
        }
    if isinstance(exc, PayloadError):
        return {"error": "PayloadError", "args": [str(exc)]}
    if isinstance(exc, MemoryError):
        why = "decoding this input needs too much memory"
        return {
            "error": "LimitExceeded",
            "args": ["max_memory_bytes", limits.max_memory_bytes, why],
        }
    if isinstance(exc, RecursionError):
        why = "this input nests too deeply to decode"
        return {"error": "LimitExceeded", "args": ["max_depth", limits.max_depth, why]}
    # a parser's own failure on hostile input: its message may quote anything
    return {"error": "PayloadError", "args": [f"unreadable input ({type(exc).__name__})"]}


def _serve(read: Any, write: Any) -> None:
    # Every parser is imported before the memory limit is set: imports are the worker's
    # own footprint, not a request's, and the first request should not pay for them.
    import importlib

    for parser in (
        "qiskit.qpy",
        "qiskit.qasm2",
        "qiskit.qasm3",
        "qiskit_qasm3_import",
        "cqasm.v3x",
        "pyqir",
    ):
        try:
            importlib.import_module(parser)
        except ImportError:  # an optional parser: its requests fail as unreadable
            pass

    from qhpc.resources.circuits import QPY_MAGIC, load_circuits
    from qhpc.resources.codec import PayloadDecoder, dump_qpy, load_qpy, payload_circuits
    from qhpc.resources.limits import measure_circuits
    from qhpc.resources.qir import check_qir_metadata

    def frame() -> Any:
        head = read.read(_FRAME.size)
        if len(head) < _FRAME.size:
            raise EOFError
        return _decoder.decode(read.read(_FRAME.unpack(head)[0]))

    limits = DecodeLimits(**frame()["limits"])
    _limit_memory(limits.max_memory_bytes)
    while True:
        try:
            request = frame()
        except EOFError:
            return
        try:
            op = request.get("op")
            if op == "circuits":
                deadline = limits.deadline()
                circuits: list[QuantumCircuit] = []
                counts = []
                for index, source in enumerate(request["sources"]):
                    found = _load_one(load_circuits, source, limits, index)
                    if isinstance(source, bytes) and source.startswith(QPY_MAGIC):
                        check_qir_metadata(found, limits)  # QIR it carries must be its own
                    circuits.extend(found)
                    counts.append(len(found))
                measure_circuits(circuits, limits, deadline)  # the request as a whole
                blob = dump_qpy(circuits) if circuits else b""
                answer: dict[str, Any] = {"qpy": blob, "counts": counts}
            elif op == "payloads":
                decoder = PayloadDecoder(limits=limits)
                for index, blob in enumerate(request["blobs"]):
                    try:
                        payload = decoder.decode(blob)
                        check_qir_metadata(payload_circuits(payload), limits)
                    except PayloadError as exc:
                        raise PayloadError(f"payload {index}: {exc}") from None
                answer = {}
            elif op == "qpy":
                blob_circuits = load_qpy(request["blob"], allow_empty=True, limits=limits)
                check_qir_metadata(blob_circuits, limits)
                answer = {}
            else:
                answer = {"error": "PayloadError", "args": ["unknown decoder request"]}
        except Exception as exc:  # every failure becomes an answer: the loop goes on
            answer = _error_answer(exc, limits)
        data = _encoder.encode(answer)
        write.write(_FRAME.pack(len(data)) + data)
        write.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
