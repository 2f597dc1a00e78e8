"""The QRMI adapter against qrmi's own types; no vendor is reachable from here.

Live calls are replaced by two stand-ins: local sockets (refused / silent) to time
``status()``, and a fake inner resource that answers like qrmi does, so the task path
(payload → id → status → result decoding) runs end to end.
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import qrmi
from qiskit import qasm3
from qiskit.circuit import Parameter, ParameterVector, QuantumCircuit
from qiskit.primitives import StatevectorEstimator, StatevectorSampler
from qiskit.primitives.containers import BitArray, DataBin, PrimitiveResult, PubResult
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.quantum_info import Operator, SparsePauliOp, Statevector

from qhpc.resources.base import ResourceState, TaskStatus
from qhpc.resources.errors import (
    PayloadError,
    ResourceConfigError,
    TaskFailedError,
    TaskNotFinishedError,
    UnknownTaskError,
    UnsupportedPayloadError,
)
from qhpc.resources.payload import EstimatorResult, EstimatorTask, SamplerResult, SamplerTask
from qhpc.resources.qrmi import (
    QRMI_TYPES,
    QrmiResource,
    load_qrmi_config,
    required_keys,
)

SECRET = "s3cr3t-api-key-do-not-print"
IBM_ENV = {
    "QRMI_IBM_QS_ENDPOINT": "https://127.0.0.1:9/",
    "QRMI_IBM_QS_IAM_ENDPOINT": "https://127.0.0.1:9/",
    "QRMI_IBM_QS_IAM_APIKEY": SECRET,
    "QRMI_IBM_QS_SERVICE_CRN": "crn:v1:bluemix:public:quantum-computing:us-east:a/secret-crn",
}
# Values qrmi parses (a numeric job uid, a base64 "user:password" key), for each type.
VALID_ENV = {
    "ibm-quantum-system": IBM_ENV,
    "pasqal-local": {"QRMI_WARDEN_URL": "http://127.0.0.1:9/", "QRMI_JOB_UID": "1",
                     "QRMI_JOB_ID": "1"},
    "alice-bob-felis": {"QRMI_AB_FELIS_API_KEY": base64.b64encode(b"u:p").decode(),
                        "QRMI_AB_FELIS_BASE_ENDPOINT": "http://127.0.0.1:9/"},
}  # fmt: skip


def _env(qrmi_type: str) -> dict[str, str]:
    return VALID_ENV.get(qrmi_type) or {k: "https://127.0.0.1:9/" for k in required_keys(qrmi_type)}


@pytest.fixture
def ibm() -> QrmiResource:
    return QrmiResource("ibm_test", "ibm-quantum-system", IBM_ENV, timeout=5)


@pytest.fixture
def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def _input(payload: Any) -> dict[str, Any]:
    assert isinstance(payload, qrmi.Payload.QiskitPrimitive)
    body: dict[str, Any] = json.loads(payload.input)
    return body


# -- types and configuration ---------------------------------------------------------------


def test_type_table_covers_qrmi_and_its_config_names(tmp_path: Path) -> None:
    members = {getattr(qrmi.ResourceType, n) for n in dir(qrmi.ResourceType) if n[0].isupper()}
    assert set(QRMI_TYPES.values()) == members
    resources = [{"name": f"r{i}", "type": t, "environment": {}} for i, t in enumerate(QRMI_TYPES)]
    path = tmp_path / "qrmi_config.json"
    path.write_text(json.dumps({"resources": resources}))
    loaded = qrmi.Config.load(str(path)).resource_map
    for index, (type_str, member) in enumerate(QRMI_TYPES.items()):
        assert loaded[f"r{index}"].resource_type == member, type_str


@pytest.mark.parametrize("qrmi_type", sorted(set(QRMI_TYPES) - {"oqtopus"}))
def test_required_keys_are_exactly_what_qrmi_asks_for(qrmi_type: str) -> None:
    env = _env(qrmi_type)
    assert set(env) == set(required_keys(qrmi_type))
    QrmiResource("dev", qrmi_type, env)
    for key in required_keys(qrmi_type):
        partial = {k: v for k, v in env.items() if k != key}
        with pytest.raises(ResourceConfigError) as info:
            QrmiResource("dev", qrmi_type, partial)
        assert (info.value.resource, info.value.key) == ("dev", key)


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(ResourceConfigError) as info:
        QrmiResource("dev", "ibm-quantum", {})
    assert (info.value.resource, info.value.key) == ("dev", "type")
    assert "ibm-quantum-system" in str(info.value) and "oqtopus" in str(info.value)
    with pytest.raises(ResourceConfigError):
        required_keys("nope")


def test_secrets_stay_out_of_metadata_repr_and_errors(ibm: QrmiResource) -> None:
    meta = ibm.metadata()
    assert meta["type"] == "qrmi" and meta["qrmi_type"] == "ibm-quantum-system"
    assert meta["variables"] == sorted(IBM_ENV)
    for text in (json.dumps(meta), repr(ibm)):
        assert SECRET not in text and "secret-crn" not in text
    # qrmi quotes the bad value in this message; the adapter must not.
    env = {"QRMI_WARDEN_URL": "http://127.0.0.1:9/", "QRMI_JOB_UID": SECRET, "QRMI_JOB_ID": "1"}
    with pytest.raises(ResourceConfigError) as info:
        QrmiResource("local", "pasqal-local", env)
    assert info.value.key == "QRMI_JOB_UID" and SECRET not in str(info.value)


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "qrmi_config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_config_file_with_ibm_and_pasqal(tmp_path: Path) -> None:
    path = _write(tmp_path, {"resources": [
        {"name": "ibm_torino", "type": "ibm-quantum-system", "environment": IBM_ENV},
        {"name": "FRESNEL", "type": "pasqal-cloud",
         "environment": {"QRMI_PASQAL_CLOUD_PROJECT_ID": "p", "QRMI_PASQAL_CLOUD_AUTH_TOKEN": "t"}},
    ]})  # fmt: skip
    ibm, pasqal = load_qrmi_config(path)
    assert (ibm.name, ibm.qrmi_type) == ("ibm_torino", "ibm-quantum-system")
    assert (pasqal.name, pasqal.qrmi_type) == ("FRESNEL", "pasqal-cloud")
    assert set(qrmi.Config.load(str(path)).resource_map) == {"ibm_torino", "FRESNEL"}


@pytest.mark.parametrize(
    ("resources", "resource", "key"),
    [
        ([{"name": "ibm_x", "type": "ibm-quantum-system",
           "environment": {k: v for k, v in IBM_ENV.items() if "APIKEY" not in k}}],
         "ibm_x", "QRMI_IBM_QS_IAM_APIKEY"),
        ([{"name": "q", "type": "ibm-cloud", "environment": {}}], "q", "type"),
        ([{"type": "pasqal-cloud", "environment": {}}], "resources[0]", "name"),
        ([{"name": "q", "environment": {}}], "q", "type"),
        ([{"name": "q", "type": "pasqal-cloud"}], "q", "environment"),
        ([{"name": "q", "type": "pasqal-cloud", "environment": {"A": 1}}], "q", "A"),
        ([{"name": "q", "type": "pasqal-cloud", "environment": {}, "is_dynamic": True}],
         "q", "is_dynamic"),
        ([{"name": "q", "type": "pasqal-cloud", "environment": {}}] * 2, "q", "name"),
    ],
)  # fmt: skip
def test_config_errors_name_file_resource_and_key(
    tmp_path: Path, resources: list[Any], resource: str, key: str
) -> None:
    path = _write(tmp_path, {"resources": resources})
    with pytest.raises(ResourceConfigError) as info:
        load_qrmi_config(path)
    assert (info.value.resource, info.value.key) == (resource, key)
    assert str(path) in str(info.value) and SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [('{"resources": [', "line 1"), ("{}", "resources"), ('{"resources": {}}', "resources")],
)
def test_malformed_config_files(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ResourceConfigError, match=needle):
        load_qrmi_config(_write(tmp_path, text))
    with pytest.raises(ResourceConfigError, match="cannot read"):
        load_qrmi_config(tmp_path / "missing.json")


# -- payloads --------------------------------------------------------------------------------


def test_sampler_payload_follows_the_v2_schema(ibm: QrmiResource, bell: QuantumCircuit) -> None:
    ghz = QuantumCircuit(3, 3)
    ghz.h(0)
    ghz.cx(0, 1)
    ghz.cx(1, 2)
    ghz.measure(range(3), range(3))
    payload = ibm.build_payload(SamplerTask((bell, ghz), shots=500))
    assert payload.program_id == "sampler"
    body = _input(payload)
    assert {k: body[k] for k in ("shots", "options", "version", "support_qiskit")} == {
        "shots": 500, "options": {}, "version": 2, "support_qiskit": True,
    }  # fmt: skip
    assert [pub[1:] for pub in body["pubs"]] == [[None, 500], [None, 500]]
    for pub, original in zip(body["pubs"], (bell, ghz), strict=True):
        back = qasm3.loads(pub[0])
        assert back.num_clbits == original.num_clbits
        unmeasured = back.remove_final_measurements(inplace=False)
        expected = original.remove_final_measurements(inplace=False)
        assert Operator(unmeasured).equiv(Operator(expected))


def test_estimator_payload_keeps_parameter_order_and_broadcasts(ibm: QrmiResource) -> None:
    # qasm3 renames θ[i] and the reader sorts names ("_θ_10_" < "_θ_2_", "a" last): the
    # adapter must rename so that the runtime binds our columns to the right parameters.
    theta = ParameterVector("θ", 11)
    circuit = QuantumCircuit(2)
    circuit.ry(Parameter("a"), 0)
    for index, p in enumerate(theta):
        circuit.rx(p * (index + 1) / 11, index % 2)
    circuit.cx(0, 1)
    rng = np.random.default_rng(7)
    rows = rng.uniform(-math.pi, math.pi, (3, 12)).tolist()
    observables = [SparsePauliOp.from_list([("XZ", 0.5), ("IY", -1.0)]), SparsePauliOp("ZZ")]
    task = EstimatorTask.create(circuit, observables, rows, shots=4096)
    payload = ibm.build_payload(task)
    assert payload.program_id == "estimator"
    body = _input(payload)
    assert body["precision"] == pytest.approx(1 / 64)
    assert (body["version"], body["support_qiskit"], body["options"]) == (2, True, {})
    (pub,) = body["pubs"]
    assert pub[1] == [[{"XZ": 0.5, "IY": -1.0}, {"ZZ": 1.0}]]
    assert pub[3] == pytest.approx(1 / 64)
    # What the runtime does with the pub: read it back and broadcast it (exactly: a precision
    # would make the reference estimator add shot noise).
    assert EstimatorPub.coerce((qasm3.loads(pub[0]), *pub[1:])).shape == (3, 2)
    exact = EstimatorPub.coerce((qasm3.loads(pub[0]), pub[1], pub[2]), precision=0.0)
    got = StatevectorEstimator().run([exact]).result()[0].data.evs
    for p, row in enumerate(rows):
        state = Statevector(circuit.assign_parameters(row))
        for o, op in enumerate(observables):
            assert got[p][o] == pytest.approx(state.expectation_value(op).real, abs=1e-9)


def test_estimator_without_shots_or_parameters(ibm: QrmiResource, bell: QuantumCircuit) -> None:
    body = _input(ibm.build_payload(EstimatorTask.create(bell, ["ZZ", "XX"])))
    assert "precision" not in body
    (pub,) = body["pubs"]
    assert pub[2:] == [[[[]]], None]
    assert qasm3.loads(pub[0]).num_clbits == 0  # final measurements removed
    assert EstimatorPub.coerce((qasm3.loads(pub[0]), pub[1], pub[2])).shape == (1, 2)


def test_complex_observable_is_refused(ibm: QrmiResource, bell: QuantumCircuit) -> None:
    task = EstimatorTask.create(bell, SparsePauliOp.from_list([("XY", 1j)]))
    with pytest.raises(PayloadError, match="Hermitian"):
        ibm.build_payload(task)


@pytest.mark.parametrize(
    ("qrmi_type", "needle"), [("pasqal-cloud", "Pulser"), ("iqm-server", "IQM")]
)
def test_non_ibm_types_refuse_gate_circuits(
    qrmi_type: str, needle: str, bell: QuantumCircuit
) -> None:
    resource = QrmiResource("dev", qrmi_type, _env(qrmi_type))
    with pytest.raises(UnsupportedPayloadError, match=needle) as info:
        resource.build_payload(SamplerTask((bell,), shots=10))
    assert qrmi_type in str(info.value)


# -- status against endpoints that are not there ---------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung vendor)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def test_status_of_refused_endpoint_is_offline() -> None:
    env = {"QRMI_IQM_ISA_ENDPOINT": "http://127.0.0.1:9/", "QRMI_IQM_ISA_TOKEN": SECRET}
    resource = QrmiResource("iqm", "iqm-server", env, timeout=20)
    start = time.monotonic()
    status = resource.status()
    assert time.monotonic() - start < 20
    assert status.state is ResourceState.OFFLINE and "status failed" in status.reason
    assert not resource.is_accessible()


def test_hung_endpoint_is_offline_after_the_timeout(silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}/"
    env = IBM_ENV | {"QRMI_IBM_QS_ENDPOINT": url, "QRMI_IBM_QS_IAM_ENDPOINT": url}
    resource = QrmiResource("ibm_hung", "ibm-quantum-system", env, timeout=1.0, num_qubits=5)
    start = time.monotonic()
    status = resource.status()
    assert time.monotonic() - start < 5
    assert status.state is ResourceState.OFFLINE and "no answer within 1 s" in status.reason
    target = resource.target()  # provisional, from the constructor, not cached
    assert target.num_qubits == 5 and target.extra["provisional"]
    assert resource._target is None


# -- the task path, with a fake inner resource answering like qrmi ---------------------------


def _ndarray(array: np.ndarray[Any, Any]) -> dict[str, str]:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    encoded = base64.standard_b64encode(zlib.compress(buffer.getvalue())).decode()
    return {"__type__": "ndarray", "__value__": encoded}


def _encode(value: Any) -> Any:
    """The runtime's tagged JSON for primitive results (the shape RuntimeEncoder writes)."""
    if isinstance(value, PrimitiveResult):
        body = {"pub_results": [_encode(p) for p in value], "metadata": value.metadata}
        return {"__type__": "PrimitiveResult", "__value__": body}
    if isinstance(value, PubResult):
        kind = type(value).__name__
        return {"__type__": kind, "__value__": {"data": _encode(value.data), "metadata": {}}}
    if isinstance(value, DataBin):
        fields = {k: _encode(v) for k, v in value.items()}
        body = {"field_names": list(fields), "shape": list(value.shape), "fields": fields}
        return {"__type__": "DataBin", "__value__": body}
    if isinstance(value, BitArray):
        body = {"array": _ndarray(value.array), "num_bits": value.num_bits}
        return {"__type__": "BitArray", "__value__": body}
    return _ndarray(np.asarray(value))


