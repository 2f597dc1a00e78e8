"""qhpc's SamplerV2/EstimatorV2 behave like Qiskit's reference primitives.

The same primitives script runs on qhpc (over aer, the emulator and qx) and on
Qiskit's ``StatevectorSampler``/``StatevectorEstimator``; results, shapes and
metadata must match. The remaining tests restate Qiskit's own expectations of
V2 primitives (pub forms, broadcasting, registers, shots/precision per pub).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from qiskit.circuit import ClassicalRegister, Clbit, Parameter, QuantumCircuit, QuantumRegister
from qiskit.primitives import (
    BaseEstimatorV2,
    BaseSamplerV2,
    BitArray,
    PrimitiveResult,
    StatevectorEstimator,
    StatevectorSampler,
)
from qiskit.primitives.base.base_primitive_job import BasePrimitiveJob
from qiskit.primitives.containers.bindings_array import BindingsArray
from qiskit.providers import JobStatus
from qiskit.quantum_info import Pauli, SparseObservable, SparsePauliOp, Statevector
from scipy.stats import chi2_contingency

from qhpc.primitives import EstimatorV2, SamplerV2, TaskRunner, shots_for_precision
from qhpc.resources import (
    AerResource,
    EmulatorResource,
    EstimatorResult,
    EstimatorTask,
    Payload,
    PayloadError,
    QxResource,
    SamplerTask,
    ScaledClock,
    TaskFailedError,
    TaskResult,
    UnsupportedPayloadError,
    device_target,
)
from qhpc.resources.target import DeviceTarget

SHOTS = 4000


# -- helpers -----------------------------------------------------------------
class Spy:
    """A QPU that records every payload and may narrow the target's limits."""

    def __init__(self, inner: TaskRunner, **limits: Any) -> None:
        self.inner = inner
        self.payloads: list[Payload] = []
        self._target = replace(inner.target(), **limits)

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        self.payloads.append(payload)
        return self.inner.run(payload, timeout)

    def target(self) -> DeviceTarget:
        return self._target


class CountsOnly(Spy):
    """A QPU without per-shot memory, refusing it the way qx does."""

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        self.payloads.append(payload)
        if isinstance(payload, SamplerTask) and payload.memory:
            raise UnsupportedPayloadError("counts only")
        return self.inner.run(payload, timeout)


class Truncating(Spy):
    """A broken QPU that drops the last observable's values."""

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        result = super().run(payload, timeout)
        assert isinstance(result, EstimatorResult)
        return replace(result, values=tuple(row[:-1] for row in result.values))


def p_value(a: dict[str, int], b: dict[str, int]) -> float:
    keys = sorted(set(a) | set(b))
    if len(keys) == 1:
        return 1.0
    table = [[a.get(k, 0) for k in keys], [b.get(k, 0) for k in keys]]
    return float(chi2_contingency(table).pvalue)


def assert_same_bits(ours: BitArray, ref: BitArray, *, exact: bool = False) -> None:
    assert ours.shape == ref.shape
    assert ours.num_shots == ref.num_shots
    assert ours.num_bits == ref.num_bits
    assert ours.array.shape == ref.array.shape
    for index in np.ndindex(ours.shape):
        a, b = ours.get_counts(index), ref.get_counts(index)
        if exact:
            assert a == b, index
        else:
            assert p_value(a, b) > 1e-3, (index, a, b)


def assert_same_sampler_result(ours: PrimitiveResult, ref: PrimitiveResult, exact: bool) -> None:
    assert ours.metadata == ref.metadata
    assert len(ours) == len(ref)
    for mine, theirs in zip(ours, ref, strict=True):
        assert mine.metadata == theirs.metadata
        assert mine.data.shape == theirs.data.shape
        assert list(mine.data.keys()) == list(theirs.data.keys())
        for name in theirs.data:
            assert_same_bits(mine.data[name], theirs.data[name], exact=exact)


def ansatz() -> QuantumCircuit:
    a, b = Parameter("a"), Parameter("b")
    circuit = QuantumCircuit(2, metadata={"name": "ansatz"})
    circuit.ry(a, 0)
    circuit.ry(b, 1)
    circuit.cx(0, 1)
    circuit.rx(a / 2, 1)
    return circuit


def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure_all()
    return circuit


def ghz() -> QuantumCircuit:
    circuit = QuantumCircuit(QuantumRegister(3), ClassicalRegister(3, "c"), metadata={"k": 1})
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.cx(1, 2)
    circuit.measure(range(3), range(3))
    return circuit


