"""Bytes for payloads and results: what the store keeps and the wire carries.

MessagePack (msgspec) envelopes with a version field, so a mismatch fails at
decode with a clear message instead of producing garbage; circuits inside are
one QPY blob (Qiskit's own binary format, ~40 µs per small circuit each way).
Decoding treats its input as untrusted: every structural problem becomes a
:class:`PayloadError` naming what is wrong.
"""

from __future__ import annotations

import cmath
import io
from collections.abc import Callable
from typing import Any

import msgspec
from qiskit.circuit import QuantumCircuit
from qiskit.exceptions import QiskitError
from qiskit.quantum_info import SparsePauliOp

from qhpc.resources.errors import PayloadError
from qhpc.resources.limits import DEFAULT_LIMITS, DecodeLimits, measure_circuits
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
            "circuits": dump_qpy(list(payload.circuits)),
            "shots": payload.shots,
            "memory": payload.memory,
            "seed": payload.seed,
        }
    else:
        body = {
            "v": FORMAT_VERSION,
            "kind": "estimator",
            "circuit": dump_qpy([payload.circuit]),
            "observables": [
                [[label, float(c.real), float(c.imag)] for label, c in obs.to_list()]
                for obs in payload.observables
            ],
            "parameter_values": [list(row) for row in payload.parameter_values],
            "shots": payload.shots,
            "seed": payload.seed,
        }
    return _encoder.encode(body)


