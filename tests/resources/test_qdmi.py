"""The ``qdmi`` resource type against mqt-core's own QDMI devices.

Runs are real: mqt-core's DDSIM device (``mqt.ddsim.default``) simulates every task in
its worker process. Targets are checked against what each device shipped with mqt-core
reports through QDMI itself (the DDSIM device and the ``mqt.sc.*`` superconducting
descriptions), not against numbers written here. Two stand-ins wrap the real device
for what cannot happen here: a device that refuses program lists (allowed by QDMI's
``try_submit_job`` contract, which returns no job then) and a remote device that hangs.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import fmean
from typing import Any

import mqt.core
import pytest
from mqt.core import qdmi
from qiskit.circuit import QuantumCircuit
from qiskit.quantum_info import Statevector

from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import (
    EstimatorResult,
    EstimatorTask,
    PayloadError,
    ResourceConfigError,
    ResourceRegistry,
    ResourceState,
    SamplerResult,
    SamplerTask,
    TaskFailedError,
    TaskStatus,
    UnsupportedPayloadError,
    resource_types,
)
from qhpc.resources.config import parse_toml
from qhpc.resources.estimation import MeasurementPlan
from qhpc.resources.qdmi import QdmiResource, job_status
from qhpc.resources.qdmi_target import GATE_ALIASES, SECONDS_PER_UNIT, resource_state
from qhpc.store import Store

DDSIM = "mqt.ddsim.default"
LIBRARIES = Path(mqt.core.__file__).parent / "lib64"
TOKEN = "tok-3f9a7c-never-print-me"


@pytest.fixture(scope="module")
def ddsim() -> Iterator[QdmiResource]:
    resource = QdmiResource("ddsim", DDSIM)
    yield resource
    resource.close()


@pytest.fixture
def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def slow_circuit(width: int = 22, layers: int = 20) -> QuantumCircuit:
    """Seconds of DDSIM work: entangling layers of rotations over ``width`` qubits."""
    circuit = QuantumCircuit(width, width)
    circuit.h(range(width))
    for _ in range(layers):
        for q in range(width - 1):
            circuit.cx(q, q + 1)
            circuit.rz(0.3, q + 1)
    circuit.measure(range(width), range(width))
    return circuit


# -- runs ----------------------------------------------------------------------------------
def test_a_bell_pair_runs_on_the_ddsim_device(ddsim: QdmiResource, bell: QuantumCircuit) -> None:
    result = ddsim.run(SamplerTask((bell,), shots=1000), timeout=60)
    assert isinstance(result, SamplerResult)
    (counts,) = result.circuits
    assert set(counts.counts) == {"00", "11"}  # entangled: never 01 or 10
    assert counts.shots == 1000 and sum(counts.counts.values()) == 1000
    assert min(counts.counts.values()) > 350  # 50/50 up to sampling noise
    assert result.metadata["device"] == DDSIM and len(result.metadata["jobs"]) == 1


def test_several_circuits_go_as_one_job_and_keep_their_order_and_bit_order(
    ddsim: QdmiResource,
) -> None:
    circuits = []
    for ones in ((0,), (2,), (0, 1)):
        circuit = QuantumCircuit(3, 3)
        circuit.x(list(ones))
        circuit.measure(range(3), range(3))
        circuits.append(circuit)
    task_id = ddsim.task_start(SamplerTask(tuple(circuits), shots=7, memory=True))
    assert "+" not in task_id  # one job holds every program
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    result = ddsim.task_result(task_id)
    assert isinstance(result, SamplerResult)
    # classical bit 0 rightmost, as everywhere in qhpc
    assert [c.counts for c in result.circuits] == [{"001": 7}, {"100": 7}, {"011": 7}]
    assert result.circuits[2].memory == ("011",) * 7


def test_a_partly_measured_register_reads_zero_where_nothing_was_measured(
    ddsim: QdmiResource,
) -> None:
    circuit = QuantumCircuit(3, 3)
    circuit.x([1, 2])
    circuit.measure(1, 1)
    result = ddsim.run(SamplerTask((circuit,), shots=5), timeout=60)
    assert isinstance(result, SamplerResult)
    assert result.circuits[0].counts == {"010": 5}


def test_a_dynamic_circuit_goes_as_openqasm_3(ddsim: QdmiResource) -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(1)
    circuit.measure(1, 1)
    task_id = ddsim.task_start(SamplerTask((circuit,), shots=300))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    result = ddsim.task_result(task_id)
    assert isinstance(result, SamplerResult)
    assert set(result.circuits[0].counts) == {"00", "11"}  # bit 1 follows bit 0
    assert "QASM3" in ddsim.task_logs(task_id)


def test_a_seed_is_accepted_and_said_to_be_unused(
    ddsim: QdmiResource, bell: QuantumCircuit
) -> None:
    """QDMI has no seed parameter; a seeded task runs, and its log says the seed was not
    used rather than pretending to reproduce."""
    task_id = ddsim.task_start(SamplerTask((bell,), shots=10, seed=5))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    assert "seed not used" in ddsim.task_logs(task_id)


def test_estimator_tasks_are_sampled_in_measurement_bases(
    ddsim: QdmiResource, bell: QuantumCircuit
) -> None:
    state = bell.remove_final_measurements(inplace=False)
    task = EstimatorTask.create(state, ["ZZ", "XX", "YY", "ZI", "II"], shots=4000)
    result = ddsim.run(task, timeout=60)
    assert isinstance(result, EstimatorResult)
    (values,), (errors,) = result.values, result.std_errors
    # Bell state: <ZZ> = <XX> = 1, <YY> = -1 exactly (every shot agrees), <ZI> = 0
    assert values[:3] == (1.0, 1.0, -1.0) and values[4] == 1.0
    assert abs(values[3]) < 5 * errors[3] and 0 < errors[3] < 0.05
    assert result.shots == 4000 and result.metadata["exact"] is False


def test_measurement_rotations_are_translated_into_the_device_gates(
    bell: QuantumCircuit,
) -> None:
    """The basis rotations qhpc adds for an estimator (h, sdg) are not IQM Garnet's gates
    (r, cz): they are translated to them, the state measured unchanged."""
    garnet = QdmiResource("garnet", "mqt.sc.iqm.garnet")
    state = bell.remove_final_measurements(inplace=False)
    plan = MeasurementPlan.build(EstimatorTask.create(state, ["XX", "YY"]))
    circuits = plan.circuits()
    native = garnet._native(circuits)
    allowed = set(garnet.target().basis_gates) | {"measure", "barrier"}
    for ours, theirs in zip(circuits, native, strict=True):
        assert {i.operation.name for i in theirs.data} <= allowed
        assert "h" in {i.operation.name for i in ours.data}
        before = Statevector(ours.remove_final_measurements(inplace=False))
        assert before.equiv(Statevector(theirs.remove_final_measurements(inplace=False)))
        assert theirs.num_clbits == ours.num_clbits


def test_identity_only_observables_need_no_job(ddsim: QdmiResource) -> None:
    task = EstimatorTask.create(QuantumCircuit(1), {"I": 2.5})
    task_id = ddsim.task_start(task)
    assert ddsim.task_status(task_id) is TaskStatus.COMPLETED
    result = ddsim.task_result(task_id)
    assert isinstance(result, EstimatorResult) and result.values == ((2.5,),)


BELL_QIR = """%Qubit = type opaque
%Result = type opaque

