"""Stacks that travel: the plugin registry, stack specs, server-side rebuilds, remote = local.

Tolerances (as in test_program.py): exact expectation values must reach the
H2 ground energy within 1.6 mHa (chemical accuracy); with 20 000 shots per
measurement group one evaluation's standard error is about 1.6 mHa and the
stated tolerance is 10 mHa. The simulator is seeded, so the same stack gives
the same numbers wherever it runs; the tests check that too.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit.circuit import Parameter, QuantumCircuit

import qhpc
from helpers import (
    CHEMICAL_ACCURACY_MHA,
    SHOTS_TOLERANCE_MHA,
    example,
    free_port,
    start_serve,
    wait_healthy,
)
from qhpc.client import ClientError, connect
from qhpc.program import (
    Batch,
    BatchResult,
    CancelledError,
    Job,
    JobError,
    LocalQPU,
    ObservableMeasurement,
    Plugin,
    PluginError,
    PluginSpecError,
    ReadoutMitigation,
    RemoteQPU,
    Result,
    ScipyMinimize,
    SessionQPU,
    StackError,
    Transpile,
    plugin_from_spec,
    plugin_spec,
    register_plugin,
    registered_plugins,
    stack_from_spec,
    stack_spec,
)
from qhpc.program.server import check_request, decode_answer, make_request, run_stack
from qhpc.program.wire import (
    decode_batch,
    decode_batch_result,
    encode_batch,
    encode_batch_result,
)
from qhpc.resources import AerResource


@pytest.fixture(scope="module")
def vqe() -> ModuleType:
    return example("vqe_h2", prefix="remote_example")


@pytest.fixture
def aer() -> Any:
    resource = AerResource("aer", seed=7)
    yield resource
    resource.close()


class Doubler(Plugin):
    """A user-defined plugin nobody registered."""

    def post_process(self, result: BatchResult) -> BatchResult:
        return BatchResult(
            tuple(r.replace(value=2 * (r.value or 0.0)) for r in result), result.meta
        )


# -- registry ------------------------------------------------------------------------


def test_shipped_plugins_are_registered_under_their_class_names() -> None:
    known = registered_plugins()
    for plugin in (ScipyMinimize, ObservableMeasurement, Transpile, ReadoutMitigation):
        assert known[plugin.__name__] is plugin


def roundtrip(plugin: Plugin) -> Plugin:
    """Through JSON text, as a broker would receive it."""
    return plugin_from_spec(json.loads(json.dumps(plugin_spec(plugin))))


scipy_params = st.fixed_dictionaries(
    {},
    optional={
        "method": st.sampled_from(["COBYLA", "Nelder-Mead", "Powell", "L-BFGS-B"]),
        "tol": st.none() | st.floats(1e-9, 1.0),
        "maxiter": st.integers(1, 10_000),
        "x0": st.none() | st.lists(st.floats(-10, 10), min_size=1, max_size=6),
        "reevaluate": st.booleans(),
        "seed": st.none() | st.integers(0, 2**31),
        "spread": st.floats(0, 3),
        "restarts": st.integers(0, 3),
        "restart_options": st.dictionaries(
            st.sampled_from(["rhobeg", "maxiter"]), st.integers(1, 9)
        ),
    },
)


@settings(max_examples=40, deadline=None)
@given(scipy_params)
def test_scipy_minimize_specs_round_trip(params: dict[str, Any]) -> None:
    plugin = ScipyMinimize(**params)
    rebuilt = roundtrip(plugin)
    assert type(rebuilt) is ScipyMinimize
    assert plugin_spec(rebuilt) == plugin_spec(plugin)
    assert rebuilt.options == plugin.options and rebuilt.method == plugin.method


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 3),
    st.none() | st.integers(0, 2**31),
    st.none() | st.integers(1, 10**6),
    st.sampled_from(["full", "tensored"]),
    st.integers(1, 8),
    st.none() | st.floats(0.1, 1e5),
)
def test_other_plugins_specs_round_trip(
    level: int, seed: int | None, shots: int | None, method: str, qubits: int, age: float | None
) -> None:
    for plugin in (
        Transpile(level, seed),
        ObservableMeasurement(shots),
        ReadoutMitigation(max_qubits=qubits, method=method, max_age=age),
    ):
        rebuilt = roundtrip(plugin)
        assert type(rebuilt) is type(plugin)
        assert plugin_spec(rebuilt) == plugin_spec(plugin)


def test_stack_spec_round_trips_and_names_the_qpu(aer: AerResource) -> None:
    stack = ScipyMinimize(maxiter=5) | ObservableMeasurement(100) | Transpile(0) | aer
    spec = stack_spec(stack)
    assert spec["qpu"] == "aer" and [p["plugin"] for p in spec["plugins"]] == [
        "ScipyMinimize", "ObservableMeasurement", "Transpile",
    ]  # fmt: skip
    rebuilt = stack_from_spec(json.loads(json.dumps(spec)), LocalQPU(aer))
    assert rebuilt.name == stack.name
    assert stack_spec(rebuilt) == spec


def test_registering_a_user_plugin_lets_it_travel() -> None:
    class Scaled(Plugin):
        def __init__(self, factor: float = 1.0) -> None:
            self.factor = factor

        def params(self) -> dict[str, Any]:
            return {"factor": self.factor}

    register_plugin("TestScaled", Scaled)
    register_plugin("TestScaled", Scaled)  # the same again is harmless
    assert plugin_spec(Scaled(2.5)) == {"plugin": "TestScaled", "params": {"factor": 2.5}}
    rebuilt = plugin_from_spec({"plugin": "TestScaled", "params": {"factor": 2.5}})
    assert isinstance(rebuilt, Scaled) and rebuilt.factor == 2.5
    with pytest.raises(PluginSpecError, match="already registered"):
        register_plugin("TestScaled", Doubler)


# -- bad input: errors name the plugin ------------------------------------------------


def test_unregistered_plugin_is_refused_by_name(aer: AerResource) -> None:
    with pytest.raises(PluginSpecError, match="plugin Doubler is not registered") as caught:
        stack_spec(ScipyMinimize() | Doubler() | aer)
    assert caught.value.plugin == "Doubler"


def test_a_subclass_of_a_registered_plugin_is_not_that_plugin(aer: AerResource) -> None:
    class MyTranspile(Transpile):
        pass

    with pytest.raises(PluginSpecError, match="MyTranspile is not registered"):
        stack_spec(MyTranspile() | aer)


def test_stack_without_qpu_has_no_spec() -> None:
    with pytest.raises(StackError, match="has no QPU"):
        stack_spec(ScipyMinimize() | ObservableMeasurement())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"plugin": "Nope", "params": {}},
            r"unknown plugin 'Nope'; registered plugins: .*ScipyMinimize",
        ),
        ({"plugin": "Transpile", "params": {"level": 1}}, r"plugin Transpile: bad params .*level"),
        (
            {"plugin": "Transpile", "params": {"optimization_level": 7}},
            r"plugin Transpile: bad params.*0\.\.3",
        ),
        (
            {"plugin": "ObservableMeasurement", "params": {"default_shots": -1}},
            "ObservableMeasurement: bad params",
        ),
        ({"plugin": "ScipyMinimize", "params": {"restarts": -1}}, "ScipyMinimize: bad params"),
        ({"plugin": "Transpile", "extra": 1}, r"Transpile: unknown spec field\(s\) \['extra'\]"),
        ({"plugin": "Transpile", "params": [1]}, "Transpile: params must be a map"),
        ({"params": {}}, "needs a 'plugin' name"),
        ("Transpile", "must be a map"),
    ],
)
def test_bad_plugin_specs_name_the_plugin(spec: Any, message: str) -> None:
    with pytest.raises(PluginSpecError, match=message):
        plugin_from_spec(spec)


def test_params_that_cannot_travel_are_refused(aer: AerResource) -> None:
    plugin = ScipyMinimize(options={"callback": print})
    with pytest.raises(PluginSpecError, match=r"ScipyMinimize: param options\.callback is a"):
        stack_spec(plugin | aer)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda r: r.update(v=9), StackError, "request version 9"),
        (lambda r: r["stack"].update(v=2), PluginSpecError, "stack spec version 2"),
        (lambda r: r["stack"].update(qpu=None), StackError, "names no QPU"),
        (
            lambda r: r["stack"]["plugins"].append({"plugin": "Evil"}),
            PluginSpecError,
            "unknown plugin 'Evil'",
        ),
        (lambda r: r.update(target=None), StackError, "needs the device 'target'"),
        (lambda r: r.update(batch="%%%"), ValueError, "not base64"),
        (
            lambda r: r.update(batch="AAAA"),
            ValueError,
            "not valid MessagePack|expected an encoded batch",
        ),
    ],
)
def test_bad_stack_requests_are_refused_whole(
    aer: AerResource, vqe: Any, mutate: Any, error: type[Exception], message: str
) -> None:
    stack = ScipyMinimize(maxiter=3) | ObservableMeasurement() | Transpile() | aer
    request = make_request(stack, Batch([Job.expectation(vqe.ansatz(), vqe.hamiltonian())]))
    request = json.loads(json.dumps(request))
    mutate(request)
    with pytest.raises(error, match=message):
        check_request(request)


# -- the wire ---------------------------------------------------------------------------

angles = st.floats(-3.2, 3.2, allow_nan=False)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.none() | st.integers(1, 10**5),
            st.lists(angles, min_size=2, max_size=2),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_batches_round_trip_and_keep_shared_circuits(
    items: list[tuple[bool, int | None, list[float]]],
) -> None:
    a, b = Parameter("a"), Parameter("b")
    circuit = QuantumCircuit(2, name="shared")
    circuit.ry(a, 0)
    circuit.rx(b, 1)
    circuit.cx(0, 1)
    measured = circuit.measure_all(inplace=False)
    jobs = []
    for index, (expectation, shots, values) in enumerate(items):
        if expectation:
            jobs.append(
                Job.expectation(circuit, {"ZZ": 0.5, "XI": -0.25}, shots, values, f"e{index}")
            )
        else:
            jobs.append(Job.sample(measured, shots or 100, values, name=f"s{index}"))
    batch = Batch(jobs, {"note": ("kept", 1)})
    back = decode_batch(encode_batch(batch))
    assert len(back) == len(batch) and back.meta == {"note": ["kept", 1]}
    for got, sent in zip(back, batch, strict=True):
        assert (got.name, got.shots, got.parameters) == (sent.name, sent.shots, sent.parameters)
        assert got.circuit == sent.circuit
        assert (got.observable is None) == (sent.observable is None)
        if sent.observable is not None:
            assert got.observable is not None and got.observable.equiv(sent.observable)
    # jobs on one circuit object still share one (payload plans group by circuit)
    ids = {id(j.circuit) for j in back if j.observable is not None}
    assert len(ids) <= 1


def test_batch_results_round_trip() -> None:
    result = BatchResult(
        (
            Result(
                value=-1.5, error=0.01, parameters=(0.1, 0.2), meta={"x": (0.1, 0.2), "nfev": 3}
            ),
            Result(counts={"00": 7, "11": 9}, meta={"shots": 16}),
        ),
        {"resource": "aer"},
    )
    back = decode_batch_result(encode_batch_result(result))
    assert back.results[0].value == -1.5 and back.results[0].parameters == (0.1, 0.2)
    assert back.results[0].meta == {"x": [0.1, 0.2], "nfev": 3}
    assert back.results[1].counts == {"00": 7, "11": 9} and back.meta == {"resource": "aer"}


# -- rebuilt stacks give what the local stack gives ------------------------------------------


@pytest.mark.parametrize("shots", [None, 20_000])
def test_a_rebuilt_stack_returns_what_the_local_stack_returns(vqe: Any, shots: int | None) -> None:
    local_aer, server_aer = AerResource("aer", seed=7), AerResource("aer", seed=7)
    try:
        stack = (
            ScipyMinimize(tol=1e-6, maxiter=300) | ObservableMeasurement() | Transpile() | local_aer
        )
        job = Job.expectation(vqe.ansatz(), vqe.hamiltonian(), shots=shots, name="vqe-h2")
        local = stack.submit(job)
        request = json.loads(json.dumps(make_request(stack, Batch([job]))))
        answer = json.loads(json.dumps(run_stack(LocalQPU(server_aer), request)))
        remote = decode_answer(answer)[0]
    finally:
        local_aer.close()
        server_aer.close()
    assert remote.value == local.value and remote.error == local.error
    assert remote.parameters == local.parameters and remote.meta["nfev"] == local.meta["nfev"]
    error_mha = abs(remote.value - vqe.EXACT_ENERGY) * 1000
    assert error_mha < (CHEMICAL_ACCURACY_MHA if shots is None else SHOTS_TOLERANCE_MHA)


class Failing(Plugin):
    """Registered, and raises in compile."""

    def params(self) -> dict[str, Any]:
        return {}

    def compile(self, batch: Batch, specs: Any) -> Batch:
        raise ValueError("no good")


register_plugin("TestFailing", Failing)


def test_a_failing_plugin_on_the_server_names_plugin_and_job(aer: AerResource) -> None:
    circuit = QuantumCircuit(1)
    circuit.h(0)
    stack = Transpile() | Failing() | aer
    request = make_request(stack, Batch([Job.expectation(circuit, "Z", name="probe")]))
    with pytest.raises(PluginError, match="plugin Failing failed in compile on job 'probe'"):
        run_stack(LocalQPU(aer), request)


# -- against a real `qhpc serve` (loopback, aer seeded like the local one) ---------------------


class Served:
    def __init__(self, url: str, fastpath: str, admin: str) -> None:
        self.url, self.fastpath, self.admin = url, fastpath, admin

    def jobs(self) -> list[dict[str, Any]]:
        with connect(self.url, self.admin) as client:
            return client.jobs(limit=1000)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    config = tmp / "resources.toml"
    config.write_text('[resources.aer]\ntype = "aer"\nseed = 7\n')
    port, fastpath = free_port(), f"tcp://127.0.0.1:{free_port()}"
    log = (tmp / "serve.log").open("wb")  # a file, not a pipe: nobody drains a pipe
    process = start_serve(
        tmp, port, "--config", str(config), "--fastpath", fastpath, db=tmp / "broker.db",
        stdout=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        admin = (tmp / "admin.token").read_text().strip()
        with connect(url, admin) as client:
            client.set_account("chem", 1.0)
        yield Served(url, fastpath, admin)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def local_vqe(vqe: Any, shots: int | None) -> dict[str, Any]:
    aer = AerResource("aer", seed=7)
    try:
        return dict(vqe.run(LocalQPU(aer), shots, vqe.parse([])))
    finally:
        aer.close()


def test_inside_a_session_connect_and_qpu_use_the_fast_path(
    served: Served, vqe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(served.url, served.admin) as admin:
        session = admin.open_session("aer", duration_seconds=600, user="alice", account="chem")
    for name, value in {
        "QHPC_URL": served.url, "QHPC_FASTPATH": served.fastpath,
        "QHPC_SESSION": session["token"], "QHPC_RESOURCE": "aer",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("QHPC_TOKEN", raising=False)
    before = len(served.jobs())
    client = qhpc.connect()  # everything from the environment, as in a Slurm job
    qpu = client.qpu()
    assert isinstance(qpu, SessionQPU) and qpu.session_id == session["session_id"]
    try:
        for shots in (None, 20_000):
            here = local_vqe(vqe, shots)
            there = vqe.run(qpu, shots, vqe.parse([]))  # the same code
            assert there["energy"] == pytest.approx(here["energy"], abs=1e-9)
            assert there["nfev"] == here["nfev"]
            tolerance = CHEMICAL_ACCURACY_MHA if shots is None else SHOTS_TOLERANCE_MHA
            assert there["error_mha"] < tolerance
    finally:
        qpu.close()
        client.close()
    assert len(served.jobs()) == before  # session tasks, no new batch jobs
    with connect(served.url, served.admin) as admin:
        admin.close_session(session["session_id"])


def test_stacks_over_a_remote_qpu_run_the_same_code(served: Served, vqe: Any) -> None:
    with qhpc.connect(served.url, served.admin) as client:
        remote = client.qpu("aer", fastpath=False, account="chem")
        assert isinstance(remote, RemoteQPU)
        for shots in (None, 20_000):
            here = local_vqe(vqe, shots)
            there = vqe.run(remote, shots, vqe.parse([]))
            assert there["energy"] == pytest.approx(here["energy"], abs=1e-9)
            tolerance = CHEMICAL_ACCURACY_MHA if shots is None else SHOTS_TOLERANCE_MHA
            assert there["error_mha"] < tolerance
    assert not [j for j in served.jobs() if j["state"] in {"queued", "running"}]


def test_whole_stacks_are_rebuilt_on_the_broker(served: Served, vqe: Any) -> None:
    with qhpc.connect(served.url, served.admin) as client:
        assert client.offers_programs()
        remote = client.qpu("aer", fastpath=False, stacks="broker", account="chem")
        for shots in (None, 20_000):
            here = local_vqe(vqe, shots)
            there = vqe.run(remote, shots, vqe.parse([]))  # the same code, run by the broker
            assert there["energy"] == pytest.approx(here["energy"], abs=1e-9)
            assert there["nfev"] == here["nfev"]
            tolerance = CHEMICAL_ACCURACY_MHA if shots is None else SHOTS_TOLERANCE_MHA
            assert there["error_mha"] < tolerance
        hybrid = [j for j in client.jobs(limit=10) if j["kind"] == "hybrid"]
        assert len(hybrid) >= 2 and hybrid[0]["state"] == "completed"
        program = client.program(hybrid[0]["job_id"])
        assert program["entry_point"] == "qhpc.stack" and program["qpu_calls"] > 0
        # a future of a whole stack: join() / status() as for any QPU
        job = Job.expectation(vqe.ansatz(), vqe.hamiltonian(), name="vqe-h2")
        future = (
            ScipyMinimize(maxiter=20) | ObservableMeasurement() | Transpile() | remote
        ).submit_async(job)
        result = future.join(timeout=120)
        assert future.status() == "completed" and result.meta["nfev"] == 20
        (job_id,) = future.remote_jobs
        assert client.job(job_id)["state"] == "completed"
    assert not [j for j in served.jobs() if j["state"] in {"queued", "running"}]


def test_a_rejected_remote_stack_leaves_nothing_on_the_broker(served: Served, vqe: Any) -> None:
    job = Job.expectation(vqe.ansatz(), vqe.hamiltonian(), name="vqe")
    with qhpc.connect(served.url, served.admin) as client:
        before = served.jobs()
        remote = client.qpu("aer", fastpath=False, stacks="broker", account="chem")
        # refused on the client, before anything is sent
        with pytest.raises(PluginSpecError, match="plugin Doubler is not registered"):
            (ScipyMinimize() | Doubler() | Transpile() | remote).submit(job)
        with pytest.raises(StackError, match="has no QPU"):
            (ScipyMinimize() | ObservableMeasurement()).submit(job)
        # registered here but not on the broker: the broker refuses it whole (422)
        with pytest.raises(JobError, match=r"refused .*unknown plugin 'TestFailing'"):
            (Transpile() | Failing() | remote).submit(job.replace(shots=10))
        # a hand-made request with bad params: 422 naming the plugin
        request = make_request(Transpile() | remote, Batch([job]))
        request["stack"]["plugins"][0]["params"] = {"optimization_level": 9}
        with pytest.raises(ClientError, match="plugin Transpile: bad params") as caught:
            client.submit_program("aer", entry_point="qhpc.stack", args=request, account="chem")
        assert caught.value.status == 422
        assert served.jobs() == before


def test_cancelling_a_stack_on_the_broker_cancels_its_job(served: Served, vqe: Any) -> None:
    job = Job.expectation(vqe.ansatz(), vqe.hamiltonian(), shots=100, name="endless")
    with qhpc.connect(served.url, served.admin) as client:
        remote = client.qpu("aer", fastpath=False, stacks="broker", account="chem")
        endless = ScipyMinimize(tol=1e-15, maxiter=10**6) | ObservableMeasurement() | remote
        future = endless.submit_async(job)
        deadline = time.monotonic() + 30
        while not future.remote_jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        (job_id,) = future.remote_jobs
        assert future.cancel()
        with pytest.raises(CancelledError):
            future.join(timeout=60)
        while client.job(job_id)["state"] not in {"cancelled", "failed", "completed"}:
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
        assert client.job(job_id)["state"] == "cancelled"
    assert not [j for j in served.jobs() if j["state"] in {"queued", "running"}]