class FakeQrmi:
    """Answers like ``qrmi.QuantumResource`` for a finished job of the given result."""

    def __init__(self, result: PrimitiveResult, state: Any = qrmi.TaskStatus.Completed) -> None:
        self.raw = json.dumps(_encode(result))
        self.state = state
        self.started: list[Any] = []

    def target(self) -> Any:
        config = {"n_qubits": 3, "basis_gates": ["cz", "rz", "sx", "x", "delay"],
                  "coupling_map": [[0, 1], [1, 0], [1, 2], [2, 1]], "max_shots": 1000,
                  "max_experiments": 4}  # fmt: skip
        return SimpleNamespace(value=json.dumps({"configuration": config, "properties": {}}))

    def status(self) -> Any:
        return SimpleNamespace(status=qrmi.ResourceStatusCode.Paused, busy=True,
                               pending_job_count=3, status_reason="maintenance")  # fmt: skip

    def task_start(self, payload: Any) -> str:
        self.started.append(payload)
        return "job-1"

    def task_status(self, task_id: str) -> Any:
        if task_id != "job-1":
            raise qrmi.TaskNotFoundError(f"job {task_id} not found")
        return self.state

    def task_result(self, task_id: str) -> Any:
        return SimpleNamespace(value=self.raw)


def test_status_target_and_sampler_round_trip(ibm: QrmiResource, bell: QuantumCircuit) -> None:
    expected = StatevectorSampler(seed=5).run([bell], shots=200).result()
    ibm._qrmi = fake = FakeQrmi(expected)
    status = ibm.status()
    assert (status.state, status.busy, status.pending) == (ResourceState.MAINTENANCE, True, 3)
    target = ibm.target()
    assert (target.num_qubits, target.max_shots, target.max_circuits) == (3, 1000, 4)
    assert target.basis_gates == ("cz", "rz", "sx", "x") and (1, 2) in (target.coupling_map or ())
    assert target.to_qiskit().num_qubits == 3
    with pytest.raises(PayloadError, match="maximum of 1000"):
        ibm.task_start(SamplerTask((bell,), shots=5000))
    task_id = ibm.task_start(SamplerTask((bell,), shots=200, memory=True))
    assert task_id == "job-1" and fake.started[0].program_id == "sampler"
    assert ibm.task_status(task_id) is TaskStatus.COMPLETED
    result = ibm.task_result(task_id)
    assert isinstance(result, SamplerResult)
    (sampled,) = result.circuits
    assert sampled.counts == expected[0].data.c.get_counts() and sampled.shots == 200
    assert sampled.memory is not None and len(sampled.memory) == 200
    with pytest.raises(UnknownTaskError):
        ibm.task_status("job-2")


