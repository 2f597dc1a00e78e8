"""Broker throughput: session tasks per second through the ZeroMQ fast path.

A real broker (SQLite store in a temp dir, or ``--db postgresql://…``) with a
null (instant) resource, so the figure is the broker's own cost: admission,
persistence, scheduling, executor hand-off and transport. Several clients run
concurrently, each in its own session, each sending tasks back to back.
Prints medians over repetitions; ``--json PATH`` writes a report.

Run: ``.venv/bin/python bench/bench_broker.py [--quick] [--json results/broker.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from qiskit.circuit import QuantumCircuit

from qhpc.api.fastpath import FastPathClient, FastPathServer
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask
from qhpc.resources.codec import encode_payload
from qhpc.store import Store


def payload_bytes() -> bytes:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return encode_payload(SamplerTask((circuit,), shots=100))


def fastpath_rate(
    broker: Broker, server: FastPathServer, clients: int, tasks: int, pipelined: bool = False
) -> float:
    tokens = [
        broker.open_session(user=f"u{i}", account="bench", resource="null",
                            deadline=time.time() + 3600)[1]
        for i in range(clients)
    ]  # fmt: skip
    data = payload_bytes()
    connections = [FastPathClient(server.endpoint, t, timeout=60) for t in tokens]
    barrier = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def work(client: FastPathClient) -> None:
        barrier.wait()
        try:
            if pipelined:
                client.run_many_encoded([data] * tasks, window=64)
            else:
                for _ in range(tasks):
                    client.run_encoded(data)
        except BaseException as exc:  # reported below: a failed run has no rate
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} client(s) failed: {failures[0]!r}")
    for client in connections:
        broker.close_session(client.session_id)
        client.close()
    return clients * tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few tasks (CI smoke test)")
    parser.add_argument("--db", help="store URL (default: SQLite in a temp dir)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    tasks = 50 if args.quick else 500
    repeats = 1 if args.quick else 3

    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    with tempfile.TemporaryDirectory() as tmp, Store.open(args.db or Path(tmp) / "b.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        server = FastPathServer(broker).start()
        try:
            one = [fastpath_rate(broker, server, 1, tasks) for _ in range(repeats)]
            four = [fastpath_rate(broker, server, 4, tasks // 4) for _ in range(repeats)]
            piped = [
                fastpath_rate(broker, server, 1, tasks * 4, pipelined=True) for _ in range(repeats)
            ]
        finally:
            server.stop()
            broker.stop()
            registry.close()
        backend = store.backend
    report = {
        "store": backend,
        "fastpath_1_client_tasks_per_s": statistics.median(one),
        "fastpath_1_client_roundtrip_ms": 1e3 / statistics.median(one),
        "fastpath_4_clients_tasks_per_s": statistics.median(four),
        "fastpath_pipelined_tasks_per_s": statistics.median(piped),
        "goal_tasks_per_s": 10_000,
    }
    for key, value in report.items():
        print(f"{key:<34} {value:>12.3f}" if isinstance(value, float) else f"{key:<34} {value:>12}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
