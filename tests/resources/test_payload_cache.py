"""The per-session decoded-payload cache never serves a payload other than the one sent."""

from __future__ import annotations

import io

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import qpy
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qhpc.resources import EstimatorTask, Payload, PayloadError, SamplerTask
from qhpc.resources.codec import PayloadDecoder, decode_payload, encode_payload

GATES = ("h", "x", "sx", "rz", "ry", "cx")


@st.composite
def circuits(draw: st.DrawFn, *, parameterised: bool = False) -> QuantumCircuit:
    width = draw(st.integers(1, 3))
    circuit = QuantumCircuit(width, width, name=draw(st.sampled_from(["a", "b", "c"])))
    params = [Parameter(f"t{i}") for i in range(draw(st.integers(1, 2)))] if parameterised else []
    for _ in range(draw(st.integers(0, 6))):
        gate = draw(st.sampled_from(GATES))
        q = draw(st.integers(0, width - 1))
        if gate == "cx":
            if width > 1:
                circuit.cx(q, (q + 1) % width)
        elif gate in ("rz", "ry"):
            angle = (
                draw(st.sampled_from(params))
                if params and draw(st.booleans())
                else draw(st.floats(-3.2, 3.2, allow_nan=False))
            )
            getattr(circuit, gate)(angle, q)
        else:
            getattr(circuit, gate)(q)
    for p in params:  # every parameter is used
        circuit.rz(p, 0)
    if not parameterised:
        circuit.measure(range(width), range(width))
    return circuit


@st.composite
def payloads(draw: st.DrawFn) -> Payload:
    if draw(st.booleans()):
        batch = tuple(draw(st.lists(circuits(), min_size=1, max_size=2)))
        return SamplerTask(
            batch, shots=draw(st.integers(1, 5000)), seed=draw(st.none() | st.integers(0, 9))
        )
    circuit = draw(circuits(parameterised=True))
    width = circuit.num_qubits
    labels = st.text(alphabet="IXYZ", min_size=width, max_size=width)
    coefficient = st.sampled_from([0.5, -1.25, 1.0, 2.0, -0.0, 0.0, 1e-9])
    observables = draw(
        st.lists(st.lists(st.tuples(labels, coefficient), min_size=1, max_size=3), min_size=1,
                 max_size=2)
    )  # fmt: skip
    rows = draw(
        st.lists(
            st.lists(st.floats(-3.2, 3.2, allow_nan=False), min_size=circuit.num_parameters,
                     max_size=circuit.num_parameters),
            min_size=1, max_size=2,
        )
    )  # fmt: skip
    return EstimatorTask.create(
        circuit, observables, rows, shots=draw(st.none() | st.integers(1, 99))
    )


def qpy_bytes(circuits: tuple[QuantumCircuit, ...] | list[QuantumCircuit]) -> bytes:
    buffer = io.BytesIO()
    qpy.dump(list(circuits), buffer)
    return buffer.getvalue()


def same_payload(got: Payload, want: Payload) -> None:
    assert type(got) is type(want)
    if isinstance(want, SamplerTask):
        assert isinstance(got, SamplerTask)
        assert (got.shots, got.memory, got.seed) == (want.shots, want.memory, want.seed)
        assert got.circuits == want.circuits
        assert qpy_bytes(got.circuits) == qpy_bytes(want.circuits)
    else:
        assert isinstance(got, EstimatorTask) and isinstance(want, EstimatorTask)
        assert got.circuit == want.circuit
        assert qpy_bytes([got.circuit]) == qpy_bytes([want.circuit])
        assert got.observables == want.observables
        for a, b in zip(got.observables, want.observables, strict=True):
            assert list(a.paulis.to_labels()) == list(b.paulis.to_labels())
            assert list(a.coeffs) == list(b.coeffs)
        assert got.parameter_values == want.parameter_values
        assert (got.shots, got.seed) == (want.shots, want.seed)


