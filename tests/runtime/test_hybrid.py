"""Hybrid programs: the same plain-Python file client-driven and co-located."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qhpc.api.fastpath import FastPathServer
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec
from qhpc.runtime import ProgramContext, QpuNotConfiguredError, RuntimePool
from qhpc.session import QPU
from qhpc.store import Store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hybrid_vqe.py"
QI_PROGRAM = '''
def execute(qi):
    bell = """version 3.0
qubit[2] q
bit[2] b
H q[0]
CNOT q[0], q[1]
b = measure q
"""
    return [qi.execute_circuit(bell, 200) for _ in range(3)]


def finalize(results):
    # like Quantum Inspire: finalize gets the measurements qi collected during execute
    return {"runs": len(results), "keys": sorted({k for r in results for k in r["counts"]})}
'''


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Broker, FastPathServer]]:
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 5})])
    with Store.open(tmp_path / "hybrid.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        server = FastPathServer(broker).start()
        yield broker, server
        server.stop()
        broker.stop()
    registry.close()


def session(broker: Broker) -> str:
    return broker.open_session(user="u", account="a", resource="aer", deadline=time.time() + 600)[1]


def load_example(path: Path = EXAMPLE) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_client_driven_vqe_reaches_chemical_accuracy(
    served: tuple[Broker, FastPathServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, server = served
    monkeypatch.setenv("QHPC_FASTPATH", server.endpoint)
    monkeypatch.setenv("QHPC_SESSION", session(broker))
    qpu = QPU.from_env()
    try:
        result = load_example().main(qpu)  # type: ignore[attr-defined]
    finally:
        qpu.close()
    assert result["error_mha"] < 1.6
    assert qpu.timings.calls == result["evaluations"]
    tasks = broker.tasks_of_job(qpu.session_id)
    assert len(tasks) == result["evaluations"]
    assert {t.state for t in tasks} == {"completed"}


def test_client_driven_qaoa_finds_the_maximum_cut(
    served: tuple[Broker, FastPathServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker, server = served
    monkeypatch.setenv("QHPC_FASTPATH", server.endpoint)
    monkeypatch.setenv("QHPC_SESSION", session(broker))
    qpu = QPU.from_env()
    try:
        result = load_example(EXAMPLE.with_name("hybrid_qaoa.py")).main(qpu)  # type: ignore[attr-defined]
    finally:
        qpu.close()
    assert result["best_cut"] == result["max_cut"] == 5
    assert qpu.timings.calls == result["evaluations"] + 1  # + the final sample


def test_co_located_program_runs_unchanged_in_the_runtime_pool(
    served: tuple[Broker, FastPathServer],
) -> None:
    broker, server = served
    context = ProgramContext(
        endpoint=server.endpoint, session_token=session(broker), resource="aer"
    )
    with RuntimePool(size=1, qpu_factory="qhpc.session:make_qpu") as pool:
        outcome = pool.run(str(EXAMPLE), args={}, timeout=120, context=context)
        assert outcome.status == "completed", outcome.error
        assert outcome.return_value["error_mha"] < 1.6
        qi = pool.run(QI_PROGRAM, timeout=60, context=context)
        assert qi.status == "completed", qi.error
        assert qi.return_value == {"runs": 3, "keys": ["00", "11"]}


def test_missing_session_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QHPC_FASTPATH", raising=False)
    monkeypatch.delenv("QHPC_SESSION", raising=False)
    with pytest.raises(QpuNotConfiguredError, match="QHPC_FASTPATH"):
        QPU.from_env()


def test_quantum_inspire_calls_keep_their_results(served: tuple[Broker, FastPathServer]) -> None:
    broker, server = served
    from qhpc.session import FastPathClient

    qi = QPU(FastPathClient(server.endpoint, session(broker)))
    counts = qi.execute_circuit(
        "version 3.0\nqubit[1] q\nbit[1] b\nX q[0]\nb = measure q\n", number_of_shots=50
    )
    assert counts == {"1": 50}
    assert qi.results == [{"counts": {"1": 50}, "shots": 50}]
    qi.close()


def test_a_registered_entry_point_runs_as_a_hybrid_job(tmp_path: Path) -> None:
    # operator.is_not(qpu, spec) stands in for a server-side program function(qpu, spec).
    registry = ResourceRegistry([ResourceSpec("aer", "aer", {"seed": 5})])
    config = BrokerConfig(
        policy="fifo", runtime_pool_size=1, entry_points={"probe": "operator:is_not"}
    )
    with Store.open(tmp_path / "entry.db") as store:
        broker = Broker(store, registry, config)
        broker.start()
        try:
            job = broker.programs.submit(
                user="u", account="a", resource="aer", entry_point="probe", args={"x": 1}
            )
            deadline = time.monotonic() + 60
            while broker.get_job(job.job_id).state not in ("completed", "failed", "cancelled"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            info = broker.programs.info(job.job_id)
            assert info.record.status == "completed", info.record.message
            assert info.return_value is True
            assert info.record.entry_point == "probe" and info.record.source is None
        finally:
            broker.stop()
    registry.close()
