"""The programming model: jobs, stacks, plugins, local and remote QPUs, and the examples.

Tolerances: with exact expectation values VQE must reach the H2 ground energy
within 1.6 mHa (chemical accuracy). With 20 000 shots per measurement group
one energy evaluation has a standard error of about 1.6 mHa; the stated
tolerance for the sampled VQE is 10 mHa (about 6 standard errors, which also
covers the optimiser stopping on a noisy objective). The remote runs use the
same example code through a real broker served by uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvicorn
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

import qhpc
from helpers import CHEMICAL_ACCURACY_MHA, SHOTS_TOLERANCE_MHA, example, free_port
from qhpc.api import create_app
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.client import connect
from qhpc.program import (
    Batch,
    BatchResult,
    CancelledError,
    Job,
    JobError,
    LocalQPU,
    ObservableMeasurement,
    PayloadPlan,
    Plugin,
    PluginError,
    ReadoutMitigation,
    RemoteError,
    RemoteQPU,
    Result,
    ScipyMinimize,
    Stack,
    StackError,
    Transpile,
    job_generator,
)
from qhpc.resources import (
    AerResource,
    DeviceTarget,
    EmulatorResource,
    ResourceRegistry,
    ResourceSpec,
    ScaledClock,
    device_target,
)
from qhpc.security import Role
from qhpc.store import AccountRecord, Store


@pytest.fixture(scope="module")
def vqe() -> ModuleType:
    return example("vqe_h2")


@pytest.fixture
def qpu(aer: AerResource) -> LocalQPU:
    return LocalQPU(aer)


def rotations() -> QuantumCircuit:
    a, b = Parameter("a"), Parameter("b")
    circuit = QuantumCircuit(2, name="rot")
    circuit.ry(a, 0)
    circuit.ry(b, 1)
    return circuit


class Failing(Plugin):
    """Raises in ``phase`` once it has passed ``after`` batches."""

    def __init__(self, phase: str = "compile", after: int = 0) -> None:
        self.phase = phase
        self.after = after
        self.seen = 0

    def compile(self, batch: Batch, specs: DeviceTarget) -> Batch:
        self.seen += 1
        if self.phase == "compile" and self.seen > self.after:
            raise ValueError("boom in compile")
        return batch

    def post_process(self, result: BatchResult) -> BatchResult:
        if self.phase == "post_process":
            raise RuntimeError("boom in post_process")
        return result


class Sleepy(Plugin):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def compile(self, batch: Batch, specs: DeviceTarget) -> Batch:
        self.calls += 1
        time.sleep(self.seconds)
        return batch


class Counting(Plugin):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def compile(self, batch: Batch, specs: DeviceTarget) -> Batch:
        self.batches.append(len(batch))
        return batch


# -- jobs and bad input ----------------------------------------------------------------


def test_jobs_validate_and_name_themselves(bell: QuantumCircuit) -> None:
    circuit = rotations()
    with pytest.raises(JobError, match=r"job 'fit': 3 parameter value\(s\) given but the circuit"):
        Job.expectation(circuit, "ZZ", parameters=[1, 2, 3], name="fit")
    with pytest.raises(JobError, match=r"job 'fit'.*unknown \['c'\]; missing \['b'\]"):
        Job.expectation(circuit, "ZZ", parameters={"a": 1, "c": 2}, name="fit")
    with pytest.raises(JobError, match="job 'wide': the observable acts on 3 qubits but the ci"):
        Job.expectation(circuit, "ZZZ", name="wide")
    with pytest.raises(JobError, match="job 'counts': a sampling job needs shots"):
        Job(bell, name="counts")
    with pytest.raises(JobError, match="measures nothing"):
        Job.sample(circuit, 100, parameters=[0, 0])
    with pytest.raises(JobError, match="not Hermitian"):
        Job.expectation(circuit, SparsePauliOp("ZZ", 1j))
    narrow = Job.expectation(circuit, {"Z": 2.0}, parameters={circuit.parameters[0]: 0.1, "b": 0})
    assert narrow.observable is not None and narrow.observable.paulis[0].to_label() == "IZ"
    assert narrow.parameter_dict() == {"a": 0.1, "b": 0.0}
    with pytest.raises(AttributeError, match="immutable"):
        narrow.shots = 5


def test_unbound_and_oversized_jobs_are_refused_by_the_qpu(qpu: LocalQPU) -> None:
    open_job = Job.expectation(rotations(), "ZZ", name="open")
    with pytest.raises(JobError, match=r"job 'open' has 2 unbound parameter\(s\) \['a', 'b'\]"):
        qpu.submit(open_job)
    wide = QuantumCircuit(70, 1, name="wide")
    wide.measure(0, 0)
    with pytest.raises(JobError, match="job on circuit 'wide' needs 70 qubits"):
        qpu.submit(Job.sample(wide, 10))


def test_a_batch_becomes_the_fewest_payloads(qpu: LocalQPU, bell: QuantumCircuit) -> None:
    circuit = rotations()
    jobs = [
        Job.sample(bell, 200, name="b1"),
        Job.expectation(circuit, "ZZ", parameters=[0, 0], name="e1"),
        Job.sample(bell.copy(name="bell2"), 200, name="b2"),
        Job.expectation(circuit, "XI", parameters=[3.14159265, 0], name="e2"),
        Job.expectation(circuit, "ZZ", parameters=[0, 0], name="e3"),
    ]
    plan = PayloadPlan.build(Batch(jobs), qpu.specs())
    assert [p.kind for p in plan.payloads] == ["sampler", "estimator"]
    results = qpu.submit(Batch(jobs))
    assert isinstance(results, BatchResult) and results.meta["payloads"] == 2
    assert set(results[0].counts or {}) <= {"00", "11"} and results[0].shots == 200
    assert results[1].value == pytest.approx(1.0)
    assert results[3].value == pytest.approx(0.0, abs=1e-6)
    assert results[4].value == pytest.approx(1.0) and results[4].parameters == (0.0, 0.0)


# -- stacks ----------------------------------------------------------------------------


def test_stacks_compose_and_are_qpus(aer: AerResource, bell: QuantumCircuit) -> None:
    first, second = Counting(), Counting()
    upper = first | Transpile()
    lower = second | LocalQPU(aer)
    stack = upper | lower
    assert isinstance(stack, Stack)
    assert stack.name == "Counting | Transpile | Counting | aer"
    assert (Counting() | aer).name == "Counting | aer"  # a resource is wrapped in a LocalQPU
    result = stack.submit(Batch([Job.sample(bell, 100), Job.sample(bell, 50)]))
    assert [r.shots for r in result] == [100, 50]
    assert first.batches == second.batches == [2]
    with pytest.raises(StackError, match="must end the stack"):
        LocalQPU(aer) | Counting()
    with pytest.raises(StackError, match="already ends in the QPU aer"):
        stack | Counting()
    with pytest.raises(StackError, match="neither a plugin nor a QPU"):
        Counting() | 42


def test_stack_without_qpu_says_so(bell: QuantumCircuit) -> None:
    stack = ScipyMinimize() | ObservableMeasurement()
    with pytest.raises(StackError, match=r"stack ScipyMinimize \| ObservableMeasurement has no "):
        stack.submit(Job.sample(bell, 10))


def test_plugin_errors_name_the_plugin_phase_and_job(qpu: LocalQPU, bell: QuantumCircuit) -> None:
    job = Job.sample(bell, 10, name="bell-job")
    with pytest.raises(PluginError, match=r"plugin Failing failed in compile on job 'bell-job': V"):
        (Transpile() | Failing("compile") | qpu).submit(job)
    with pytest.raises(PluginError, match=r"Failing failed in post_process.*boom") as caught:
        (Failing("post_process") | qpu).submit(job)
    assert caught.value.plugin == "Failing"
    # an error further down keeps its own name when it passes a looping plugin
    open_job = Job.expectation(rotations(), "ZZ", name="vqe")
    with pytest.raises(PluginError, match="plugin Failing failed in compile on job 'vqe'"):
        (ScipyMinimize() | Failing("compile", after=3) | qpu).submit(open_job)


def test_scipy_minimize_records_its_trace_and_passes_other_jobs(
    qpu: LocalQPU, vqe: Any, bell: QuantumCircuit
) -> None:
    counting = Counting()
    stack = ScipyMinimize("COBYLA", restarts=1, restart_options={"rhobeg": 0.3}) | counting | qpu
    open_job = Job.expectation(vqe.ansatz(), vqe.hamiltonian(), name="vqe")
    results = stack.submit(Batch([Job.sample(bell, 64, name="side"), open_job]))
    side, best = results
    assert side.shots == 64
    assert best.value == pytest.approx(vqe.EXACT_ENERGY, abs=1e-4)
    meta = best.meta
    assert len(meta["runs"]) == 2 and meta["nfev"] == len(meta["trace"])
    assert best.parameters == meta["x"] and len(best.parameters) == 4
    theta, value, error = meta["trace"][0]
    assert len(theta) == 4 and error == 0.0 and value > best.value
    assert counting.batches == [1] * (meta["nfev"] + 2)  # the side batch + re-evaluation
    with pytest.raises(JobError, match=r"job 'vqe': x0 has 2 value\(s\) but the circuit has 4"):
        (ScipyMinimize(x0=[0.0, 0.0]) | qpu).submit(open_job)


def test_transpile_maps_circuits_and_observables_to_a_device() -> None:
    device = device_target("line-5")
    resource = AerResource("line", device=device, seed=1)
    try:
        circuit = rotations()
        circuit.cx(0, 1)
        stack = Transpile() | resource
        job = Job.expectation(circuit, "ZZ", parameters=[0.7, 0.2], name="mapped")
        mapped = Transpile().compile(Batch([job]), device)[0]
        assert mapped.circuit.num_qubits == 5
        assert set(mapped.circuit.count_ops()) <= set(device.basis_gates)
        assert mapped.observable is not None and mapped.observable.num_qubits == 5
        exact = LocalQPU(AerResource("ideal")).submit(job).value
        assert stack.submit(job).value == pytest.approx(exact, abs=1e-9)
    finally:
        resource.close()


def test_observable_measurement_estimates_with_standard_errors(qpu: LocalQPU, vqe: Any) -> None:
    theta = [0.3, -0.2, 0.5, 0.1]
    exact = qpu.submit(Job.expectation(vqe.ansatz(), vqe.hamiltonian(), parameters=theta))
    stack = ObservableMeasurement() | Counting() | qpu
    sampled = stack.submit(
        Job.expectation(vqe.ansatz(), vqe.hamiltonian(), shots=20_000, parameters=theta)
    )
    assert sampled.meta["measurement_groups"] == 2 and sampled.meta["exact"] is False
    assert sampled.error is not None and 0 < sampled.error < 0.01
    assert sampled.value == pytest.approx(exact.value, abs=5 * sampled.error)
    constant = stack.submit(Job.expectation(rotations(), {"II": 2.5}, shots=100, parameters=[0, 1]))
    assert constant.value == 2.5 and constant.error == 0.0
    passed = ObservableMeasurement().compile(Batch([Job.expectation(rotations(), "ZZ")]), None)  # type: ignore[arg-type]
    assert passed[0].observable is not None  # shots=None: exact values are left to the QPU


def test_readout_mitigation_improves_bell_fidelity(bell: QuantumCircuit) -> None:
    emulator = EmulatorResource(
        "emulator", device=device_target("line-5"), clock=ScaledClock(1000.0), seed=5
    )
    try:
        base = Transpile() | emulator
        job = Job.sample(bell, 4000, name="bell")

        def fidelity(result: Result) -> float:
            p = result.probabilities()
            return p.get("00", 0.0) + p.get("11", 0.0)

        raw = fidelity(base.submit(job))
        full = ReadoutMitigation(shots=4000)
        mitigated = (Transpile() | full | emulator).submit(job)
        tensored = (Transpile() | ReadoutMitigation(method="tensored") | emulator).submit(job)
        assert mitigated.meta["readout_mitigated"] and mitigated.shots == 4000
        assert raw < 0.975
        assert fidelity(mitigated) > raw + 0.015 and fidelity(mitigated) > 0.985
        assert fidelity(tensored) > raw + 0.01
        wide = QuantumCircuit(6, 6)
        wide.measure(range(6), range(6))
        with pytest.raises(JobError, match=r"job 'w' measures 6 bits.*at most 5"):
            (full | emulator).submit(Job.sample(wide, 10, name="w"))
    finally:
        emulator.close()


# -- generators, futures ---------------------------------------------------------------


def test_job_generators_drive_any_qpu(qpu: LocalQPU, bell: QuantumCircuit) -> None:
    @job_generator
    def steps(shots: int) -> Generator[Job | Batch, Any, float]:
        first = yield Batch([Job.sample(bell, shots), Job.sample(bell, shots)])
        total = sum(r.shots for r in first)
        angle = yield Job.expectation(rotations(), "ZI", parameters=[0, total / 1000 * 3.14159265])
        return float(angle.value)

    result = (Counting() | qpu).submit(steps(500))
    assert result.value == pytest.approx(-1.0, abs=1e-6)

    @job_generator
    def wrong() -> Generator[Any, Any, None]:
        yield "not a job"

    with pytest.raises(JobError, match="generator 'wrong' yielded a str"):
        qpu.submit(wrong())


def test_futures_join_and_cancel(qpu: LocalQPU, vqe: Any) -> None:
    job = Job.expectation(vqe.ansatz(), vqe.hamiltonian(), name="vqe")
    future = (ScipyMinimize() | qpu).submit_async(job)
    result = future.join(timeout=60)
    assert future.status() == "completed" and future.done()
    assert result.value == pytest.approx(vqe.EXACT_ENERGY, abs=1e-3)

    sleepy = Sleepy(0.02)
    loop = ScipyMinimize(maxiter=100_000, tol=1e-14) | sleepy | qpu
    slow = loop.submit_async(job)
    while sleepy.calls < 3:
        time.sleep(0.01)
    assert slow.status() == "running"
    assert slow.cancel()
    with pytest.raises(CancelledError):
        slow.result(timeout=30)
    calls = sleepy.calls
    time.sleep(0.1)
    assert sleepy.calls == calls  # the loop stopped
    assert slow.status() == "cancelled" and not slow.cancel()


# -- the examples, locally -------------------------------------------------------------


def test_vqe_h2_exact_reaches_chemical_accuracy(vqe: Any) -> None:
    report = vqe.main(["--resource", "aer"])
    assert report["exact"] == pytest.approx(vqe.EXACT_ENERGY, abs=1e-9)
    assert report["error_mha"] < CHEMICAL_ACCURACY_MHA


def test_vqe_h2_with_shots_within_statistical_tolerance(vqe: Any) -> None:
    report = vqe.main(["--resource", "aer", "--shots", "20000"])
    assert report["error_mha"] < SHOTS_TOLERANCE_MHA
    assert 0 < report["std_error"] < 0.004


def test_vqe_h2_with_qiskit_estimator_and_scipy() -> None:
    report = example("vqe_h2_primitives").main([])
    assert report["error_mha"] < CHEMICAL_ACCURACY_MHA


def test_qaoa_finds_the_max_cut() -> None:
    qaoa = example("qaoa_maxcut")
    report = qaoa.main(["--p", "2"])
    assert report["best_cut"] == report["max_cut"] == 4
    assert report["expected_cut"] > 3.9
    report = qaoa.main(["--edges", "0-1,1-2,2-0,2-3,3-4", "--p", "1", "--shots", "2000"])
    assert report["best_cut"] == report["max_cut"] == 4


# -- remote = local --------------------------------------------------------------------


class Remote:
    def __init__(self, broker: Broker, store: Store, url: str, token: str) -> None:
        self.broker, self.store, self.url, self.token = broker, store, url, token

    def unfinished(self) -> list[str]:
        return [
            j.job_id for j in self.store.list_jobs(limit=10_000) if j.state in {"queued", "running"}
        ]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    registry = ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 7}),
            ResourceSpec("slow", "emulator", {"noise": False, "time_scale": 1.0}),
        ]
    )
    with Store.open(tmp_path_factory.mktemp("program") / "broker.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        store.upsert_account(AccountRecord("chem", 1.0, None))
        _, token = broker.access.issue(Role.USER, "alice", account="chem")
        port = free_port()
        config = uvicorn.Config(create_app(broker), host="127.0.0.1", port=port, log_level="error")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            yield Remote(broker, store, f"http://127.0.0.1:{port}", token)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            broker.stop()
    registry.close()


def test_remote_vqe_runs_the_same_code(remote: Remote, vqe: Any, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(remote.token + "\n")
    remote_args = [
        "--url",
        remote.url,
        "--token-file",
        str(tmp_path / "token"),
        "--resource",
        "aer",
    ]
    exact = vqe.main(remote_args)
    assert exact["error_mha"] < CHEMICAL_ACCURACY_MHA
    sampled = vqe.main([*remote_args, "--shots", "20000"])
    assert sampled["error_mha"] < SHOTS_TOLERANCE_MHA
    primitives = example("vqe_h2_primitives").main(remote_args)
    assert primitives["error_mha"] < CHEMICAL_ACCURACY_MHA
    assert remote.unfinished() == []


def test_remote_errors_leave_nothing_half_submitted(remote: Remote, vqe: Any) -> None:
    client = connect(remote.url, remote.token)
    with pytest.raises(RemoteError, match=r"unknown resource 'nope'.*known: aer, slow"):
        RemoteQPU(client, "nope")
    qpu = RemoteQPU(client, "aer", stacks="client")  # Failing is not registered: client side
    before = len(remote.store.list_jobs(limit=10_000))
    job = Job.expectation(vqe.ansatz(), vqe.hamiltonian(), name="vqe")
    stack = ScipyMinimize() | ObservableMeasurement() | Failing("compile", after=4) | qpu
    with pytest.raises(PluginError, match="plugin Failing failed in compile on job 'vqe"):
        stack.submit(job.replace(shots=100))
    assert len(remote.store.list_jobs(limit=10_000)) == before + 4  # the four that ran
    too_many = Batch(
        [Job.sample(QuantumCircuit(2, 2), 10), Job.sample(QuantumCircuit(2, 2), 10**7)]
    )
    with pytest.raises(JobError, match="10000000 shots exceed the maximum"):
        qpu.submit(too_many)
    assert len(remote.store.list_jobs(limit=10_000)) == before + 4
    assert remote.unfinished() == []


def test_remote_futures_status_and_cancel(remote: Remote, bell: QuantumCircuit) -> None:
    qpu = RemoteQPU(connect(remote.url, remote.token), "slow")
    future = qpu.submit_async(Job.sample(bell, 50_000, name="long"))  # ~10 s of device time
    deadline = time.monotonic() + 10
    while not future.remote_jobs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.status() in {"queued", "running"}
    assert future.cancel()
    with pytest.raises(CancelledError, match="cancelled"):
        future.join(timeout=30)
    (job_id,) = future.remote_jobs
    deadline = time.monotonic() + 10
    while remote.store.get_job(job_id).state not in {"cancelled", "failed", "completed"}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert remote.store.get_job(job_id).state == "cancelled"
    assert remote.unfinished() == []


def test_client_qpu_is_a_remote_qpu(remote: Remote) -> None:
    from qhpc.program import RemoteQPU

    with qhpc.connect(remote.url, remote.token) as client:
        device = client.qpu("aer")
        assert isinstance(device, RemoteQPU)
        assert device.specs().num_qubits >= 2
