"""Broker throughput: the ZeroMQ fast path and the REST API.

A real broker (SQLite store in a temp dir, or ``--db postgresql://…``) with a
null (instant) resource, so the figures are the broker's own cost: admission,
persistence, scheduling, executor hand-off and transport.

- Fast path: one or several client processes (as real programs are: clients as
  threads of this process would share the broker's interpreter lock), each in its
  own session, each sending tasks back to back, one at a time or 64 in flight;
  with ``--postgres URL`` (or ``$QHPC_BENCH_POSTGRES_URL``) the same again on
  PostgreSQL, in the same run, reported beside SQLite's. The same one-at-a-time
  loops also run over the direct channel on TCP (``direct://``, ``qhpc serve
  --direct-bind``), which has no pipelining (one frame in flight per connection).
- REST: a real uvicorn server in this process on 127.0.0.1 (a free port), with
  several concurrent httpx clients (threads, one keep-alive connection each).
  Requests/s of ``GET /v1/health`` (no token, no store) and ``GET /v1/resources``
  (token lookup + resource status); then batch work end to end: N jobs of one
  task each, and jobs of 100 tasks each, submitted as encoded payloads with
  ``POST /v1/jobs``, timed from the first request until the store shows every
  job final. Clients and server share this process (one GIL) and the machine's
  cores, so the REST figures are a floor for a server running alone.

Prints medians over repetitions; ``--json PATH`` writes a report.

Run: ``.venv/bin/python bench/bench_broker.py [--quick] [--json results/broker.json]``
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from _report import write_report
from qiskit.circuit import QuantumCircuit

from qhpc.api import create_app
from qhpc.api.fastpath import FastPathServer
from qhpc.broker.dispatch import DirectDispatcher
from qhpc.broker.service import Broker, BrokerConfig
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask
from qhpc.resources.codec import encode_payload
from qhpc.security import Role
from qhpc.store import FINAL_STATES, Store

#: concurrent REST clients (threads, one keep-alive connection each)
REST_CLIENTS = 4
#: tasks per job in the batch tasks/s measurement
BATCH_TASKS_PER_JOB = 100
#: the issue's goal for REST on a 2-core machine
REST_GOAL_REQUESTS_PER_S = 1_000


def payload_bytes() -> bytes:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return encode_payload(SamplerTask((circuit,), shots=100))


#: one fast-path client: a process of its own, as a real program is (clients as threads
#: of the broker's process would share its interpreter lock and understate the broker)
CLIENT = """
import sys, time
sys.path.insert(0, sys.argv[5])
from bench_broker import payload_bytes
from qhpc.session import open_channel
client = open_channel(sys.argv[1], sys.stdin.readline().strip(), timeout=120)
data, tasks, pipelined = payload_bytes(), int(sys.argv[2]), sys.argv[3] == "1"
for _ in range(int(sys.argv[4])):  # warm-up: caches and the broker's estimate
    client.run_encoded(data)
print("ready", flush=True)
sys.stdin.readline()  # the common start
started = time.perf_counter()
if pipelined:
    client.run_many_encoded([data] * tasks, window=64)
else:
    for _ in range(tasks):
        client.run_encoded(data)
