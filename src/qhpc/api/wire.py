"""Turn request bodies into task payloads: circuit text, base64 QPY, encoded payloads.

Decoding only; whether a payload fits a resource is the broker's call
(``Broker.submit`` validates against the target).
"""

from __future__ import annotations

import base64
import binascii

from qiskit.circuit import QuantumCircuit

from qhpc.api.models import CircuitsBody
from qhpc.resources import (
    CircuitParseError,
    Payload,
    PayloadError,
    SamplerTask,
    decode_payload,
    load_circuits,
)

#: base64 of QPY's magic bytes b"QISKIT": 6 bytes make exactly 8 characters, so the
#: prefix of any base64 QPY blob is fixed and cannot be confused with circuit source.
QPY_BASE64_PREFIX = "UUlTS0lU"


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{what} is not valid base64") from None


def circuits_of(sources: list[str]) -> list[QuantumCircuit]:
    circuits: list[QuantumCircuit] = []
    for index, source in enumerate(sources):
        try:
            if source.lstrip().startswith(QPY_BASE64_PREFIX):
                circuits.extend(load_circuits(_b64(source, "QPY data"), fmt="qpy"))
            else:
                circuits.extend(load_circuits(source))
        except CircuitParseError as exc:
            # Keep line and column; add which circuit of the list it was.
            raise CircuitParseError(
                exc.format, f"{exc.detail} (circuit {index})", exc.line, exc.column
            ) from None
        except PayloadError as exc:
            raise PayloadError(f"circuit {index}: {exc}") from None
    return circuits


def payloads_of(body: CircuitsBody, split: bool = False) -> list[Payload]:
    """The payloads a body describes: decoded ``payloads``, or sampler task(s) of ``circuits``."""
    if body.payloads is not None:
        decoded: list[Payload] = []
        for index, text in enumerate(body.payloads):
            try:
                decoded.append(decode_payload(_b64(text, "payload")))
            except PayloadError as exc:
                raise PayloadError(f"payload {index}: {exc}") from None
        return decoded
    assert body.circuits is not None and body.shots is not None  # the model guarantees both
    circuits = circuits_of(body.circuits)
    if split:
        return [SamplerTask((c,), shots=body.shots, seed=body.seed) for c in circuits]
    return [SamplerTask(tuple(circuits), shots=body.shots, seed=body.seed)]