define i64 @main() #0 {
entry:
  call void @__quantum__rt__initialize(i8* null)
  call void @__quantum__qis__h__body(%Qubit* null)
  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 2 to %Qubit*))
  call void @__quantum__qis__cnot__body(%Qubit* null, %Qubit* inttoptr (i64 1 to %Qubit*))
  call void @__quantum__qis__mz__body(%Qubit* null, %Result* null)
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 1 to %Qubit*), %Result* inttoptr (i64 1 to %Result*))
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 2 to %Qubit*), %Result* inttoptr (i64 2 to %Result*))
  call void @__quantum__rt__array_record_output(i64 3, i8* null)
  call void @__quantum__rt__result_record_output(%Result* null, i8* null)
  call void @__quantum__rt__result_record_output(%Result* inttoptr (i64 1 to %Result*), i8* null)
  call void @__quantum__rt__result_record_output(%Result* inttoptr (i64 2 to %Result*), i8* null)
  ret i64 0
}

declare void @__quantum__rt__initialize(i8*)
declare void @__quantum__qis__h__body(%Qubit*)
declare void @__quantum__qis__x__body(%Qubit*)
declare void @__quantum__qis__cnot__body(%Qubit*, %Qubit*)
declare void @__quantum__qis__mz__body(%Qubit*, %Result* writeonly) #1
declare void @__quantum__rt__array_record_output(i64, i8*)
declare void @__quantum__rt__result_record_output(%Result*, i8*)