print(time.perf_counter() - started, flush=True)
client.close()
"""
WARMUP_TASKS = 50


def fastpath_rate(
    broker: Broker, endpoint: str, clients: int, tasks: int, pipelined: bool = False
) -> float:
    """Tasks/s of ``clients`` client processes, each in its own session, each sending
    ``tasks`` tasks (one at a time, or 64 in flight), from a common start."""
    sessions = [
        broker.open_session(user=f"u{i}", account="bench", resource="null",
                            deadline=time.time() + 3600)
        for i in range(clients)
    ]  # fmt: skip
    here = str(Path(__file__).resolve().parent)
    command = [sys.executable, "-c", CLIENT, endpoint, str(tasks), str(int(pipelined)),
               str(WARMUP_TASKS), here]  # fmt: skip
    procs = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in sessions
    ]
    try:
        for proc, (_, token) in zip(procs, sessions, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(token + "\n")  # the token on a pipe, never an argument
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a fast-path client failed to start")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        # Each client times its own loop (its exit, with Qiskit's teardown, is not part
        # of it); they start within microseconds, so the slowest one's time is the wall's.
        took = []
        for proc in procs:
            output, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"a fast-path client failed (exit {proc.returncode})")
            took.append(float(output.split()[-1]))
        elapsed = max(took)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for session, _ in sessions:
        broker.close_session(session.session_id)
    return clients * tasks / elapsed


def fastpath_report(db: str | Path, tasks: int, repeats: int) -> dict[str, float | str]:
    """The fast-path figures on the store at ``db`` (a broker of its own)."""
    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    with Store.open(db) as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        server = FastPathServer(broker).start()
        direct = DirectDispatcher(broker, tcp=("127.0.0.1", 0), unix=False)
        assert direct.tcp_endpoint is not None
        try:
            zmq = server.endpoint
            one = [fastpath_rate(broker, zmq, 1, tasks) for _ in range(repeats)]
            four = [fastpath_rate(broker, zmq, 4, tasks // 4) for _ in range(repeats)]
            piped = [
                fastpath_rate(broker, zmq, 1, tasks * 4, pipelined=True) for _ in range(repeats)
            ]
            tcp = [fastpath_rate(broker, direct.tcp_endpoint, 1, tasks) for _ in range(repeats)]
            tcp_four = [
                fastpath_rate(broker, direct.tcp_endpoint, 4, tasks // 4) for _ in range(repeats)
            ]
            if not broker.journal.flush(120):
                raise RuntimeError("the journal did not commit the fast-path tasks")
        finally:
            direct.stop()
            server.stop()
            broker.stop()
            registry.close()
        return {
            "store": store.backend,
            "fastpath_1_client_tasks_per_s": statistics.median(one),
            "fastpath_1_client_roundtrip_ms": 1e3 / statistics.median(one),
            "fastpath_4_clients_tasks_per_s": statistics.median(four),
            "fastpath_pipelined_tasks_per_s": statistics.median(piped),
            "direct_tcp_1_client_tasks_per_s": statistics.median(tcp),
            "direct_tcp_1_client_roundtrip_ms": 1e3 / statistics.median(tcp),
            "direct_tcp_4_clients_tasks_per_s": statistics.median(tcp_four),
        }


# -- REST ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def rest_server(broker: Broker) -> Iterator[str]:
    """uvicorn serving the broker's API in a thread of this process; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(create_app(broker), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    # Outside the main thread, Server.run leaves signal handling alone.
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def in_parallel(
    url: str, token: str | None, clients: int, work: Callable[[httpx.Client, int], None]
) -> float:
    """Run ``work(connection, index)`` in ``clients`` threads from a common start.

    Each thread has its own keep-alive connection, opened before the start.
    Returns the ``perf_counter`` time of the start; raises if any thread failed.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connections = [httpx.Client(base_url=url, headers=headers, timeout=120) for _ in range(clients)]
    for connection in connections:
        connection.get("/v1/health").raise_for_status()
    barrier = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def run(connection: httpx.Client, index: int) -> None:
        barrier.wait()
        try:
            work(connection, index)
        except BaseException as exc:  # reported below: a failed run has no rate
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c, i)) for i, c in enumerate(connections)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    for connection in connections:
        connection.close()
    if failures:
        raise RuntimeError(f"{len(failures)} REST client(s) failed: {failures[0]!r}")
    return started


def expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        request = response.request
        raise RuntimeError(
            f"{request.method} {request.url.path}: {response.status_code} {response.text[:300]}"
        )


def rest_requests_rate(url: str, path: str, token: str | None, clients: int, total: int) -> float:
    """GET ``path`` about ``total`` times over ``clients`` connections; requests per second."""
    each = max(1, total // clients)

    def work(connection: httpx.Client, index: int) -> None:
        for _ in range(each):
            expect(connection.get(path), 200)

    started = in_parallel(url, token, clients, work)
    return clients * each / (time.perf_counter() - started)


def final_jobs(store: Store) -> tuple[int, int]:
    """(jobs in a final state, of which completed) across the whole store."""
    counts = store.job_counts()
    return sum(counts[s] for s in FINAL_STATES), counts["completed"]


def rest_batch_seconds(
    url: str, token: str, store: Store, clients: int, jobs: int, tasks_per_job: int
) -> float:
    """Submit ``jobs`` jobs of ``tasks_per_job`` tasks over REST; seconds until all are final.

    Completion is read from the store in this process every 20 ms, not over REST, so
    that polling does not compete with the submissions for the server.
    """
    encoded = base64.b64encode(payload_bytes()).decode("ascii")
    body = {"resource": "null", "payloads": [encoded] * tasks_per_job, "name": "bench"}
    final_before, completed_before = final_jobs(store)

    def work(connection: httpx.Client, index: int) -> None:
        for _ in range(index, jobs, clients):
            expect(connection.post("/v1/jobs", json=body), 201)

    started = in_parallel(url, token, clients, work)
    deadline = time.monotonic() + 600
    while True:
        final, completed = final_jobs(store)
        if final >= final_before + jobs:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {final - final_before} of {jobs} jobs final after 600 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    if completed - completed_before != jobs:
        raise RuntimeError(f"{jobs - (completed - completed_before)} job(s) did not complete")
    return elapsed


def rest_report(broker: Broker, quick: bool, repeats: int) -> dict[str, float | int]:
    """Medians of the REST measurements over ``repeats``, as report entries."""
    requests = 400 if quick else 3000
    single_jobs = 60 if quick else 600
    big_jobs = 2 if quick else 10
    _, token = broker.access.issue(Role.USER, "bench", account="bench")
    health: list[float] = []
    listing: list[float] = []
    single: list[float] = []
    batch: list[float] = []
    with rest_server(broker) as url:
        for _ in range(repeats):
            health.append(rest_requests_rate(url, "/v1/health", None, REST_CLIENTS, requests))
            listing.append(rest_requests_rate(url, "/v1/resources", token, REST_CLIENTS, requests))
            seconds = rest_batch_seconds(url, token, broker.store, REST_CLIENTS, single_jobs, 1)
            single.append(single_jobs / seconds)
            seconds = rest_batch_seconds(
                url, token, broker.store, REST_CLIENTS, big_jobs, BATCH_TASKS_PER_JOB
            )
            batch.append(big_jobs * BATCH_TASKS_PER_JOB / seconds)
    return {
        "rest_clients": REST_CLIENTS,
        "rest_health_requests_per_s": statistics.median(health),
        "rest_resources_requests_per_s": statistics.median(listing),
        "rest_batch_1task_jobs_per_s": statistics.median(single),
        "rest_batch_tasks_per_s": statistics.median(batch),
        "rest_batch_tasks_per_job": BATCH_TASKS_PER_JOB,
        "rest_goal_requests_per_s": REST_GOAL_REQUESTS_PER_S,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few tasks (CI smoke test)")
    parser.add_argument("--db", help="store URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("QHPC_BENCH_POSTGRES_URL"),
        help="also measure the fast path on this PostgreSQL store, in the same run "
        "(default: $QHPC_BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    tasks = 200 if args.quick else 4000
    repeats = 1 if args.quick else 3

    with tempfile.TemporaryDirectory() as tmp:
        fast = fastpath_report(args.db or Path(tmp) / "b.db", tasks, repeats)
        postgres = {} if not args.postgres else fastpath_report(args.postgres, tasks, repeats)
        registry = ResourceRegistry([ResourceSpec("null", "null", {})])
        with Store.open(args.db or Path(tmp) / "r.db") as store:
            broker = Broker(store, registry, BrokerConfig(policy="fifo"))
            broker.start()
            try:
                rest = rest_report(broker, args.quick, repeats)
            finally:
                broker.stop()
                registry.close()
    report: dict[str, object] = {
        **fast,
        "fastpath_clients_are_processes": True,
        "goal_tasks_per_s": 10_000,
        "goal_one_at_a_time_tasks_per_s": 5_000,
        **rest,
    }
    if postgres:
        report["postgresql"] = postgres
    for key, value in report.items():
        if isinstance(value, dict):
            for inner, figure in value.items():
                shown = f"{figure:>12.3f}" if isinstance(figure, float) else f"{figure}"
                print(f"{key + '.' + inner:<44} {shown}")
        else:
            print(f"{key:<44} {value:>12.3f}" if isinstance(value, float) else f"{key:<44} {value}")
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
