"""Turn request bodies into task payloads: circuit text, base64 QPY or QIR bitcode,
encoded payloads.

Decoding only; whether a payload fits a resource is the broker's call
(``Broker.submit`` validates against the target).
"""

from __future__ import annotations

import base64
import binascii

from qiskit.circuit import QuantumCircuit

from qhpc.api.models import CircuitsBody
from qhpc.resources import (
    DecodePool,
    Payload,
    PayloadError,
    SamplerTask,
    decode_payload,
)

#: base64 of QPY's magic bytes b"QISKIT": 6 bytes make exactly 8 characters, so the
#: prefix of any base64 QPY blob is fixed and cannot be confused with circuit source.
QPY_BASE64_PREFIX = "UUlTS0lU"
#: base64 of LLVM bitcode's magic b"BC\xc0\xde" and of its wrapper's b"\xde\xc0\x17\x0b":
#: their first 5 characters are fixed (30 bits of the 32), and no OpenQASM, cQASM or
#: LLVM IR text starts with them, so QIR bitcode travels as base64 like QPY
BITCODE_BASE64_PREFIXES = ("QkPA3", "3sAXC")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{what} is not valid base64") from None


def circuits_of(sources: list[str], decoder: DecodePool) -> list[QuantumCircuit]:
    """The circuits of a request's sources, decoded by ``decoder``'s worker processes
    (one budget for the whole request)."""
    raw: list[str | bytes] = []
    for index, source in enumerate(sources):
        start = source.lstrip()
        binary = "QPY data" if start.startswith(QPY_BASE64_PREFIX) else None
        if start.startswith(BITCODE_BASE64_PREFIXES):
            binary = "QIR bitcode"
        if binary is not None:
            try:
                raw.append(_b64(source, binary))
            except PayloadError as exc:
                raise PayloadError(f"circuit {index}: {exc}") from None
        else:
            raw.append(source)
    return [c for found in decoder.circuits(raw) for c in found]


def payloads_of(body: CircuitsBody, decoder: DecodePool, split: bool = False) -> list[Payload]:
    """The payloads a body describes: decoded ``payloads``, or sampler task(s) of ``circuits``.

    Untrusted bytes are decoded by ``decoder``'s workers first; only input they found
    within the budget is decoded in this process."""
    if body.payloads is not None:
        blobs = []
        for index, text in enumerate(body.payloads):
            try:
                blobs.append(_b64(text, "payload"))
            except PayloadError as exc:
                raise PayloadError(f"payload {index}: {exc}") from None
        decoder.check_payloads(blobs)
        decoded: list[Payload] = []
        for index, blob in enumerate(blobs):
            try:
                decoded.append(decode_payload(blob, decoder.limits))
            except PayloadError as exc:
                raise PayloadError(f"payload {index}: {exc}") from None
        return decoded
    assert body.circuits is not None and body.shots is not None  # the model guarantees both
    circuits = circuits_of(body.circuits, decoder)
    if split:
        return [SamplerTask((c,), shots=body.shots, seed=body.seed) for c in circuits]
    return [SamplerTask(tuple(circuits), shots=body.shots, seed=body.seed)]
