"""The main job on embedded defaults: circuits on the local resources, end to end.

Runs a Bell circuit and a small seeded random-circuit sampling batch on the
``aer`` simulator and the ``emulator`` (a noisy 5-qubit line device with
modelled device time), then an estimator task (⟨ZZ⟩, ⟨XX⟩ of the Bell state)
through the same interface. Later issues grow this into the full hybrid demo.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qiskit.circuit import QuantumCircuit
from qiskit.circuit.random import random_circuit

from qhpc.resources import (
    EstimatorResult,
    EstimatorTask,
    ResourceRegistry,
    SamplerResult,
    SamplerTask,
)

DEMO_RESOURCES = ("aer", "emulator")


@dataclass
class DemoStep:
    resource: str
    title: str
    result: SamplerResult | EstimatorResult
    seconds: float
    circuits: list[str] = field(default_factory=list)


def bell_circuit() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def random_batch(
    count: int = 6, width: int = 4, depth: int = 4, seed: int = 7
) -> list[QuantumCircuit]:
    circuits = []
    for index in range(count):
        circuit = random_circuit(width, depth, max_operands=2, measure=True, seed=seed + index)
        circuit.name = f"random-{index}"
        circuits.append(circuit)
    return circuits


def run_demo(
    registry: ResourceRegistry,
    resources: tuple[str, ...] = DEMO_RESOURCES,
    shots: int = 1000,
    seed: int = 1234,
    on_step: Callable[[DemoStep], None] | None = None,
) -> list[DemoStep]:
    """Run the demo payloads on each resource; ``on_step`` sees each result as it lands."""
    steps: list[DemoStep] = []
    bell = bell_circuit()
    batch = random_batch()
    observable_circuit = bell.remove_final_measurements(inplace=False)
    payloads: list[tuple[str, Any, list[str]]] = [
        ("Bell state", SamplerTask((bell,), shots=shots, seed=seed), ["bell"]),
        (
            f"random batch ({len(batch)} circuits × 4 qubits)",
            SamplerTask(tuple(batch), shots=shots, seed=seed),
            [c.name for c in batch],
        ),
        (
            "Bell ⟨ZZ⟩ and ⟨XX⟩",
            EstimatorTask.create(observable_circuit, ["ZZ", "XX"], shots=None, seed=seed),
            ["ZZ", "XX"],
        ),
    ]
    for name in resources:
        resource = registry.get(name)
        for title, payload, labels in payloads:
            started = time.perf_counter()
            result = resource.run(payload, timeout=600)
            step = DemoStep(name, title, result, time.perf_counter() - started, labels)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    return steps


@dataclass
class BrokerDemo:
    """What the broker part of the demo saw."""

    queue: list[tuple[int, str, str, float]]  # position, account, resource, eta seconds
    jobs: list[tuple[str, str, str, int]]  # job id, account, state, tasks
    accounting: list[dict[str, Any]]
    session_latency_ms: float
    hybrid: dict[str, Any]  # the co-located program: status, return value, calls, timings


#: The hybrid program the demo hands to the broker: QAOA for MaxCut on a ring of
#: four nodes (maximum cut 4), plain Python with scipy, one QPU call per evaluation.
#: The broker runs it co-located, in a warm process of its runtime pool.
HYBRID_PROGRAM = """
from qiskit.circuit import Parameter, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from scipy.optimize import minimize

from qhpc.runtime import current_program

RING = [(0, 1), (1, 2), (2, 3), (3, 0)]


def cut(bits):
    return sum(bits[-1 - a] != bits[-1 - b] for a, b in RING)


