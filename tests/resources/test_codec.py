from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import Operator

from qhpc.resources import (
    AerResource,
    EstimatorResult,
    EstimatorTask,
    PayloadError,
    SamplerResult,
    SamplerTask,
)
from qhpc.resources.codec import decode_payload, decode_result, encode_payload, encode_result


def test_sampler_payload_round_trip(bell: QuantumCircuit) -> None:
    payload = SamplerTask((bell, bell.copy(name="two")), shots=123, memory=True, seed=7)
    back = decode_payload(encode_payload(payload))
    assert isinstance(back, SamplerTask)
    assert (back.shots, back.memory, back.seed) == (123, True, 7)
    assert [c.name for c in back.circuits] == ["bell", "two"]
    assert Operator(back.circuits[0].remove_final_measurements(inplace=False)).equiv(
        Operator(bell.remove_final_measurements(inplace=False))
    )


def test_estimator_payload_round_trip() -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    payload = EstimatorTask.create(circuit, [{"ZZ": 0.5, "XI": -1.25}, "YY"], [[0.1], [0.2]], 100)
    back = decode_payload(encode_payload(payload))
    assert isinstance(back, EstimatorTask)
    assert back.parameter_values == ((0.1,), (0.2,))
    assert back.observables == payload.observables
    assert back.shots == 100
    assert [p.name for p in back.circuit.parameters] == ["theta"]


def test_results_round_trip(aer: AerResource, bell: QuantumCircuit) -> None:
    sampled = aer.run(SamplerTask((bell,), shots=50, memory=True))
    back = decode_result(encode_result(sampled))
    assert isinstance(back, SamplerResult)
    assert back.circuits == sampled.circuits
    estimated = aer.run(EstimatorTask.create(bell.remove_final_measurements(inplace=False), "ZZ"))
    back_e = decode_result(encode_result(estimated))
    assert isinstance(back_e, EstimatorResult)
    assert back_e.values == estimated.values


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "not valid MessagePack"),
        (msgspec.msgpack.encode([1, 2]), "must be a map"),
        (msgspec.msgpack.encode({"v": 99, "kind": "sampler"}), "version 99 is not supported"),
        (msgspec.msgpack.encode({"v": 1, "kind": "teleport"}), "unknown payload kind"),
        (msgspec.msgpack.encode({"v": 1, "kind": "sampler", "shots": 1}), "malformed sampler"),
        (
            msgspec.msgpack.encode({"v": 1, "kind": "sampler", "circuits": b"junk", "shots": 1}),
            "not readable QPY",
        ),
        (
            msgspec.msgpack.encode({"v": 1, "kind": "sampler", "circuits": "text", "shots": 1}),
            "QPY byte string",
        ),
    ],
)
def test_malformed_payloads_raise_payload_error(data: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_payload(data)


def test_shots_are_revalidated_on_decode(bell: QuantumCircuit) -> None:
    body = msgspec.msgpack.decode(encode_payload(SamplerTask((bell,), shots=5)))
    body["shots"] = -3
    with pytest.raises(PayloadError, match="shots must be positive"):
        decode_payload(msgspec.msgpack.encode(body))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_payload_errors(data: bytes) -> None:
    for decode in (decode_payload, decode_result):
        try:
            decode(data)
        except PayloadError:
            pass