#: shared by every example, small so that eviction happens too
SHARED = PayloadDecoder(max_entries=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=1, max_size=6), st.data())
def test_cached_decode_is_exactly_the_uncached_decode(
    sent: list[Payload], data: st.DataObject
) -> None:
    # A stream that repeats payloads in any order, through one long-lived decoder.
    order = data.draw(st.lists(st.integers(0, len(sent) - 1), min_size=1, max_size=12))
    for index in order:
        encoded = encode_payload(sent[index])
        same_payload(SHARED.decode(encoded), decode_payload(encoded))


def test_repeated_circuit_with_new_parameters_is_read_once() -> None:
    theta = Parameter("theta")
    ansatz = QuantumCircuit(2)
    ansatz.ry(theta, 0)
    ansatz.cx(0, 1)
    decoder = PayloadDecoder()
    for step in range(5):
        task = EstimatorTask.create(ansatz, ["ZZ", {"XX": 0.5}], [0.1 * step])
        got = decoder.decode(encode_payload(task))
        assert isinstance(got, EstimatorTask)
        assert got.parameter_values == ((0.1 * step,),)
    assert (decoder.misses, decoder.hits) == (1, 4)


def test_a_different_circuit_is_never_served_from_the_cache() -> None:
    decoder = PayloadDecoder()
    first = QuantumCircuit(1, 1)
    first.x(0)
    first.measure(0, 0)
    second = QuantumCircuit(1, 1)  # same shape, differs in one gate
    second.h(0)
    second.measure(0, 0)
    a = decoder.decode(encode_payload(SamplerTask((first,), shots=10)))
    b = decoder.decode(encode_payload(SamplerTask((second,), shots=10)))
    assert isinstance(a, SamplerTask) and isinstance(b, SamplerTask)
    assert a.circuits[0] == first and b.circuits[0] == second
    assert decoder.misses == 2


def test_observables_equal_in_value_share_an_entry_and_others_do_not() -> None:
    circuit = QuantumCircuit(1)
    decoder = PayloadDecoder()
    one = decoder.decode(encode_payload(EstimatorTask.create(circuit, {"Z": 1.0})))
    two = decoder.decode(encode_payload(EstimatorTask.create(circuit, {"Z": 1.0, "X": 0.0})))
    assert isinstance(one, EstimatorTask) and isinstance(two, EstimatorTask)
    assert one.observables == (SparsePauliOp.from_list([("Z", 1.0)]),)
    assert len(two.observables[0]) == 2


def test_malformed_payloads_fail_as_without_the_cache() -> None:
    decoder = PayloadDecoder()
    circuit = QuantumCircuit(1)
    good = encode_payload(EstimatorTask.create(circuit, "Z"))
    body = msgspec.msgpack.decode(good)
    for bad_observables in ([["Z", 1.0]], [[{"x": 1}]], [[["ZZ", 1.0, 0.0]]], 5):
        body["observables"] = bad_observables
        data = msgspec.msgpack.encode(body)
        with pytest.raises(PayloadError) as uncached:
            decode_payload(data)
        with pytest.raises(PayloadError) as cached:
            decoder.decode(data)
        assert str(cached.value) == str(uncached.value)
    body["observables"] = [[["Z", 1.0, 0.0]]]
    body["circuit"] = b"not qpy"
    with pytest.raises(PayloadError, match="not readable QPY"):
        decoder.decode(msgspec.msgpack.encode(body))


def test_a_byte_identical_payload_is_decoded_once_and_a_large_one_is_not_kept() -> None:
    from qhpc.resources.codec import MAX_REMEMBERED_PAYLOAD_BYTES

    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    decoder = PayloadDecoder()
    data = encode_payload(SamplerTask((circuit,), shots=10))
    first = decoder.decode(data)
    assert decoder.decode(bytes(data)) is first  # served whole, not rebuilt
    assert (decoder.misses, decoder.hits) == (1, 1)
    wide = QuantumCircuit(1, 1)
    for _ in range(MAX_REMEMBERED_PAYLOAD_BYTES // 8):
        wide.x(0)
    wide.measure(0, 0)
    large = encode_payload(SamplerTask((wide,), shots=10))
    assert len(large) > MAX_REMEMBERED_PAYLOAD_BYTES
    assert decoder.decode(large) is not decoder.decode(large)  # circuits cached, payload not
    assert len(decoder._payloads) == 1
