"""Caches on the hot path of a variational loop never serve a different computation.

Work derived from a circuit (Aer's estimator circuit with its save instructions)
is cached by content, so a circuit changed in place, another circuit, another
observable or differently ordered registers get their own entry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit.circuit import Parameter, QuantumCircuit, QuantumRegister
from qiskit.quantum_info import SparsePauliOp, Statevector

from qhpc.program import Job, LocalQPU, ProgramError
from qhpc.resources import AerResource, EstimatorResult, EstimatorTask
from qhpc.resources.local import circuit_key, observable_key


@pytest.fixture(scope="module")
def aer() -> AerResource:
    resource = AerResource("aer-cache", seed=3)
    yield resource  # type: ignore[misc]
    resource.close()


def exact(circuit: QuantumCircuit, observable: SparsePauliOp, values: list[float]) -> float:
    bound = circuit.assign_parameters(values) if circuit.num_parameters else circuit
    return float(np.real(Statevector(bound).expectation_value(observable)))


def estimate(
    aer: AerResource, circuit: QuantumCircuit, obs: SparsePauliOp, values: list[float]
) -> float:
    result = aer.run(EstimatorTask.create(circuit, obs, values or None))
    assert isinstance(result, EstimatorResult)
    return result.values[0][0]


def agrees(aer: AerResource, circuit: QuantumCircuit, obs: SparsePauliOp, value: float) -> bool:
    cached = estimate(aer, circuit, obs, [value])
    return math.isclose(cached, exact(circuit, obs, [value]), abs_tol=1e-9)


# -- the keys --------------------------------------------------------------------------------


def test_circuit_key_follows_content_not_object() -> None:
    theta = Parameter("θ")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    assert circuit_key(circuit) == circuit_key(circuit.copy())
    before = circuit_key(circuit)
    circuit.x(1)  # changed in place: the same object is a different computation
    assert circuit_key(circuit) != before
    other = QuantumCircuit(2)
    other.ry(Parameter("θ"), 0)  # same name, another parameter
    other.cx(0, 1)
    other.x(1)
    assert circuit_key(other) != circuit_key(circuit)


def test_circuit_key_sees_register_order() -> None:
    a, b = QuantumRegister(1, "a"), QuantumRegister(1, "b")
    first, second = QuantumCircuit(a, b), QuantumCircuit(b, a)
    for circuit in (first, second):
        circuit.x(a[0])  # qubit 0 of the first, qubit 1 of the second
    assert circuit_key(first) != circuit_key(second)


def test_circuits_a_key_cannot_describe_are_not_cached() -> None:
    inner = QuantumCircuit(1, name="custom")
    inner.x(0)
    circuit = QuantumCircuit(1)
    circuit.append(inner.to_gate(), [0])
    assert circuit_key(circuit) is None


def test_observable_key_follows_terms_and_coefficients() -> None:
    h = SparsePauliOp.from_list([("ZI", 1.0), ("XX", 0.5)])
    assert observable_key(h) == observable_key(SparsePauliOp.from_list([("ZI", 1.0), ("XX", 0.5)]))
    assert observable_key(h) != observable_key(SparsePauliOp.from_list([("ZI", 1.0), ("XX", 0.25)]))
    assert observable_key(h) != observable_key(SparsePauliOp.from_list([("ZI", 1.0), ("YY", 0.5)]))
    assert observable_key(SparsePauliOp("Z")) != observable_key(SparsePauliOp("ZI"))


# -- the Aer estimator cache ----------------------------------------------------------------

GATES = ("h", "x", "ry", "rz", "cx", "sdg")
gate = st.tuples(st.sampled_from(GATES), st.integers(0, 2), st.integers(0, 2), st.floats(-3, 3))
paulis = st.text(alphabet="IXYZ", min_size=3, max_size=3)
terms = st.lists(st.tuples(paulis, st.floats(-2, 2)), min_size=1, max_size=4)


def build(gates: list[tuple[str, int, int, float]], theta: Parameter) -> QuantumCircuit:
    circuit = QuantumCircuit(3)
    circuit.ry(theta, 0)
    for name, q, r, angle in gates:
        if name == "cx":
            if q != r:
                circuit.cx(q, r)
        elif name in ("ry", "rz"):
            getattr(circuit, name)(angle, q)
        else:
            getattr(circuit, name)(q)
    return circuit


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.lists(gate, max_size=6),
    second=st.lists(gate, max_size=6),
    obs_a=terms,
    obs_b=terms,
    value=st.floats(-3, 3),
)
def test_cached_estimator_circuits_are_never_reused_for_another_computation(
    aer: AerResource,
    first: list[tuple[str, int, int, float]],
    second: list[tuple[str, int, int, float]],
    obs_a: list[tuple[str, float]],
    obs_b: list[tuple[str, float]],
    value: float,
) -> None:
    theta = Parameter("θ")
    a, b = SparsePauliOp.from_list(obs_a), SparsePauliOp.from_list(obs_b)
    circuit = build(first, theta)
    for obs in (a, b, a):  # the same circuit, other observables, and back
        assert agrees(aer, circuit, obs, value)
    other = build(second, theta)  # another circuit on the same parameter
    assert agrees(aer, other, a, value)
    circuit.h(2)  # the cached circuit changed in place
    assert agrees(aer, circuit, a, value)


def test_rows_of_one_task_bind_the_cached_circuit_independently(aer: AerResource) -> None:
    theta = Parameter("θ")
    circuit = QuantumCircuit(1)
    circuit.ry(theta, 0)
    rows = [[0.0], [math.pi / 2], [math.pi]]
    result = aer.run(EstimatorTask.create(circuit, "Z", rows))
    assert isinstance(result, EstimatorResult)
    assert [round(r[0], 9) for r in result.values] == [1.0, 0.0, -1.0]
    again = aer.run(EstimatorTask.create(circuit, "Z", [[math.pi]]))
    assert isinstance(again, EstimatorResult)
    assert again.values[0][0] == pytest.approx(-1.0)


def test_the_cache_is_bounded(aer: AerResource) -> None:
    from qhpc.resources import aer as aer_module

    for k in range(aer_module.EXACT_CACHE_SIZE + 5):
        circuit = QuantumCircuit(1)
        circuit.rx(0.01 * k, 0)
        estimate(aer, circuit, SparsePauliOp("Z"), [])
    assert len(aer._exact_circuits) == aer_module.EXACT_CACHE_SIZE


# -- LocalQPU runs tasks inline ----------------------------------------------------------------


class FailingAer(AerResource):
    def _exact_expectations(self, task: EstimatorTask, record: object) -> EstimatorResult | None:  # type: ignore[override]
        raise RuntimeError("simulator exploded")


def test_local_qpu_reports_a_failing_inline_task_naming_its_job() -> None:
    circuit = QuantumCircuit(1)
    circuit.h(0)
    resource = FailingAer("broken")
    try:
        with pytest.raises(ProgramError, match=r"broken failed on job 'probe'.*simulator exploded"):
            LocalQPU(resource).submit(Job.expectation(circuit, "Z", name="probe"))
    finally:
        resource.close()


# -- the stack's plugins ---------------------------------------------------------------------


def test_transpile_sees_a_circuit_changed_in_place() -> None:
    from qhpc.program import Transpile
    from qhpc.resources.target import line_device

    specs = line_device(2)
    plugin = Transpile(seed_transpiler=1)
    circuit = QuantumCircuit(2)
    circuit.h(0)
    first = plugin.transpiled(circuit, specs)
    assert plugin.transpiled(circuit, specs) is first  # unchanged: served from the cache
    circuit.x(1)  # changed in place after it was cached
    second = plugin.transpiled(circuit, specs)
    assert second is not first
    assert Statevector(second).equiv(Statevector(circuit))


def test_observable_measurement_sees_a_circuit_changed_in_place() -> None:
    from qhpc.program import ObservableMeasurement

    plugin = ObservableMeasurement()
    circuit = QuantumCircuit(2)
    circuit.h(0)
    zz = SparsePauliOp("ZZ")
    first = plugin.measurement(circuit, zz)
    assert plugin.measurement(circuit, zz) is first
    assert plugin.measurement(circuit, SparsePauliOp("XX")) is not first
    circuit.x(1)
    changed = plugin.measurement(circuit, zz)
    assert changed is not first
    assert changed.circuits[0].count_ops().get("x") == 1