attributes #0 = { "entry_point" "output_labeling_schema" "qir_profiles"="PROFILE" "required_num_qubits"="3" "required_num_results"="3" }
attributes #1 = { "irreversible" }

!llvm.module.flags = !{!0, !1, !2, !3}
!0 = !{i32 1, !"qir_major_version", i32 1}
!1 = !{i32 7, !"qir_minor_version", i32 0}
!2 = !{i32 1, !"dynamic_qubit_management", i1 false}
!3 = !{i32 1, !"dynamic_result_management", i1 false}
"""  # noqa: E501 - LLVM IR lines as a QIR generator writes them


@pytest.mark.parametrize(
    ("profile", "format_name"),
    [("base_profile", "QIR_BASE_STRING"), ("adaptive_profile", "QIR_ADAPTIVE_STRING")],
)
def test_a_circuit_read_from_qir_runs_its_qir_text(
    ddsim: QdmiResource, profile: str, format_name: str
) -> None:
    # The circuit itself measures all zeros; the QIR (Bell pair on 0-1, X on 2) must be
    # what ran, which only its counts can show.
    circuit = QuantumCircuit(3, 3)
    circuit.measure(range(3), range(3))
    circuit.metadata = {
        "qhpc_qir": BELL_QIR.replace("PROFILE", profile),
        "qhpc_qir_entry_point": "main",
    }
    task_id = ddsim.task_start(SamplerTask((circuit,), shots=200))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    result = ddsim.task_result(task_id)
    assert isinstance(result, SamplerResult)
    assert set(result.circuits[0].counts) == {"100", "111"}  # result 0 rightmost
    assert format_name in ddsim.task_logs(task_id)


def test_oversized_qir_is_refused_before_it_reaches_the_device(ddsim: QdmiResource) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    circuit.metadata = {"qhpc_qir": "; padding\n" * 500_000}
    with pytest.raises(PayloadError, match="QIR is larger than"):
        ddsim.task_start(SamplerTask((circuit,), shots=1))


def test_a_device_program_failure_fails_the_task_with_a_log_line(ddsim: QdmiResource) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    circuit.metadata = {
        "qhpc_qir": "define i64 @main() #0 {\n  this is not LLVM IR\n}\n",
        "qhpc_qir_entry_point": "main",
    }
    task_id = ddsim.task_start(SamplerTask((circuit,), shots=1))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.FAILED
    assert "reported the job FAILED" in ddsim.task_logs(task_id).splitlines()[-1]
    with pytest.raises(TaskFailedError, match="failed"):
        ddsim.task_result(task_id)


def test_cancel_stops_a_running_and_a_queued_job(ddsim: QdmiResource, bell: QuantumCircuit) -> None:
    running = ddsim.task_start(SamplerTask((slow_circuit(),), shots=100_000))
    queued = ddsim.task_start(SamplerTask((bell,), shots=10))
    deadline = time.monotonic() + 30
    while ddsim.task_status(running) is not TaskStatus.RUNNING:
        assert time.monotonic() < deadline, "the slow job never started"
        time.sleep(0.01)
    assert ddsim.status().state is ResourceState.BUSY and ddsim.status().busy
    assert ddsim.task_status(queued) is TaskStatus.QUEUED  # DDSIM runs one job at a time
    ddsim.task_stop(queued)
    ddsim.task_stop(running)
    assert ddsim.task_wait(running, timeout=30) is TaskStatus.CANCELLED
    assert ddsim.task_wait(queued, timeout=30) is TaskStatus.CANCELLED
    with pytest.raises(TaskFailedError, match="cancelled"):
        ddsim.task_result(running)
    assert ddsim.status().state is ResourceState.IDLE


def test_a_task_of_an_earlier_process_cannot_be_stopped_on_ddsim(ddsim: QdmiResource) -> None:
    """DDSIM cannot look jobs up by id; the broker's orphan stop gets a clear error."""
    with pytest.raises(TaskFailedError, match=r"finding the job failed: .*Not supported"):
        ddsim.task_stop("123456")


