"""Bytes for payloads and results: what the store keeps and the wire carries.

MessagePack (msgspec) envelopes with a version field, so a mismatch fails at
decode with a clear message instead of producing garbage; circuits inside are
one QPY blob (Qiskit's own binary format, ~40 µs per small circuit each way).
Decoding treats its input as untrusted: every structural problem becomes a
:class:`PayloadError` naming what is wrong.
"""

from __future__ import annotations

import io
from typing import Any

import msgspec
from qiskit.circuit import QuantumCircuit
from qiskit.exceptions import QiskitError
from qiskit.quantum_info import SparsePauliOp

from qhpc.resources.errors import PayloadError
from qhpc.resources.payload import (
    EstimatorTask,
    Payload,
    SamplerTask,
    TaskResult,
    result_from_dict,
)

FORMAT_VERSION = 1
#: largest encoded payload accepted (documented limit; the API enforces it too)
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def encode_payload(payload: Payload) -> bytes:
    if isinstance(payload, SamplerTask):
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "kind": "sampler",
            "circuits": _dump_qpy(list(payload.circuits)),
            "shots": payload.shots,
            "memory": payload.memory,
            "seed": payload.seed,
        }
    else:
        body = {
            "v": FORMAT_VERSION,
            "kind": "estimator",
            "circuit": _dump_qpy([payload.circuit]),
            "observables": [
                [[label, float(c.real), float(c.imag)] for label, c in obs.to_list()]
                for obs in payload.observables
            ],
            "parameter_values": [list(row) for row in payload.parameter_values],
            "shots": payload.shots,
            "seed": payload.seed,
        }
    return _encoder.encode(body)


def decode_payload(data: bytes) -> Payload:
    body = _envelope(data, "payload")
    kind = body.get("kind")
    try:
        if kind == "sampler":
            return SamplerTask(
                circuits=tuple(_load_qpy(body["circuits"])),
                shots=body["shots"],
                memory=bool(body.get("memory", False)),
                seed=body.get("seed"),
            )
        if kind == "estimator":
            circuits = _load_qpy(body["circuit"])
            if len(circuits) != 1:
                raise PayloadError("an estimator payload carries exactly one circuit")
            observables = tuple(
                SparsePauliOp.from_list([(label, complex(re, im)) for label, re, im in terms])
                for terms in body["observables"]
            )
            return EstimatorTask(
                circuit=circuits[0],
                observables=observables,
                parameter_values=tuple(tuple(row) for row in body["parameter_values"]),
                shots=body.get("shots"),
                seed=body.get("seed"),
            )
    except PayloadError:
        raise
    except (KeyError, TypeError, ValueError, QiskitError) as exc:
        raise PayloadError(f"malformed {kind} payload: {type(exc).__name__}: {exc}") from None
    raise PayloadError(f"unknown payload kind {kind!r}; expected 'sampler' or 'estimator'")


def encode_result(result: TaskResult) -> bytes:
    body = result.to_dict()
    body["metadata"] = _plain(result.metadata)
    return _encoder.encode({"v": FORMAT_VERSION, **body})


def decode_result(data: bytes) -> TaskResult:
    return result_from_dict(_envelope(data, "result"))


def _envelope(data: bytes, what: str) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise PayloadError(f"a {what} must be bytes, not {type(data).__name__}")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"{what} of {len(data)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES} bytes"
        )
    try:
        body = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{what} is not valid MessagePack: {exc}") from None
    if not isinstance(body, dict):
        raise PayloadError(f"{what} must be a map, not {type(body).__name__}")
    version = body.get("v")
    if version != FORMAT_VERSION:
        raise PayloadError(
            f"{what} format version {version!r} is not supported (this qhpc speaks "
            f"version {FORMAT_VERSION})"
        )
    return body


def _dump_qpy(circuits: list[QuantumCircuit]) -> bytes:
    from qiskit import qpy

    buffer = io.BytesIO()
    qpy.dump(circuits, buffer)
    return buffer.getvalue()


def _load_qpy(data: object) -> list[QuantumCircuit]:
    from qiskit import qpy

    if not isinstance(data, bytes):
        raise PayloadError("circuits must be a QPY byte string")
    try:
        loaded = qpy.load(io.BytesIO(data))
    except Exception as exc:
        raise PayloadError(f"circuits are not readable QPY: {exc}") from None
    circuits = [c for c in loaded if isinstance(c, QuantumCircuit)]
    if len(circuits) != len(loaded) or not circuits:
        raise PayloadError("QPY data must hold one or more circuits")
    return circuits


def _plain(value: Any) -> Any:
    """Metadata as MessagePack-able plain data (unknown objects become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)