def rotations() -> QuantumCircuit:
    theta = Parameter("θ")
    circuit = QuantumCircuit(2)
    circuit.ry(theta, 0)
    circuit.cx(0, 1)
    circuit.ry(theta / 3, 1)
    circuit.measure_all()
    return circuit


def registers() -> QuantumCircuit:
    """Three registers; bits of ``beta`` are partly unmeasured, ``gamma`` spans bytes."""
    alpha, beta = ClassicalRegister(2, "alpha"), ClassicalRegister(3, "beta")
    gamma = ClassicalRegister(10, "gamma")
    circuit = QuantumCircuit(QuantumRegister(10), alpha, beta, gamma)
    circuit.x([0, 3, 4, 9])
    circuit.measure([0, 1], alpha)
    circuit.measure(4, beta[2])  # beta[0], beta[1] stay 0
    circuit.measure(range(10), gamma)
    return circuit


def script(sampler: BaseSamplerV2, estimator: BaseEstimatorV2) -> dict[str, PrimitiveResult]:
    """Unmodified Qiskit primitives code: what a user would run anywhere."""
    sampled = sampler.run(
        [bell(), (ghz(), None, SHOTS), (rotations(), [0.4, 2.1])], shots=SHOTS
    ).result()
    observables = [["ZZ"], [SparsePauliOp.from_list([("XI", 0.5), ("IY", -1.0), ("II", 0.2)])]]
    thetas = np.array([[0.1, 0.7], [1.3, -0.4], [2.9, 2.2]])
    estimated = estimator.run(
        [
            (ansatz(), observables, thetas),  # (2,1) against (3,) → (2,3)
            (ansatz(), "ZI", thetas.reshape(3, 1, 2)),  # scalar against (3,1) → (3,1)
            (ansatz(), ["XX", Pauli("YY"), {"ZZ": 1.0, "XI": -2.0}], [0.5, 0.25]),
            (ansatz(), ["ZZ", "XX", "IZ"], thetas),  # zipped (3,) with (3,)
        ]
    ).result()
    return {"sampler": sampled, "estimator": estimated}


# -- fixtures ----------------------------------------------------------------
@pytest.fixture(scope="module")
def qpu() -> Iterator[AerResource]:
    resource = AerResource("aer", seed=11)
    yield resource
    resource.close()


@pytest.fixture
def sampler(qpu: AerResource) -> SamplerV2:
    return SamplerV2(qpu, seed=5)


@pytest.fixture
def estimator(qpu: AerResource) -> EstimatorV2:
    return EstimatorV2(qpu, seed=5)


# -- the same script on qhpc and on Qiskit's reference --------------------------
def test_same_script_matches_reference(sampler: SamplerV2, estimator: EstimatorV2) -> None:
    ours = script(sampler, estimator)
    ref = script(StatevectorSampler(seed=3), StatevectorEstimator())
    assert_same_sampler_result(ours["sampler"], ref["sampler"], exact=False)
    assert [r.data.shape for r in ours["estimator"]] == [(2, 3), (3, 1), (3,), (3,)]
    assert ours["estimator"].metadata == ref["estimator"].metadata
    for mine, theirs in zip(ours["estimator"], ref["estimator"], strict=True):
        assert mine.metadata == theirs.metadata
        assert list(mine.data.keys()) == list(theirs.data.keys())
        assert mine.data.evs.shape == theirs.data.evs.shape == mine.data.stds.shape
        np.testing.assert_allclose(mine.data.evs, theirs.data.evs, atol=1e-9)
        np.testing.assert_array_equal(mine.data.stds, 0.0)


def test_qpu_protocol_is_met_by_resources(qpu: AerResource) -> None:
    assert isinstance(qpu, TaskRunner)
    assert isinstance(SamplerV2(qpu), BaseSamplerV2)
    assert isinstance(EstimatorV2(qpu), BaseEstimatorV2)


def test_job_behaves_like_qiskits(sampler: SamplerV2) -> None:
    job = sampler.run([bell()])
    assert isinstance(job, BasePrimitiveJob)
    assert isinstance(job.job_id(), str)
    result = job.result()
    assert isinstance(result, PrimitiveResult)
    assert job.status() is JobStatus.DONE
    assert job.done() and job.in_final_state() and not job.cancelled()
    assert job.cancel() is False  # already finished