class _OneProgramPerJob:
    """The real DDSIM device, refusing program lists as QDMI lets a device do
    (``try_submit_job`` returns None); everything else goes to the device."""

    def __init__(self, device: qdmi.Device) -> None:
        self._device = device

    def try_submit_job(self, programs: Any, *args: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)


def test_a_device_that_takes_one_program_per_job_gets_one_job_per_circuit(
    bell: QuantumCircuit,
) -> None:
    resource = QdmiResource("single", DDSIM)
    resource.device = _OneProgramPerJob(resource.device)  # type: ignore[assignment]
    one = QuantumCircuit(2, 2)
    one.x(0)
    one.measure([0, 1], [0, 1])
    task_id = resource.task_start(SamplerTask((bell, one), shots=50))
    assert task_id.count("+") == 1
    assert resource.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    result = resource.task_result(task_id)
    assert isinstance(result, SamplerResult)
    assert set(result.circuits[0].counts) <= {"00", "11"}
    assert result.circuits[1].counts == {"01": 50}
    assert len(result.metadata["jobs"]) == 2


def test_payloads_over_the_limits_are_refused(bell: QuantumCircuit) -> None:
    resource = QdmiResource("small", DDSIM, max_shots=100, max_circuits=2)
    with pytest.raises(PayloadError, match="shots=101 exceeds"):
        resource.task_start(SamplerTask((bell,), shots=101))
    with pytest.raises(PayloadError, match="3 circuits exceed"):
        resource.task_start(SamplerTask((bell, bell, bell), shots=1))


def test_a_device_that_runs_nothing_refuses_tasks_naming_its_formats(bell: QuantumCircuit) -> None:
    resource = QdmiResource("garnet", "mqt.sc.iqm.garnet")
    with pytest.raises(UnsupportedPayloadError, match="takes no program format"):
        resource.task_start(SamplerTask((bell,), shots=1))


# -- targets and states --------------------------------------------------------------------
def _expected_seconds(device: qdmi.Device) -> float | None:
    unit = device.duration_unit()
    if unit not in SECONDS_PER_UNIT:
        return None
    return SECONDS_PER_UNIT[unit] * (device.duration_scale_factor() or 1.0)


def _placement_mean(op: qdmi.Device.Operation, what: str) -> float | None:
    if op.qubits_num() == 2 and op.site_pairs():
        placements = [list(p) for p in op.site_pairs() or []]
    elif op.qubits_num() == 1 and op.sites():
        placements = [[s] for s in op.sites() or []]
    else:
        value = getattr(op, what)()
        return None if value is None else float(value)
    values = [getattr(op, what)(sites=p) for p in placements]
    known = [float(v) for v in values if v is not None]
    return fmean(known) if known else None


@pytest.mark.parametrize("device_id", qdmi.device_ids())
def test_the_target_is_what_the_device_reports(device_id: str) -> None:
    device = qdmi.open_device(device_id)
    target = QdmiResource("dev", device_id).target()
    assert target.num_qubits == device.qubits_num()
    coupling = device.coupling_map()
    expected_map = None if coupling is None else tuple((a.index(), b.index()) for a, b in coupling)
    assert target.coupling_map == expected_map
    names = {op.name() for op in device.operations()}
    assert set(target.extra["operations"]) == names
    assert target.extra["program_formats"] == [f.name for f in device.supported_program_formats()]
    # every basis gate is one of the device's operations (under Qiskit's name for it)
    qiskit_names = {GATE_ALIASES.get(n.lower(), n.lower()) for n in names}
    assert set(target.basis_gates) <= qiskit_names
    assert "measure" not in target.basis_gates and target.basis_gates
    seconds = _expected_seconds(device)
    for op in device.operations():
        facts = target.extra["operations"][op.name()]
        assert facts["qubits"] == op.qubits_num()
        duration, fidelity = _placement_mean(op, "duration"), _placement_mean(op, "fidelity")
        if duration is None or seconds is None:
            assert facts["duration"] is None
        else:
            assert facts["duration"] == pytest.approx(duration * seconds)
        if fidelity is None:
            assert facts["error"] is None
        else:
            assert facts["error"] == pytest.approx(1 - fidelity, abs=1e-12)
    measure = target.extra["operations"].get("measure")
    if measure is not None and measure["error"] is not None:
        assert target.readout_error == pytest.approx(measure["error"])
    if device.qubits_num() <= 4096 and seconds is not None:
        t1 = [s.t1() for s in device.regular_sites() if s.t1() is not None]
        assert target.t1 == (pytest.approx(fmean(t1) * seconds) if t1 else None)


