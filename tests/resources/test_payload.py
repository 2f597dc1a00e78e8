from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qhpc.resources import (
    DeviceTarget,
    EstimatorTask,
    PayloadError,
    SamplerTask,
    validate_payload,
)
from qhpc.resources.payload import normalise_counts

TARGET = DeviceTarget(name="t5", num_qubits=5, max_shots=10_000, max_circuits=3)


def measured(width: int) -> QuantumCircuit:
    circuit = QuantumCircuit(width)
    circuit.h(0)
    circuit.measure_all()
    return circuit


@given(shots=st.integers(min_value=-(10**9), max_value=10**9))
def test_shots_are_validated_against_the_target(shots: int) -> None:
    if shots <= 0:
        with pytest.raises(PayloadError, match="shots must be positive"):
            SamplerTask((measured(2),), shots=shots)
        return
    task = SamplerTask((measured(2),), shots=shots)
    if shots > TARGET.max_shots:
        with pytest.raises(PayloadError, match="exceeds the maximum of 10000"):
            validate_payload(task, TARGET)
    else:
        validate_payload(task, TARGET)


@given(width=st.integers(min_value=1, max_value=9))
def test_circuit_wider_than_target_is_rejected(width: int) -> None:
    task = SamplerTask((measured(width),), shots=10)
    if width > TARGET.num_qubits:
        with pytest.raises(PayloadError, match=f"needs {width} qubits but 't5' has 5"):
            validate_payload(task, TARGET)
    else:
        validate_payload(task, TARGET)


def test_too_many_circuits_and_bad_inputs() -> None:
    with pytest.raises(PayloadError, match="4 circuits exceed the maximum of 3"):
        validate_payload(SamplerTask(tuple(measured(1) for _ in range(4)), shots=1), TARGET)
    with pytest.raises(PayloadError, match="at least one circuit"):
        SamplerTask((), shots=1)
    with pytest.raises(PayloadError, match="measures nothing"):
        SamplerTask((QuantumCircuit(2),), shots=1)
    with pytest.raises(PayloadError, match="shots must be an integer"):
        SamplerTask((measured(1),), shots=1.5)  # type: ignore[arg-type]
    theta = Parameter("theta")
    circuit = QuantumCircuit(1, 1)
    circuit.rx(theta, 0)
    circuit.measure(0, 0)
    with pytest.raises(PayloadError, match=r"unbound parameters \['theta'\]"):
        SamplerTask((circuit,), shots=1)


def test_estimator_coerces_friendly_inputs() -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    task = EstimatorTask.create(circuit, ["ZI", "IX"], [0.1])
    assert task.parameter_values == ((0.1,),)
    assert [o.paulis.to_labels() for o in task.observables] == [["ZI"], ["IX"]]
    one = EstimatorTask.create(circuit, [("ZZ", 0.5), ("XX", 0.25)], np.array([[0.1], [0.2]]))
    assert len(one.observables) == 1
    assert one.parameter_values == ((0.1,), (0.2,))
    as_dict = EstimatorTask.create(circuit, {"ZZ": 1.0}, np.float32(0.3).reshape(1))
    assert as_dict.observables[0] == SparsePauliOp("ZZ")


def test_estimator_rejects_mismatches() -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    with pytest.raises(PayloadError, match="acts on 3 qubits but the circuit has 2"):
        EstimatorTask.create(circuit, "ZZZ", [0.1])
    with pytest.raises(PayloadError, match=r"has 2 values but the circuit has 1 parameters"):
        EstimatorTask.create(circuit, "ZZ", [0.1, 0.2])
    with pytest.raises(PayloadError, match="not a Pauli sum"):
        EstimatorTask.create(circuit, "QQ", [0.1])
    with pytest.raises(PayloadError, match="non-finite"):
        EstimatorTask.create(circuit, "ZZ", [float("nan")])
    with pytest.raises(PayloadError, match="at least one observable"):
        EstimatorTask.create(circuit, [], [0.1])


@given(
    st.dictionaries(
        st.text(alphabet="01 ", min_size=1, max_size=6).filter(lambda s: "1" in s or "0" in s),
        st.integers(min_value=1, max_value=100),
        max_size=8,
    )
)
def test_normalised_counts_keep_the_total(raw: dict[str, int]) -> None:
    width = 6
    counts = normalise_counts(raw, width)
    assert sum(counts.values()) == sum(raw.values())
    assert all(len(k) == width and set(k) <= {"0", "1"} for k in counts)


def test_hex_counts_are_decoded() -> None:
    assert normalise_counts({"0x3": 5, "0x0": 1}, 3) == {"011": 5, "000": 1}