# -- sampler: Qiskit's expectations ----------------------------------------------
@pytest.mark.parametrize(
    ("pub", "shape"),
    [
        (rotations().assign_parameters([0.3]), ()),
        ((rotations().assign_parameters([0.3]),), ()),
        ((rotations(), [0.3]), ()),
        ((rotations(), [[0.3], [1.0]]), (2,)),
        ((rotations(), np.linspace(0, 1, 6).reshape(2, 3, 1)), (2, 3)),
        ((rotations(), {"θ": [0.1, 0.2, 0.3]}), (3,)),
        ((rotations(), [0.3], 17), ()),
        ((rotations(), BindingsArray({"θ": [[0.1], [0.2]]}), 9), (2,)),
    ],
)
def test_sampler_pub_forms(sampler: SamplerV2, pub: Any, shape: tuple[int, ...]) -> None:
    ours = sampler.run([pub], shots=50).result()
    ref = StatevectorSampler(seed=1).run([pub], shots=50).result()
    assert ours[0].data.meas.shape == ref[0].data.meas.shape == shape
    assert ours[0].data.meas.num_shots == ref[0].data.meas.num_shots
    assert ours[0].metadata == ref[0].metadata
    assert ours.metadata == ref.metadata


def test_sampler_registers_bits_match_reference_exactly(sampler: SamplerV2) -> None:
    circuit = registers()
    ours = sampler.run([circuit], shots=20).result()
    ref = StatevectorSampler().run([circuit], shots=20).result()
    assert_same_sampler_result(ours, ref, exact=True)
    assert ours[0].data.alpha.get_counts() == {"01": 20}
    assert ours[0].data.beta.get_counts() == {"100": 20}
    assert ours[0].data.gamma.get_counts() == {"1000011001": 20}
    np.testing.assert_array_equal(ours[0].data.gamma.array, ref[0].data.gamma.array)
    assert ours[0].join_data().num_bits == 15


def test_sampler_odd_clbit_layouts_match_reference(sampler: SamplerV2) -> None:
    # a registerless clbit before the registers, and two registers sharing a bit
    loose, shared = Clbit(), Clbit()
    first = ClassicalRegister(bits=[Clbit(), shared], name="first")
    second = ClassicalRegister(bits=[shared, Clbit()], name="second")
    circuit = QuantumCircuit(QuantumRegister(4), [loose], first, second)
    circuit.x([0, 2])
    circuit.measure(0, loose)
    circuit.measure(1, first[0])
    circuit.measure(2, shared)
    circuit.measure(3, second[1])
    ours = sampler.run([circuit], shots=8).result()
    ref = StatevectorSampler().run([circuit], shots=8).result()
    assert_same_sampler_result(ours, ref, exact=True)
    assert ours[0].data.first.get_counts() == {"10": 8}
    assert ours[0].data.second.get_counts() == {"01": 8}


def test_sampler_no_registers_warns_and_is_empty(sampler: SamplerV2) -> None:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    with pytest.warns(UserWarning, match="pub 0"):
        ours = sampler.run([circuit]).result()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = StatevectorSampler().run([circuit]).result()
    assert list(ours[0].data.keys()) == list(ref[0].data.keys()) == []
    assert ours[0].metadata == ref[0].metadata


def test_sampler_zero_parameter_circuit_with_empty_params(sampler: SamplerV2) -> None:
    circuit = bell()
    cases: list[tuple[Any, tuple[int, ...]]] = [(None, ()), ([], ()), (np.zeros((2, 0)), (2,))]
    for values, shape in cases:
        ours = sampler.run([(circuit, values)], shots=100).result()[0].data.meas
        ref = StatevectorSampler().run([(circuit, values)], shots=100).result()[0].data.meas
        assert ours.shape == ref.shape == shape
        assert set(ours.get_counts()) <= {"00", "11"}
    ba = BindingsArray(shape=(2, 3))
    assert sampler.run([(circuit, ba)], shots=10).result()[0].data.meas.shape == (2, 3)


def test_sampler_batches_all_pubs_per_shot_count(qpu: AerResource) -> None:
    spy = Spy(qpu)
    result = (
        SamplerV2(spy)
        .run(
            [(rotations(), [[0.1], [0.2], [0.3]]), (bell(), None, 30), ghz(), (ghz(), None, 30)],
            shots=40,
        )
        .result()
    )
    assert [r.data[next(iter(r.data))].num_shots for r in result] == [40, 30, 40, 30]
    assert [r.metadata["shots"] for r in result] == [40, 30, 40, 30]
    tasks = [p for p in spy.payloads if isinstance(p, SamplerTask)]
    assert sorted((t.shots, len(t.circuits)) for t in tasks) == [(30, 2), (40, 4)]
    assert all(t.memory for t in tasks)