def main(qpu):
    gamma, beta = Parameter("gamma"), Parameter("beta")
    ansatz = QuantumCircuit(4)
    ansatz.h(range(4))
    for a, b in RING:
        ansatz.rzz(2 * gamma, a, b)
    ansatz.rx(2 * beta, range(4))
    # minus the cut size: sum over edges of (Z_a Z_b - 1) / 2
    minus_cut = SparsePauliOp.from_sparse_list(
        [("ZZ", [a, b], 0.5) for a, b in RING] + [("", [], -len(RING) / 2)], num_qubits=4
    )
    trace = []

    def energy(angles):
        value = qpu.estimate(ansatz, minus_cut, list(angles))
        trace.append(value)
        current_program().report(len(trace), value)
        return value

    found = minimize(energy, [0.3, 0.3], method="COBYLA", options={"maxiter": 60})
    sampled = ansatz.assign_parameters(found.x)
    sampled.measure_all()
    counts = qpu.run(sampled, shots=500)
    best = max(counts, key=cut)
    return {"expected_cut": -found.fun, "best_bits": best, "best_cut": cut(best),
            "evaluations": len(trace)}
"""


def run_broker_demo(db_path: str, shots: int = 500) -> BrokerDemo:
    """A broker on SQLite with an emulated QPU and Aer; two accounts share the emulator.

    ``chem`` submits a batch, ``phys`` holds a session (its tasks jump the queue),
    and the fair-share policy orders what is left. Returns the queue as it stood
    after submission, the final job states and the accounting per account.
    """
    from qhpc.broker import Broker, BrokerConfig
    from qhpc.resources import ResourceSpec
    from qhpc.store import AccountRecord, Store

    registry = ResourceRegistry(
        [
            ResourceSpec("aer", "aer", {"seed": 5}),
            ResourceSpec(
                "emulator", "emulator", {"device": "line-5", "time_scale": 20.0, "seed": 5}
            ),
        ]
    )
    with Store.open(db_path) as store:
        store.upsert_account(AccountRecord("chem", 1.0, None))
        store.upsert_account(AccountRecord("phys", 1.0, None))
        broker = Broker(store, registry, BrokerConfig(policy="fairshare"))
        broker.start()
        try:
            batch = random_batch()
            jobs = [
                broker.submit(
                    user="alice", account="chem", resource="emulator",
                    payloads=[SamplerTask((c,), shots=shots, seed=i) for i, c in enumerate(batch)],
                ),
                broker.submit(
                    user="bob", account="phys", resource="aer",
                    payloads=[SamplerTask((bell_circuit(),), shots=shots)] * 3,
                ),
            ]  # fmt: skip
            queue = [
                (position, task.account, task.resource, eta)
                for position, (task, eta) in enumerate(broker.queue("emulator"), start=1)
            ]
            session, _ = broker.open_session(
                user="bob", account="phys", resource="emulator", deadline=time.time() + 600
            )
            started = time.perf_counter()
            task_id = broker.submit_session_task(
                session.session_id, SamplerTask((bell_circuit(),), shots=shots)
            )
            broker.wait_task(task_id, timeout=600)
            latency = (time.perf_counter() - started) * 1e3
            broker.close_session(session.session_id)
            hybrid = _run_hybrid(broker)
            for job in jobs:
                for task in store.tasks_of_job(job.job_id):
                    broker.wait_task(task.task_id, timeout=600)
            final = [store.get_job(j.job_id) for j in jobs]
            return BrokerDemo(
                queue=queue,
                jobs=[(j.job_id, j.account, j.state, j.task_count) for j in final],
                accounting=store.usage_rollup("account"),
                session_latency_ms=latency,
                hybrid=hybrid,
            )
        finally:
            broker.stop()
            registry.close()


def _run_hybrid(broker: Any, timeout: float = 300.0) -> dict[str, Any]:
    """Submit :data:`HYBRID_PROGRAM` co-located on ``aer`` and wait for its outcome."""
    job = broker.programs.submit(
        user="carol", account="phys", resource="aer", source=HYBRID_PROGRAM,
        filename="qaoa_ring.py", timeout=timeout,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        info = broker.programs.info(job.job_id)
        if info.record.status not in ("queued", "running"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo's hybrid program did not end within {timeout:g} s")
        time.sleep(0.05)
    return {
        "job_id": job.job_id,
        "status": info.record.status,
        "message": info.record.message,
        "qpu_calls": info.qpu_calls,
        "return_value": info.return_value,
        "timings": info.timings,
    }