def test_estimator_round_trip(ibm: QrmiResource) -> None:
    circuit = QuantumCircuit(2)
    circuit.ry(Parameter("t"), 0)
    circuit.cx(0, 1)
    task = EstimatorTask.create(circuit, ["ZZ", "XI", "IZ"], [[0.1], [1.2]], shots=1000)
    evs = np.arange(6, dtype=float).reshape(2, 3) / 10
    data = DataBin(shape=(2, 3), evs=evs, stds=np.full((2, 3), 0.03))
    # Tagged values the adapter does not read (a datetime here) must not stop decoding.
    created = {"__type__": "datetime", "__value__": "2026-01-01T00:00:00Z"}
    ibm._qrmi = FakeQrmi(PrimitiveResult([PubResult(data)], {"version": 2, "created": created}))
    result = ibm.run(task, timeout=5)
    assert isinstance(result, EstimatorResult)
    assert result.values == ((0.0, 0.1, 0.2), (0.3, 0.4, 0.5))
    assert result.std_errors == ((0.03,) * 3,) * 2 and result.shots == 1000


@pytest.mark.parametrize(
    ("state", "error"),
    [(qrmi.TaskStatus.Running, TaskNotFinishedError), (qrmi.TaskStatus.Failed, TaskFailedError),
     (qrmi.TaskStatus.Cancelled, TaskFailedError)],
)  # fmt: skip
def test_unfinished_and_failed_tasks(
    ibm: QrmiResource, bell: QuantumCircuit, state: Any, error: type[Exception]
) -> None:
    ibm._qrmi = FakeQrmi(PrimitiveResult([]), state)
    task_id = ibm.task_start(SamplerTask((bell,), shots=10))
    with pytest.raises(error):
        ibm.task_result(task_id)


def test_undecodable_result_points_at_the_raw_json(ibm: QrmiResource, bell: QuantumCircuit) -> None:
    ibm._qrmi = fake = FakeQrmi(PrimitiveResult([]))
    fake.raw = '{"results": "not a primitive result"}'
    task_id = ibm.task_start(SamplerTask((bell,), shots=10))
    with pytest.raises(TaskFailedError, match=r"job-1: cannot decode .* task_result_raw"):
        ibm.task_result(task_id)
    assert ibm.task_result_raw(task_id) == fake.raw