def test_sampler_splits_batches_at_max_circuits(qpu: AerResource) -> None:
    spy = Spy(qpu, max_circuits=2)
    result = SamplerV2(spy).run([(rotations(), np.linspace(0, 3, 5)[:, None])]).result()
    assert [len(p.circuits) for p in spy.payloads if isinstance(p, SamplerTask)] == [2, 2, 1]
    ref = StatevectorSampler(seed=2).run([(rotations(), np.linspace(0, 3, 5)[:, None])]).result()
    assert_same_sampler_result(result, ref, exact=False)


def test_sampler_falls_back_to_counts(qpu: AerResource) -> None:
    spy = CountsOnly(qpu)
    sampler = SamplerV2(spy, seed=9)
    circuit = registers()
    first = sampler.run([circuit], shots=64).result()
    ref = StatevectorSampler().run([circuit], shots=64).result()
    assert_same_sampler_result(first, ref, exact=True)
    bits = sampler.run([bell()], shots=64).result()[0].data.meas
    assert bits.num_shots == 64 and sum(bits.get_counts().values()) == 64
    strings = bits.get_bitstrings()
    assert strings == sorted(strings)  # counts expanded in ascending order
    memory_asks = [p for p in spy.payloads if isinstance(p, SamplerTask) and p.memory]
    assert len(memory_asks) == 1  # remembered: asked for memory once


def test_sampler_seed_repeats_results(qpu: AerResource) -> None:
    pubs = [(rotations(), [[0.5], [1.5]])]
    a = SamplerV2(qpu, seed=21).run(pubs).result()[0].data.meas
    b = SamplerV2(qpu, seed=21).run(pubs).result()[0].data.meas
    np.testing.assert_array_equal(a.array, b.array)


# -- estimator: Qiskit's expectations ---------------------------------------------
@pytest.mark.parametrize(
    ("observables", "values", "shape"),
    [
        ("ZZ", None, ()),
        ("ZZ", [0.3, 0.1], ()),
        (["ZZ", "XX"], [0.3, 0.1], (2,)),
        ("ZZ", np.ones((2, 3, 2)), (2, 3)),
        ([["ZZ"], ["XI"], ["IY"]], np.ones((4, 2)), (3, 4)),
        ([["ZZ", "XX"]], np.ones((3, 1, 2)), (3, 2)),
        ("XY", {("a", "b"): [[0.2, 0.4], [1.0, 2.0]]}, (2,)),
        ("ZZ", BindingsArray({("a", "b"): np.zeros((0, 2))}), (0,)),
    ],
)
def test_estimator_broadcasting(
    estimator: EstimatorV2, observables: Any, values: Any, shape: tuple[int, ...]
) -> None:
    circuit = ansatz()
    if values is None:
        circuit = circuit.assign_parameters([0.7, 0.2])
    pub = (circuit, observables, values)
    ours = estimator.run([pub]).result()[0]
    ref = StatevectorEstimator().run([pub]).result()[0]
    assert ours.data.evs.shape == ours.data.stds.shape == ref.data.evs.shape == shape
    assert isinstance(ours.data.evs, np.ndarray)
    np.testing.assert_allclose(ours.data.evs, ref.data.evs, atol=1e-9)
    assert ours.metadata == ref.metadata


def test_estimator_zero_parameter_circuit(estimator: EstimatorV2) -> None:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    cases: list[tuple[Any, tuple[int, ...]]] = [(None, (2,)), ([], (2,)), (np.zeros((2, 0)), (2,))]
    for values, shape in cases:
        ours = estimator.run([(circuit, ["XI", "IX"], values)]).result()[0].data.evs
        ref = StatevectorEstimator().run([(circuit, ["XI", "IX"], values)]).result()[0].data.evs
        assert ours.shape == ref.shape == shape
        np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_estimator_tasks_group_parameter_rows(qpu: AerResource) -> None:
    spy = Spy(qpu)
    repeated = np.array([[0.1, 0.2], [0.3, 0.4], [0.1, 0.2]])
    distinct = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    ours = (
        EstimatorV2(spy)
        .run(
            [
                (ansatz(), [["ZZ"], ["XX"]], repeated),  # outer product: one task
                (ansatz(), ["ZZ", "XX", "YY"], distinct),  # zipped: one task per pair
            ]
        )
        .result()
    )
    outer, *zipped = [p for p in spy.payloads if isinstance(p, EstimatorTask)]
    assert len(outer.parameter_values) == 2 and len(outer.observables) == 2
    assert len(zipped) == 3
    assert all(len(t.observables) == len(t.parameter_values) == 1 for t in zipped)
    ref = StatevectorEstimator().run(
        [(ansatz(), [["ZZ"], ["XX"]], repeated), (ansatz(), ["ZZ", "XX", "YY"], distinct)]
    )
    for mine, theirs in zip(ours, ref.result(), strict=True):
        np.testing.assert_allclose(mine.data.evs, theirs.data.evs, atol=1e-9)