def test_superconducting_figures_are_the_worst_gate_of_each_kind() -> None:
    device = qdmi.open_device("mqt.sc.default")
    target = QdmiResource("sc", "mqt.sc.default").target()
    ops = target.extra["operations"]
    two = [ops[op.name()] for op in device.operations() if op.qubits_num() == 2]
    assert two and target.two_qubit_duration == max(o["duration"] for o in two)
    assert target.two_qubit_error == max(o["error"] for o in two)
    # the figures feed qhpc's own Qiskit target (transpiling for the device)
    qiskit_target = target.to_qiskit()
    assert qiskit_target.num_qubits == device.qubits_num()


@pytest.mark.parametrize("status", list(qdmi.Device.Status))
def test_every_qdmi_device_status_has_its_resource_state(status: qdmi.Device.Status) -> None:
    assert resource_state(status).value == status.name.lower()


def test_every_qdmi_job_status_maps_to_a_task_status() -> None:
    mapped = {s.name: job_status(s) for s in qdmi.Job.Status}
    assert mapped["DONE"] is TaskStatus.COMPLETED and mapped["CANCELED"] is TaskStatus.CANCELLED
    assert mapped["FAILED"] is TaskStatus.FAILED and mapped["RUNNING"] is TaskStatus.RUNNING
    assert {mapped[n] for n in ("CREATED", "SUBMITTED", "QUEUED")} == {TaskStatus.QUEUED}


class _Hanging:
    """The real device whose status() never answers, as a remote device's can hang."""

    def __init__(self, device: qdmi.Device, release: threading.Event) -> None:
        self._device, self._release = device, release

    def status(self) -> None:
        self._release.wait(30)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)


def test_a_hanging_device_reads_offline_within_the_timeout() -> None:
    resource = QdmiResource("slow", DDSIM, timeout=0.3)
    release = threading.Event()
    resource.device = _Hanging(resource.device, release)  # type: ignore[assignment]
    try:
        started = time.monotonic()
        status = resource.status()
        assert time.monotonic() - started < 2
        assert status.state is ResourceState.OFFLINE and "no answer within 0.3 s" in status.reason
    finally:
        release.set()


# -- configuration and bad input -----------------------------------------------------------
def test_an_unknown_device_id_lists_the_ones_that_exist() -> None:
    with pytest.raises(ResourceConfigError) as caught:
        QdmiResource("x", "mqt.nope")
    assert caught.value.key == "device" and "no QDMI device 'mqt.nope'" in str(caught.value)
    for known in qdmi.device_ids():
        assert known in str(caught.value)


def test_a_driver_must_be_a_qdmi_driver_library(tmp_path: Path) -> None:
    text = tmp_path / "driver.so"
    text.write_text("not a library")
    cases = [
        (str(text), "is not a shared library"),
        ("relative/libdriver.so", "must be an absolute path"),
        (str(tmp_path / "missing.so"), "cannot read the QDMI driver"),
        (str(tmp_path), "cannot read the QDMI driver .*: Is a directory"),
        # a real shared library that is not a driver (a device library)
        (str(LIBRARIES / "libmqt-core-qdmi-ddsim-device.so"), "did not open: .*missing symbol"),
    ]
    for driver, message in cases:
        with pytest.raises(ResourceConfigError, match=message) as caught:
            QdmiResource("x", DDSIM, driver=driver)
        assert caught.value.key == "driver"
    resource = QdmiResource("x", DDSIM, driver=str(LIBRARIES / "libmqt-core-qdmi-driver.so"))
    assert resource.target().extra["device_id"] == DDSIM


