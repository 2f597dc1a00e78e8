"""Batches and batch results as bytes, for stacks that run on a broker.

MessagePack envelopes with a version field (as :mod:`qhpc.resources.codec`),
circuits as one QPY blob. A batch's distinct circuit objects are written once
and jobs refer to them by index, so jobs that shared a circuit on the client
share one on the broker too (the payload plan groups estimator jobs by circuit
object, and the plugins cache per circuit object). Decoding treats its input as
untrusted: every structural problem is a :class:`~qhpc.program.JobError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from qiskit.circuit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qhpc.program.errors import JobError
from qhpc.program.job import Batch, Job
from qhpc.program.result import BatchResult, Result
from qhpc.resources import PayloadError, dump_qpy, load_qpy

FORMAT_VERSION = 1
#: largest encoded batch or result accepted (the payload limit of the codec)
MAX_BYTES = 16 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode_batch(batch: Batch) -> bytes:
    circuits: list[QuantumCircuit] = []
    index_of: dict[int, int] = {}
    jobs = []
    for job in batch:
        slot = index_of.setdefault(id(job.circuit), len(circuits))
        if slot == len(circuits):
            circuits.append(job.circuit)
        jobs.append(
            {
                "circuit": slot,
                "observable": None
                if job.observable is None
                else [[label, float(c.real)] for label, c in job.observable.to_list()],
                "shots": job.shots,
                "parameters": None if job.parameters is None else list(job.parameters),
                "name": job.name,
                "meta": plain(job.meta),
            }
        )
    body = {
        "v": FORMAT_VERSION,
        "kind": "batch",
        "circuits": dump_qpy(circuits) if circuits else b"",
        "jobs": jobs,
        "meta": plain(batch.meta),
    }
    return _encoder.encode(body)


def decode_batch(data: bytes, screen: Callable[[bytes], None] | None = None) -> Batch:
    """A batch from untrusted bytes; ``screen`` (if given) sees its QPY blob before it is
    decoded here (the broker passes a decoding worker's check)."""
    body = _envelope(data, "batch")
    try:
        blob = body["circuits"]
        if screen is not None and blob and isinstance(blob, bytes):
            screen(blob)
        circuits = _load_qpy(blob) if blob else []
        jobs = []
        for index, item in enumerate(body["jobs"]):
            slot = item["circuit"]
            if not isinstance(slot, int) or not 0 <= slot < len(circuits):
                raise JobError(f"batch job {index} refers to circuit {slot!r} it does not carry")
            terms = item["observable"]
            observable = (
                None
                if terms is None
                else SparsePauliOp.from_list([(str(label), float(c)) for label, c in terms])
            )
            jobs.append(
                Job(
                    circuits[slot],
                    observable,
                    item["shots"],
                    item["parameters"],
                    item["name"],
                    item["meta"],
                )
            )
        return Batch(jobs, body["meta"])
    except JobError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise JobError(f"malformed batch: {type(exc).__name__}: {exc}") from None


def encode_batch_result(result: BatchResult) -> bytes:
    body = {
        "v": FORMAT_VERSION,
        "kind": "batch_result",
        "results": [
            {
                "value": r.value,
                "error": r.error,
                "counts": r.counts,
                "parameters": None if r.parameters is None else list(r.parameters),
                "meta": plain(r.meta),
            }
            for r in result
        ],
        "meta": plain(result.meta),
    }
    return _encoder.encode(body)


def decode_batch_result(data: bytes) -> BatchResult:
    body = _envelope(data, "batch_result")
    try:
        results = tuple(
            Result(
                value=None if r["value"] is None else float(r["value"]),
                error=None if r["error"] is None else float(r["error"]),
                counts=None
                if r["counts"] is None
                else {str(k): int(v) for k, v in r["counts"].items()},
                parameters=None if r["parameters"] is None else tuple(map(float, r["parameters"])),
                meta=dict(r["meta"]),
            )
            for r in body["results"]
        )
        return BatchResult(results, dict(body["meta"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise JobError(f"malformed batch result: {type(exc).__name__}: {exc}") from None


def plain(value: Any) -> Any:
    """``value`` as MessagePack-able data: tuples become lists, numpy values numbers,
    anything else its ``str``."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return plain(value.tolist())
    return str(value)


def _envelope(data: bytes, kind: str) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise JobError(f"a {kind} must be bytes, not {type(data).__name__}")
    if len(data) > MAX_BYTES:
        raise JobError(f"{kind} of {len(data)} bytes exceeds the limit of {MAX_BYTES} bytes")
    try:
        body = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise JobError(f"{kind} is not valid MessagePack: {exc}") from None
    if not isinstance(body, dict) or body.get("kind") != kind:
        raise JobError(f"expected an encoded {kind}")
    if body.get("v") != FORMAT_VERSION:
        raise JobError(
            f"{kind} format version {body.get('v')!r} is not supported (this qhpc speaks "
            f"version {FORMAT_VERSION})"
        )
    return body


def _load_qpy(data: object) -> list[QuantumCircuit]:
    try:
        return load_qpy(data, allow_empty=True)
    except PayloadError as exc:  # the codec's messages start "circuits …" / "QPY data …"
        raise JobError(f"a batch's {exc}") from None