def decode_payload(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Payload:
    """A payload from untrusted bytes; its circuits are measured against ``limits``."""

    def circuits(blob: object) -> list[QuantumCircuit]:
        return load_qpy(blob, limits=limits)

    return _payload_from(_envelope(data, "payload"), circuits, _load_observables)


#: payloads up to this size are remembered whole by :class:`PayloadDecoder` (64 of them
#: per connection: at most 4 MiB)
MAX_REMEMBERED_PAYLOAD_BYTES = 64 * 1024


class PayloadDecoder:
    """:func:`decode_payload` for one stream of payloads (a session's), remembering what
    repeats: the circuits, by their exact QPY bytes, and the observables.

    A hybrid program sends the same circuit again and again — a parameterised
    ansatz with new parameter values (which travel apart from the circuit), or the
    same sampling circuit — and reading QPY costs tens of microseconds per call.
    A remembered entry is only served for byte-identical QPY data (observables: for
    equal terms), so it is exactly what decoding would build; the circuit objects
    are shared between the payloads, which is safe because nothing that runs a task
    modifies its circuits (resources copy before they change anything). Not
    thread-safe: one decoder per connection.
    """

    def __init__(
        self,
        max_entries: int = 64,
        limits: DecodeLimits = DEFAULT_LIMITS,
        screen: Callable[[bytes], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.limits = limits
        #: called with each QPY blob not seen before, ahead of decoding it in this
        #: process (the broker passes DecodePool.check_qpy: a worker decodes it first)
        self.screen = screen
        self._circuits: dict[bytes, list[QuantumCircuit]] = {}
        #: whole payloads by their exact bytes (small ones only: the cache stays small)
        self._payloads: dict[bytes, Payload] = {}
        self._observables: dict[object, tuple[SparsePauliOp, ...]] = {}
        self.hits = 0
        self.misses = 0

    def decode(self, data: bytes) -> Payload:
        # A loop that samples the same circuit again (SQD, repeated batches of shots)
        # sends byte-identical payloads: the payload it decoded to is served again, as
        # the circuits are (payloads are frozen, and nothing that runs one changes it).
        small = len(data) <= MAX_REMEMBERED_PAYLOAD_BYTES
        if small:
            found = self._payloads.get(data)
            if found is not None:
                self.hits += 1
                return found
        payload = _payload_from(_envelope(data, "payload"), self._circuits_of, self._observables_of)
        if small:
            _remember(self._payloads, bytes(data), payload, self.max_entries)
        return payload

    def _circuits_of(self, blob: object) -> list[QuantumCircuit]:
        if isinstance(blob, bytes):
            found = self._circuits.get(blob)
            if found is not None:
                self.hits += 1
                return list(found)
        if self.screen is not None and isinstance(blob, bytes):
            self.screen(blob)
        circuits = load_qpy(blob, limits=self.limits)
        assert isinstance(blob, bytes)  # load_qpy refused anything else
        self.misses += 1
        _remember(self._circuits, blob, circuits, self.max_entries)
        return list(circuits)

    def _observables_of(self, terms: object) -> tuple[SparsePauliOp, ...]:
        try:
            key: object = tuple(tuple(tuple(term) for term in obs) for obs in terms)  # type: ignore[attr-defined]
            found = self._observables.get(key)
        except TypeError:  # not a list of term lists, or unhashable parts: let it fail below
            return _load_observables(terms)
        if found is not None:
            return found
        observables = _load_observables(terms)
        _remember(self._observables, key, observables, self.max_entries)
        return observables


def _remember(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    if len(cache) >= limit:
        del cache[next(iter(cache))]  # the oldest entry
    cache[key] = value


def _load_observables(terms: object) -> tuple[SparsePauliOp, ...]:
    observables = []
    for obs in terms:  # type: ignore[attr-defined]
        pairs = [(label, complex(re, im)) for label, re, im in obs]
        if not all(cmath.isfinite(c) for _, c in pairs):
            raise PayloadError("an observable has a coefficient that is not a finite number")
        observables.append(SparsePauliOp.from_list(pairs))
    return tuple(observables)


def _payload_from(
    body: dict[str, Any],
    load_circuits: Callable[[object], list[QuantumCircuit]],
    load_observables: Callable[[object], tuple[SparsePauliOp, ...]],
) -> Payload:
    kind = body.get("kind")
    try:
        if kind == "sampler":
            return SamplerTask(
                circuits=tuple(load_circuits(body["circuits"])),
                shots=body["shots"],
                memory=bool(body.get("memory", False)),
                seed=body.get("seed"),
            )
        if kind == "estimator":
            circuits = load_circuits(body["circuit"])
            if len(circuits) != 1:
                raise PayloadError("an estimator payload carries exactly one circuit")
            return EstimatorTask(
                circuit=circuits[0],
                observables=load_observables(body["observables"]),
                parameter_values=tuple(tuple(row) for row in body["parameter_values"]),
                shots=body.get("shots"),
                seed=body.get("seed"),
            )
    except PayloadError:
        raise
    except (KeyError, TypeError, ValueError, QiskitError) as exc:
        raise PayloadError(f"malformed {kind} payload: {type(exc).__name__}: {exc}") from None
    raise PayloadError(f"unknown payload kind {kind!r}; expected 'sampler' or 'estimator'")


def payload_circuits(payload: Payload) -> tuple[QuantumCircuit, ...]:
    """The circuits a payload carries (a sampler task's, or an estimator task's one)."""
    return payload.circuits if isinstance(payload, SamplerTask) else (payload.circuit,)


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


def dump_qpy(circuits: list[QuantumCircuit]) -> bytes:
    """Circuits as one QPY blob (the form payloads and batches carry them in)."""
    from qiskit import qpy

    buffer = io.BytesIO()
    qpy.dump(circuits, buffer)
    return buffer.getvalue()


def load_qpy(
    data: object, *, allow_empty: bool = False, limits: DecodeLimits = DEFAULT_LIMITS
) -> list[QuantumCircuit]:
    """The circuits of a QPY blob from an untrusted source; :class:`PayloadError` names
    what is wrong. Only circuits are accepted, and (unless ``allow_empty``) at least one;
    they are measured against ``limits`` (:class:`LimitExceeded` past one)."""
    from qiskit import qpy

    if not isinstance(data, bytes):
        raise PayloadError("circuits must be a QPY byte string")
    deadline = limits.deadline()
    try:
        loaded = qpy.load(io.BytesIO(data))
    except Exception as exc:
        raise PayloadError(f"circuits are not readable QPY: {exc}") from None
    circuits = [c for c in loaded if isinstance(c, QuantumCircuit)]
    if len(circuits) != len(loaded) or not (circuits or allow_empty):
        wanted = "circuits only" if allow_empty else "one or more circuits"
        raise PayloadError(f"QPY data must hold {wanted}")
    measure_circuits(circuits, limits, deadline)
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