def test_estimator_precision_sets_shots(qpu: AerResource) -> None:
    spy = Spy(qpu)
    circuit = ansatz()
    values = [0.6, 1.1]
    exact = float(
        Statevector(circuit.assign_parameters(values)).expectation_value(Pauli("ZZ")).real
    )
    result = (
        EstimatorV2(spy, seed=4, default_precision=0.05)
        .run([(circuit, "ZZ", values), (circuit, "ZZ", values, 0.02), (circuit, "ZZ", values, 0)])
        .result()
    )
    shots = [p.shots for p in spy.payloads if isinstance(p, EstimatorTask)]
    assert shots == [400, 2500, None] == [shots_for_precision(p) for p in (0.05, 0.02, 0)]
    assert [r.metadata["target_precision"] for r in result] == [0.05, 0.02, 0]
    for pub_result, precision in zip(result, [0.05, 0.02], strict=False):
        assert abs(float(pub_result.data.evs) - exact) < 5 * precision
        assert 0 < float(pub_result.data.stds) < 2 * precision
    assert float(result[2].data.stds) == 0.0
    result = EstimatorV2(spy).run([(circuit, "ZZ", values)], precision=0.1).result()
    assert result[0].metadata["target_precision"] == 0.1
    assert spy.payloads[-1].shots == math.ceil(1 / 0.1**2)


def test_estimator_projector_observables(estimator: EstimatorV2) -> None:
    circuit = ansatz().assign_parameters([0.9, 0.4])
    observable = SparseObservable("0+")
    value = estimator.run([(circuit, observable)]).result()[0].data.evs
    state = Statevector(circuit)
    expected = state.expectation_value(SparsePauliOp.from_sparse_observable(observable.as_paulis()))
    assert float(value) == pytest.approx(float(np.real(expected)), abs=1e-9)


# -- other resources ---------------------------------------------------------------
@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorResource]:
    resource = EmulatorResource(
        "emulator", device=device_target("line-5"), noise=False, clock=ScaledClock(1e6), seed=3
    )
    yield resource
    resource.close()


@pytest.fixture(scope="module")
def qx() -> Iterator[QxResource]:
    resource = QxResource("qx", seed=3)
    yield resource
    resource.close()


@pytest.mark.parametrize("name", ["emulator", "qx"])
def test_other_resources_run_the_same_primitives(name: str, request: pytest.FixtureRequest) -> None:
    resource = request.getfixturevalue(name)
    ours = SamplerV2(resource, seed=1).run([bell(), ghz()], shots=2000).result()
    ref = StatevectorSampler(seed=1).run([bell(), ghz()], shots=2000).result()
    assert_same_sampler_result(ours, ref, exact=False)
    assert set(ours[0].data.meas.get_counts()) == {"00", "11"}
    evs = EstimatorV2(resource, default_precision=0.02).run([(ansatz(), ["ZZ", "XX"], [0, 0])])
    np.testing.assert_allclose(evs.result()[0].data.evs, [1.0, 0.0], atol=0.1)


# -- errors name the pub ------------------------------------------------------------
def test_observable_wider_than_circuit(estimator: EstimatorV2) -> None:
    with pytest.raises(ValueError, match=r"pub 1: .*number of qubits"):
        estimator.run([(ansatz(), "ZZ", [0, 0]), (ansatz(), "ZZZ", [0, 0])])