def _token_file(tmp_path: Path, mode: int, text: str = TOKEN + "\n") -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_token_file_is_read_and_its_token_reaches_the_session(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = _token_file(tmp_path, 0o600)
    resource = QdmiResource("x", DDSIM, token_file=str(path))
    # DDSIM takes no token and says so: proof the driver was handed one
    assert "Session parameter TOKEN not supported" in "".join(capfd.readouterr())
    shown = f"{resource!r} {resource.metadata()} {resource.target().to_dict()}"
    assert TOKEN not in shown and str(path) in shown
    group_readable = _token_file(tmp_path, 0o640)  # one rule for credential files: no group
    with pytest.raises(ResourceConfigError, match="open to other users"):
        QdmiResource("x", DDSIM, token_file=str(group_readable))


class _Quoting:
    """The real device whose calls fail quoting the session token, as a careless
    driver's error might."""

    def __init__(self, device: qdmi.Device) -> None:
        self._device = device

    def status(self) -> None:
        raise RuntimeError(f"authentication failed for token {TOKEN}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._device, name)


def test_a_token_a_device_quotes_is_redacted(tmp_path: Path) -> None:
    resource = QdmiResource("x", DDSIM, token_file=str(_token_file(tmp_path, 0o600)))
    resource.device = _Quoting(resource.device)  # type: ignore[assignment]
    status = resource.status()
    assert status.state is ResourceState.OFFLINE
    assert "token <redacted>" in status.reason and TOKEN not in status.reason


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        (0o644, TOKEN, "open to other users .*0644.* chmod 600"),
        (0o602, TOKEN, "open to other users"),
        (0o600, "  \n", "is empty"),
        (0o600, "x" * (64 * 1024 + 1), "larger than 65536 bytes"),
    ],
)
def test_bad_token_files_are_refused_without_showing_the_token(
    tmp_path: Path, mode: int, text: str, message: str
) -> None:
    path = _token_file(tmp_path, mode, text)
    with pytest.raises(ResourceConfigError, match=message) as caught:
        QdmiResource("x", DDSIM, token_file=str(path))
    assert caught.value.key == "token_file" and TOKEN not in str(caught.value)


def test_missing_or_unreadable_token_files_are_named(tmp_path: Path) -> None:
    for path, message in (
        (tmp_path / "absent", "cannot read the token file .*absent: No such file"),
        (tmp_path, "cannot read the token file .*: Is a directory"),
        (Path("token.txt"), "must be an absolute path"),
    ):
        with pytest.raises(ResourceConfigError, match=message):
            QdmiResource("x", DDSIM, token_file=str(path))
    unreadable = _token_file(tmp_path, 0o000)
    if os.geteuid() != 0:  # root reads any file: the check is the kernel's
        with pytest.raises(ResourceConfigError, match="Permission denied"):
            QdmiResource("x", DDSIM, token_file=str(unreadable))
    assert stat.S_IMODE(unreadable.stat().st_mode) == 0


@pytest.mark.parametrize("key", ["token", "password", "api_key", "Token"])
def test_an_inline_credential_in_the_resources_file_is_refused(key: str) -> None:
    text = f'[resources.q]\ntype = "qdmi"\ndevice = "{DDSIM}"\n{key} = "{TOKEN}"\n'
    with pytest.raises(ResourceConfigError, match="token_file") as caught:
        parse_toml(text, "resources.toml")
    assert caught.value.key == key and caught.value.resource == "q"
    assert TOKEN not in str(caught.value)


def test_resources_file_errors_name_the_key() -> None:
    with pytest.raises(ResourceConfigError, match=r"'device'.* is required"):
        parse_toml('[resources.q]\ntype = "qdmi"\n', "resources.toml")
    with pytest.raises(ResourceConfigError, match="unknown option for type 'qdmi'"):
        parse_toml(f'[resources.q]\ntype = "qdmi"\ndevice = "{DDSIM}"\nshots = 3\n', "r.toml")
    specs, _ = parse_toml('[resources.q]\ntype = "qdmi"\ndevice = "mqt.nope"\n', "r.toml")
    with (
        ResourceRegistry(specs) as registry,
        pytest.raises(ResourceConfigError, match=r"mqt\.nope"),
    ):
        registry.get("q")


def test_qdmi_is_a_built_in_type_from_the_source_tree() -> None:
    assert "qdmi" in resource_types()


