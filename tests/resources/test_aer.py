from __future__ import annotations

import math

import pytest
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp, Statevector

from qhpc.resources import (
    AerResource,
    EstimatorResult,
    EstimatorTask,
    PayloadError,
    ResourceConfigError,
    ResourceState,
    SamplerResult,
    SamplerTask,
    TaskFailedError,
    TaskStatus,
    UnknownTaskError,
    device_target,
)


def test_bell_counts_and_seeded_reproducibility(aer: AerResource, bell: QuantumCircuit) -> None:
    result = aer.run(SamplerTask((bell,), shots=2000, seed=3))
    assert isinstance(result, SamplerResult)
    counts = result.circuits[0].counts
    assert set(counts) <= {"00", "11"}
    assert sum(counts.values()) == 2000
    assert abs(counts["00"] - 1000) < 150
    again = aer.run(SamplerTask((bell,), shots=2000, seed=3))
    assert isinstance(again, SamplerResult)
    assert again.circuits[0].counts == counts


def test_batch_runs_in_one_task_with_memory(aer: AerResource, bell: QuantumCircuit) -> None:
    x = QuantumCircuit(2, 2, name="x")
    x.x(1)
    x.measure([0, 1], [0, 1])
    result = aer.run(SamplerTask((bell, x), shots=50, memory=True, seed=1))
    assert isinstance(result, SamplerResult)
    assert result.circuits[1].counts == {"10": 50}
    memory = result.circuits[1].memory
    assert memory is not None and len(memory) == 50


def test_registers_are_concatenated_with_bit_zero_rightmost(aer: AerResource) -> None:
    from qiskit.circuit import ClassicalRegister, QuantumRegister

    q = QuantumRegister(2, "q")
    a = ClassicalRegister(1, "a")
    b = ClassicalRegister(1, "b")
    circuit = QuantumCircuit(q, a, b)
    circuit.x(1)
    circuit.measure(0, a[0])
    circuit.measure(1, b[0])
    result = aer.run(SamplerTask((circuit,), shots=10))
    assert isinstance(result, SamplerResult)
    assert result.circuits[0].counts == {"10": 10}


def test_exact_and_sampled_expectation_values(aer: AerResource) -> None:
    theta = Parameter("theta")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    hamiltonian = SparsePauliOp.from_list([("ZZ", 0.5), ("XX", 0.3), ("IZ", -0.2), ("II", 1.0)])
    angles = [[0.0], [0.7], [math.pi / 2]]
    exact = aer.run(EstimatorTask.create(circuit, [hamiltonian, "XI"], angles))
    assert isinstance(exact, EstimatorResult)
    assert exact.metadata["exact"] is True
    for row, (angle,) in zip(exact.values, angles, strict=True):
        state = Statevector(circuit.assign_parameters([angle]))
        assert row[0] == pytest.approx(state.expectation_value(hamiltonian).real, abs=1e-9)
        assert row[1] == pytest.approx(state.expectation_value(SparsePauliOp("XI")).real, abs=1e-9)
    sampled = aer.run(
        EstimatorTask.create(circuit, [hamiltonian, "XI"], angles, shots=20_000, seed=5)
    )
    assert isinstance(sampled, EstimatorResult)
    assert sampled.metadata["exact"] is False
    assert sampled.shots == 20_000
    for exact_row, row, errors in zip(
        exact.values, sampled.values, sampled.std_errors, strict=True
    ):
        for e, s, err in zip(exact_row, row, errors, strict=True):
            assert err < 0.02
            assert abs(e - s) <= 5 * err + 1e-9


def test_identity_only_observable_needs_no_circuit(aer: AerResource) -> None:
    circuit = QuantumCircuit(1)
    circuit.h(0)
    result = aer.run(EstimatorTask.create(circuit, {"I": 2.5}, shots=100))
    assert isinstance(result, EstimatorResult)
    assert result.values == ((2.5,),)


def test_wide_low_entanglement_circuit_uses_mps(aer: AerResource) -> None:
    width = 40
    circuit = QuantumCircuit(width, width)
    circuit.h(0)
    for q in range(width - 1):
        circuit.cx(q, q + 1)
    circuit.measure(range(width), range(width))
    result = aer.run(SamplerTask((circuit,), shots=100, seed=2))
    assert isinstance(result, SamplerResult)
    assert set(result.circuits[0].counts) <= {"0" * width, "1" * width}


def test_statevector_method_refuses_too_wide_circuits() -> None:
    resource = AerResource("sv", method="statevector")
    circuit = QuantumCircuit(29, 1)
    circuit.measure(0, 0)
    with pytest.raises(PayloadError, match="needs 29 qubits"):
        resource.task_start(SamplerTask((circuit,), shots=1))
    with pytest.raises(ResourceConfigError, match="method must be one of"):
        AerResource("bad", method="tensor")
    resource.close()


def test_device_target_and_noise() -> None:
    device = device_target("line-5")
    ideal = AerResource("ideal-line", device=device, seed=9)
    noisy = AerResource("noisy-line", device=device, noise=True, seed=9)
    circuit = QuantumCircuit(5, 5)
    circuit.h(0)
    for q in range(4):
        circuit.cx(q, q + 1)
    circuit.measure(range(5), range(5))
    ideal_counts = ideal.run(SamplerTask((circuit,), shots=4000)).circuits[0].counts  # type: ignore[union-attr]
    noisy_counts = noisy.run(SamplerTask((circuit,), shots=4000)).circuits[0].counts  # type: ignore[union-attr]
    assert set(ideal_counts) == {"00000", "11111"}
    wrong = sum(v for k, v in noisy_counts.items() if k not in ("00000", "11111"))
    assert 0.02 < wrong / 4000 < 0.4
    assert ideal.target().coupling_map is not None
    ideal.close()
    noisy.close()


def test_task_lifecycle_and_unknown_ids(aer: AerResource, bell: QuantumCircuit) -> None:
    task_id = aer.task_start(SamplerTask((bell,), shots=10))
    assert aer.task_wait(task_id, timeout=30) is TaskStatus.COMPLETED
    assert "completed" in aer.task_logs(task_id)
    with pytest.raises(UnknownTaskError):
        aer.task_status("nope")
    status = aer.status()
    assert status.state is ResourceState.IDLE
    assert status.pending == 0
    token = aer.acquire()
    aer.release(token)
    from qhpc.resources import AcquisitionError

    with pytest.raises(AcquisitionError):
        aer.release(token)


def test_stopping_queued_and_running_tasks(bell: QuantumCircuit) -> None:
    resource = AerResource("stop", seed=1)
    # Many chunks so the running task checks for a stop between them.
    many = tuple(bell.copy(name=f"c{i}") for i in range(64 * 40))
    running = resource.task_start(SamplerTask(many, shots=200))
    queued = resource.task_start(SamplerTask((bell,), shots=10))
    resource.task_stop(queued)
    assert resource.task_status(queued) is TaskStatus.CANCELLED
    resource.task_stop(running)
    final = resource.task_wait(running, timeout=60)
    assert final in (TaskStatus.CANCELLED, TaskStatus.COMPLETED)
    if final is TaskStatus.CANCELLED:
        with pytest.raises(TaskFailedError, match="cancelled"):
            resource.task_result(running)
    # The resource keeps serving after stops.
    assert resource.run(SamplerTask((bell,), shots=5)).kind == "sampler"
    resource.close()