def test_wrong_parameter_count(estimator: EstimatorV2, sampler: SamplerV2) -> None:
    with pytest.raises(ValueError, match=r"pub 0: .*inconsistent with last dimension"):
        estimator.run([(ansatz(), "ZZ", [0.1, 0.2, 0.3])])
    with pytest.raises(ValueError, match=r"pub 1: .*number of parameters"):
        estimator.run([(ansatz(), "ZZ", [0, 0]), (ansatz(), "ZZ", {"a": 0.1})])
    measured = ansatz()
    measured.measure_all()
    with pytest.raises(ValueError, match=r"pub 2: .*inconsistent with last dimension"):
        sampler.run([bell(), bell(), (measured, [0.1, 0.2, 0.3])])
    with pytest.raises(ValueError, match="pub 0"):
        sampler.run([rotations()])  # unbound parameters, no values
    # refused at run(), as the estimator does (it used to fail only at result())
    with pytest.raises(ValueError, match="pub 1: parameter values must be finite"):
        sampler.run([bell(), (rotations(), [0.2, np.nan])])
    with pytest.raises(PayloadError, match="pub 0: parameter set 0 contains a non-finite"):
        estimator.run([(ansatz(), "ZZ", [0, np.nan])])


def test_pub_that_does_not_fit_the_device(qpu: AerResource) -> None:
    small = Spy(qpu, num_qubits=2, max_shots=100)
    with pytest.raises(PayloadError, match=r"pub 1: the circuit needs 3 qubits"):
        SamplerV2(small).run([bell(), ghz()], shots=10)
    with pytest.raises(PayloadError, match=r"pub 0: 1000 shots exceed"):
        SamplerV2(small).run([bell()], shots=1000)
    with pytest.raises(PayloadError, match=r"pub 0: 10000 shots exceed"):
        EstimatorV2(small).run([(ansatz(), "ZZ", [0, 0], 0.01)])
    assert small.payloads == []


def test_wrong_number_of_values_is_reported(qpu: AerResource) -> None:
    job = EstimatorV2(Truncating(qpu)).run([(ansatz(), ["ZZ", "XX"], [0, 0])])
    with pytest.raises(TaskFailedError, match=r"pub 0: .*shape \(1, 1\).*1 parameter set"):
        job.result()
    assert job.status() is JobStatus.ERROR


def test_unknown_options_are_rejected(qpu: AerResource) -> None:
    with pytest.raises(ValueError, match="unknown option"):
        SamplerV2(qpu, options={"shots": 3})
    assert EstimatorV2(qpu, options={"timeout": 5}).options.timeout == 5.0


# -- defects found running Qiskit's own primitives tests (issue "Ecosystem", item 1) ------


def test_exact_values_of_a_non_unitary_circuit_are_the_mixture_not_one_branch(
    estimator: EstimatorV2,
) -> None:
    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.reset(0)  # qubit 1 is left maximally mixed: <ZI> = 0, <IZ> = 1
    observables = [SparsePauliOp("ZI"), SparsePauliOp("IZ"), SparsePauliOp("ZI")]
    for _ in range(3):  # one trajectory would give +-1 at random, "exactly"
        (result,) = estimator.run([(bell, observables)]).result()
        assert np.allclose(result.data.evs, [0.0, 1.0, 0.0], atol=1e-9)
        assert np.allclose(result.data.stds, 0.0)


def test_a_mid_circuit_measurement_is_sampled_with_a_real_standard_error(
    estimator: EstimatorV2,
) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.h(0)
    circuit.measure(0, 0)  # a mixture of |0> and |1>: <Z> = 0, not +-1
    (result,) = estimator.run([(circuit, SparsePauliOp("Z"))], precision=0.02).result()
    assert abs(float(result.data.evs)) < 0.1
    assert float(result.data.stds) > 0  # sampled, and says so


def test_a_classical_register_never_written_reads_zeros(sampler: SamplerV2) -> None:
    circuit = QuantumCircuit(2, 3)
    circuit.h(0)  # no measurement at all
    (result,) = sampler.run([circuit], shots=20).result()
    assert result.data.c.get_counts() == {"000": 20}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1])
def test_bad_precision_is_refused_at_run_with_a_clear_error(
    estimator: EstimatorV2, bad: float
) -> None:
    circuit = QuantumCircuit(1)
    with pytest.raises(ValueError, match="precision must be a finite number >= 0"):
        estimator.run([(circuit, "Z")], precision=bad)
    with pytest.raises(ValueError, match="finite"):
        EstimatorV2(estimator._qpu, default_precision=bad)


def test_the_sampler_refuses_nan_parameters_at_run(sampler: SamplerV2) -> None:
    theta = Parameter("t")
    circuit = QuantumCircuit(1)
    circuit.rx(theta, 0)
    circuit.measure_all()
    with pytest.raises(ValueError, match=r"pub 0: .*finite"):
        sampler.run([(circuit, [math.nan])])