# -- through the broker --------------------------------------------------------------------
def test_a_task_runs_through_a_broker_configured_with_a_qdmi_resource(
    tmp_path: Path, bell: QuantumCircuit
) -> None:
    token = _token_file(tmp_path, 0o600)
    text = (
        f'[resources.munich]\ntype = "qdmi"\ndevice = "{DDSIM}"\n'
        f'token_file = "{token}"\nmax_shots = 5000\ntimeout = 20\n'
    )
    specs, pools = parse_toml(text, "resources.toml")
    with Store.open(tmp_path / "broker.db") as store, ResourceRegistry(specs, pools) as registry:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        try:
            job = broker.submit(
                user="alice", account="chem", resource="munich",
                payloads=[SamplerTask((bell,), shots=300)],
            )  # fmt: skip
            (task,) = store.tasks_of_job(job.job_id)
            assert broker.wait_task(task.task_id, timeout=60).state == "completed"
            result = broker.task_result(task.task_id)
            assert isinstance(result, SamplerResult)
            assert sum(result.circuits[0].counts.values()) == 300
            assert set(result.circuits[0].counts) <= {"00", "11"}
            with pytest.raises(PayloadError, match="shots=6000 exceeds"):
                broker.submit(
                    user="alice", account="chem", resource="munich",
                    payloads=[SamplerTask((bell,), shots=6000)],
                )  # fmt: skip
        finally:
            broker.stop()


def test_qir_read_by_qhpc_is_passed_through_to_a_qdmi_device_as_sent(ddsim: QdmiResource) -> None:
    """The two halves meet: a program loaded from QIR (qhpc.resources.qir) runs on a
    device that takes QIR as the QIR text. Only the counts can tell: the QIR prepares
    a Bell pair and flips qubit 2."""
    from qhpc.resources import QIR_METADATA, load_circuits

    (circuit,) = load_circuits(BELL_QIR.replace("PROFILE", "base_profile"))
    assert "__quantum__qis__h__body" in circuit.metadata[QIR_METADATA]
    task_id = ddsim.task_start(SamplerTask((circuit,), shots=300))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    result = ddsim.task_result(task_id)
    assert isinstance(result, SamplerResult)
    assert set(result.circuits[0].counts) == {"100", "111"}
    assert "QIR_BASE_STRING" in ddsim.task_logs(task_id)


def test_older_qir_with_a_void_entry_point_runs_as_the_circuit_read_from_it(
    ddsim: QdmiResource,
) -> None:
    """pyqir 0.12's builder writes ``void`` entry points, which DDSIM refuses (QIR 2.0
    wants ``i64``): the circuit read from the same instructions runs as OpenQASM."""
    from qhpc.resources import load_circuits
    from qir_samples import bell_module

    (circuit,) = load_circuits(bell_module().bitcode())
    task_id = ddsim.task_start(SamplerTask((circuit,), shots=300))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    result = ddsim.task_result(task_id)
    assert isinstance(result, SamplerResult)
    assert set(result.circuits[0].counts) <= {"00", "11"}
    assert "QASM" in ddsim.task_logs(task_id)


#: two entry points: ``first`` flips qubit 0, ``second`` qubit 1 (both measured)
TWO_ENTRIES_QIR = """%Qubit = type opaque
%Result = type opaque

define i64 @first() #0 {
entry:
  call void @__quantum__qis__x__body(%Qubit* null)
  call void @__quantum__qis__mz__body(%Qubit* null, %Result* null)
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 1 to %Qubit*), %Result* inttoptr (i64 1 to %Result*))
  ret i64 0
}

define i64 @second() #0 {
entry:
  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 1 to %Qubit*))
  call void @__quantum__qis__mz__body(%Qubit* null, %Result* null)
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 1 to %Qubit*), %Result* inttoptr (i64 1 to %Result*))
  ret i64 0
}

declare void @__quantum__qis__x__body(%Qubit*)
declare void @__quantum__qis__mz__body(%Qubit*, %Result* writeonly) #1

attributes #0 = { "entry_point" "qir_profiles"="base_profile" "required_num_qubits"="2" "required_num_results"="2" }
attributes #1 = { "irreversible" }
"""  # noqa: E501 - LLVM IR lines as a QIR generator writes them


