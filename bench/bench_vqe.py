"""End-to-end VQE overhead: 100 energy evaluations through qhpc vs calling Aer directly.

The same 100 parameter points of the H2 ansatz (examples/vqe_h2.py) are evaluated
with exact expectation values by:

- ``aer_direct`` — Qiskit Aer alone: bind, ``save_expectation_value``, ``run()``;
- ``qhpc_local`` — a qhpc stack over a local ``aer`` resource (``LocalQPU``);
- ``qhpc_remote_rest`` — the same stack over a real broker (uvicorn on 127.0.0.1,
  SQLite store), one broker job per evaluation through REST;
- ``qhpc_remote_fastpath`` — a session on that broker, one session task per
  evaluation through the ZeroMQ fast path.

An optimiser is deliberately left out so that every variant does exactly the
same evaluations. Prints medians per evaluation and each variant's overhead
over ``aer_direct`` (goal of the issue: ≤ 10 % through the remote broker).

Run: ``.venv/bin/python bench/bench_vqe.py [--quick] [--json results/vqe.json]``
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from vqe_h2 import ansatz, hamiltonian

from qhpc.api.fastpath import FastPathClient, FastPathServer
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.program import Job, LocalQPU, RemoteQPU
from qhpc.resources import (
    AerResource,
    EstimatorResult,
    EstimatorTask,
    ResourceRegistry,
    ResourceSpec,
)
from qhpc.store import Store


def points(count: int) -> list[list[float]]:
    rng = np.random.default_rng(11)
    return [list(rng.uniform(-np.pi, np.pi, 4)) for _ in range(count)]


def time_each(evaluate: Callable[[list[float]], float], thetas: list[list[float]]) -> list[float]:
    evaluate(thetas[0])  # warm caches (pass managers, connections)
    seconds = []
    for theta in thetas:
        started = time.perf_counter()
        evaluate(theta)
        seconds.append(time.perf_counter() - started)
    return seconds


def aer_direct() -> Callable[[list[float]], float]:
    import qiskit_aer  # noqa: F401  (registers save_expectation_value)
    from qiskit_aer import AerSimulator

    simulator = AerSimulator(method="statevector")
    circuit, observable = ansatz(), hamiltonian()

    def evaluate(theta: list[float]) -> float:
        bound = circuit.assign_parameters(theta)
        bound.save_expectation_value(observable, [0, 1], label="e")
        return float(simulator.run(bound, shots=1).result().data(0)["e"])

    return evaluate


def qhpc_stack(qpu: Any) -> Callable[[list[float]], float]:
    circuit, observable = ansatz(), hamiltonian()

    def evaluate(theta: list[float]) -> float:
        value = qpu.submit(Job.expectation(circuit, observable, parameters=theta)).value
        return float(value)

    return evaluate


def fastpath(client: FastPathClient) -> Callable[[list[float]], float]:
    circuit, observable = ansatz(), hamiltonian()

    def evaluate(theta: list[float]) -> float:
        result = client.run(EstimatorTask.create(circuit, observable, [theta]))
        assert isinstance(result, EstimatorResult)
        return result.values[0][0]

    return evaluate


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 evaluations (CI smoke test)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    thetas = points(20 if args.quick else 100)

    import uvicorn

    from qhpc import connect
    from qhpc.api.app import create_app

    timings: dict[str, list[float]] = {}
    timings["aer_direct"] = time_each(aer_direct(), thetas)
    local = AerResource("aer")
    timings["qhpc_local"] = time_each(qhpc_stack(LocalQPU(local)), thetas)
    local.close()

    registry = ResourceRegistry([ResourceSpec("aer", "aer", {})])
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "vqe.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        fast = FastPathServer(broker).start()
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(broker), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        try:
            from qhpc.api.server import bootstrap_admin_token

            token = bootstrap_admin_token(broker) or ""
            with connect(f"http://127.0.0.1:{port}", token) as client:
                remote = RemoteQPU(client, "aer", account="bench")
                timings["qhpc_remote_rest"] = time_each(qhpc_stack(remote), thetas)
            _, session_token = broker.open_session(
                user="bench", account="bench", resource="aer", deadline=time.time() + 3600
            )
            with FastPathClient(fast.endpoint, session_token) as session:
                timings["qhpc_remote_fastpath"] = time_each(fastpath(session), thetas)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            fast.stop()
            broker.stop()
            registry.close()

    base = statistics.median(timings["aer_direct"])
    report: dict[str, Any] = {"evaluations": len(thetas)}
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        p99 = float(np.percentile(seconds, 99))
        report[f"{name}_median_ms"] = median * 1e3
        report[f"{name}_p99_ms"] = p99 * 1e3
        report[f"{name}_total_s"] = sum(seconds)
        report[f"{name}_overhead_pct"] = (sum(seconds) / sum(timings["aer_direct"]) - 1) * 100
        print(
            f"{name:<22} median {median * 1e3:8.3f} ms   p99 {p99 * 1e3:8.3f} ms   "
            f"100-iteration total {sum(seconds) * 100 / len(thetas):7.3f} s   "
            f"overhead vs aer_direct {(median / base - 1) * 100:8.1f} %"
        )
    report["goal_overhead_pct"] = 10.0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