def test_each_entry_point_of_a_module_with_several_runs_as_its_own_circuit(
    ddsim: QdmiResource,
) -> None:
    """Every circuit of a two-entry module carries the whole module; sent as QIR, a
    device would have to pick an entry itself (DDSIM refuses: "Multiple QIR entry
    points"). Each circuit runs as the OpenQASM of its own entry point instead."""
    from qhpc.resources import QIR_ENTRY_METADATA, load_circuits

    first, second = load_circuits(TWO_ENTRIES_QIR)
    assert (first.metadata[QIR_ENTRY_METADATA], second.metadata[QIR_ENTRY_METADATA]) == (
        "first",
        "second",
    )
    task_id = ddsim.task_start(SamplerTask((first, second), shots=50))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED, ddsim.task_logs(task_id)
    result = ddsim.task_result(task_id)
    assert isinstance(result, SamplerResult)
    assert [c.counts for c in result.circuits] == [{"01": 50}, {"10": 50}]  # result 0 rightmost
    assert "QIR" not in ddsim.task_logs(task_id)


@pytest.mark.parametrize("entry", [None, "other"], ids=["no-entry", "another-function"])
def test_qir_whose_entry_point_is_not_the_circuits_runs_the_circuit_as_openqasm(
    ddsim: QdmiResource, entry: str | None
) -> None:
    """The QIR defines ``main``; a circuit that names another entry point (or none)
    runs as its own gates (measure only: all zeros), not as the QIR (a Bell pair)."""
    circuit = QuantumCircuit(3, 3)
    circuit.measure(range(3), range(3))
    metadata = {"qhpc_qir": BELL_QIR.replace("PROFILE", "base_profile")}
    if entry is not None:
        metadata["qhpc_qir_entry_point"] = entry
    circuit.metadata = metadata
    task_id = ddsim.task_start(SamplerTask((circuit,), shots=40))
    assert ddsim.task_wait(task_id, timeout=60) is TaskStatus.COMPLETED
    result = ddsim.task_result(task_id)
    assert isinstance(result, SamplerResult)
    assert result.circuits[0].counts == {"000": 40}
    assert "QASM" in ddsim.task_logs(task_id)


@pytest.mark.parametrize(
    ("define", "format_name"),
    [
        ("define i64 @main() #0 {", "QIR_BASE_STRING"),
        ('define i64 @"main"() #0 {', "QIR_BASE_STRING"),  # LLVM's quoted form, same name
        ("define dso_local noundef i64 @main() #0 {", "QIR_BASE_STRING"),
        ("define\n  i64\n  @main() #0 {", "QIR_BASE_STRING"),  # LLVM allows newlines
        ("define void @main() #0 {", "QASM2"),  # pre-2.0 QIR: DDSIM wants an exit code
        ('define i64 @"ma\\69n"() #0 {', "QASM2"),  # escaped: not compared, so not trusted
        ("define i64 @main2() #0 {", "QASM2"),  # not the circuit's entry point
        ("define i64 @helper() {\n  ret i64 0\n}\ndefine i64 @main() #0 {", "QASM2"),
        ("declare void @f() define i64 @g() {\n ret i64 0\n}\ndefine i64 @main() #0 {", "QASM2"),
    ],
)
def test_qir_goes_to_the_device_only_when_its_one_function_is_the_circuits_entry_point(
    define: str, format_name: str
) -> None:
    """What :func:`build_programs` sends (no device needed: it only chooses). A module
    that defines any other function could make a device run something else than the
    circuit qhpc checked, accounted and estimated; it goes as the circuit's OpenQASM."""
    from qhpc.resources.qdmi_programs import build_programs

    circuit = QuantumCircuit(3, 3)
    circuit.measure(range(3), range(3))
    text = BELL_QIR.replace("PROFILE", "base_profile").replace("define i64 @main() #0 {", define)
    circuit.metadata = {"qhpc_qir": text, "qhpc_qir_entry_point": "main"}
    formats = [qdmi.ProgramFormat.QASM2, qdmi.ProgramFormat.QIR_BASE_STRING]
    programs = build_programs([circuit], formats, "dev")
    assert programs.format.name == format_name
    assert (programs.texts == (text,)) == format_name.startswith("QIR")
