"""Dispatcher benchmark: message floors, the seed's ZeroMQ ping-pong, runtime start and stop.

All parts run in one process tree and one run (this machine is shared and noisy,
so compare ratios taken in the same run, never figures from different runs):

(a) raw Unix stream socket round trip between two processes (50-byte message): the floor.
(b) Quantum Inspire's Appendix-A pattern: a task-manager process with pyzmq REQ
    sockets to a classical-runtime process and a quantum-runtime process (REP, ipc),
    sleeps removed. One iteration = classical → TM → quantum → TM → classical, i.e.
    two REQ/REP round trips, timed at the task manager that drives the loop.
(c) qhpc's per-iteration overhead with a null circuit (the instant ``null``
    resource), client-driven (ZeroMQ fast path) and co-located (a hybrid job in the
    broker's runtime pool, direct Unix-socket channel): see
    :func:`qhpc_iteration_overhead`. Each as the user's ``qpu.run(circuit)`` and
    with the payload pre-encoded (transport + broker only).
(d) cold start (a fresh interpreter importing numpy, scipy, qiskit, qiskit_aer until
    it answers) against a warm start through :class:`qhpc.runtime.RuntimePool`
    (submit → user code running; submit → the pool has the program's first frame),
    and termination: the program's return → its outcome known to the broker, outcome
    received → process reaped, and kill sent → reaped. For
    scale, the kernel's own floor of the latter: a process that has imported the same
    modules forks a child and times "tell it to _exit" → "child reaped" (no qhpc).

Goals (from the issue): (c) ≤ 1.5 × (a) and (b) ≥ 5 × (c); warm start ≤ cold / 50;
termination ≤ 1 ms. Prints medians and p99; ``--json PATH`` writes a report.

Run: ``.venv/bin/python bench/bench_dispatch.py [--quick] [--json results/dispatch.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import write_report

MESSAGE = b"x" * 50
#: the strings of the seed's Appendix A
CIRCUIT = "version 1.0; qubits 2; H q[0]; measure_all"
MEASUREMENTS = '{"001": 512}'
COLD_IMPORTS = "numpy, scipy, qiskit, qiskit_aer"
NULL_PROGRAM = "def main():\n    return None\n"
LOOP_PROGRAM = "import time\ndef main():\n    while True:\n        time.sleep(0.001)\n"
GOAL_C_OVER_A = 1.5
GOAL_B_OVER_C = 5.0
GOAL_WARM_FRACTION_OF_COLD = 1 / 50
GOAL_TERMINATION_S = 1e-3


def summary(samples_s: list[float]) -> dict[str, float | int]:
    """Median and p99 (nearest rank) in microseconds."""
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return {"median_us": statistics.median(ordered) * 1e6, "p99_us": p99 * 1e6, "n": len(ordered)}


def spawn_role(
    role: str, *extra: str, pass_fds: tuple[int, ...] = (), env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *extra],
        pass_fds=pass_fds, stdout=subprocess.PIPE, text=True,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


# -- (a) raw Unix socket ---------------------------------------------------------------------


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def role_echo(fd: int) -> None:
    with socket.socket(fileno=fd) as sock:
        while True:
            try:
                sock.sendall(recv_exact(sock, len(MESSAGE)))
            except ConnectionError:
                return


def raw_unix_round_trips(iterations: int, repeats: int) -> list[float]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    echo = spawn_role("echo", "--fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),))
    theirs.close()
    samples: list[float] = []
    try:
        for repeat in range(repeats + 1):  # the first pass warms up and is dropped
            times = []
            for _ in range(iterations):
                start = time.perf_counter()
                ours.sendall(MESSAGE)
                recv_exact(ours, len(MESSAGE))
                times.append(time.perf_counter() - start)
            if repeat:
                samples += times
    finally:
        ours.close()
        stop(echo)
    return samples


# -- (b) the seed's Appendix A with pyzmq -------------------------------------------------------


def role_runtime(endpoint: str, reply: str) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.REP)
    sock.bind(endpoint)
    print("bound", flush=True)
    while True:
        message = sock.recv_string()
        if message == "stop":
            sock.send_string("bye")
            break
        sock.send_string(reply)
    sock.close(linger=0)
    context.term()


def role_task_manager(classical_endpoint: str, quantum_endpoint: str, iterations: int) -> None:
    import zmq

    context = zmq.Context()
    quantum = context.socket(zmq.REQ)
    quantum.connect(quantum_endpoint)
    classical = context.socket(zmq.REQ)
    classical.connect(classical_endpoint)
    classical.send_string("{}")
    circuit = classical.recv_string()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        quantum.send_string(circuit)
        measurements = quantum.recv_string()
        classical.send_string(measurements)
        circuit = classical.recv_string()
        times.append(time.perf_counter() - start)
    for sock in (classical, quantum):
        sock.send_string("stop")
        sock.recv_string()
        sock.close(linger=0)
    context.term()
    json.dump(times, sys.stdout)


def appendix_a_iterations(iterations: int, repeats: int) -> list[float]:
    samples: list[float] = []
    with tempfile.TemporaryDirectory(prefix="qhpc-bench-") as tmp:
        for repeat in range(repeats + 1):  # the first pass warms up and is dropped
            classical_ep, quantum_ep = (
                f"ipc://{tmp}/classical-{repeat}",
                f"ipc://{tmp}/quantum-{repeat}",
            )
            classical = spawn_role("classical", "--endpoint", classical_ep)
            quantum = spawn_role("quantum", "--endpoint", quantum_ep)
            try:
                for runtime in (classical, quantum):
                    assert runtime.stdout is not None and runtime.stdout.readline() == "bound\n"
                manager = spawn_role(
                    "task-manager", "--endpoint", classical_ep, "--endpoint2", quantum_ep,
                    "--iterations", str(iterations if repeat else max(200, iterations // 10)),
                )  # fmt: skip
                output, _ = manager.communicate(timeout=600)
                if repeat:
                    samples += json.loads(output)
            finally:
                for process in (classical, quantum):
                    try:
                        process.wait(5)
                    except subprocess.TimeoutExpired:
                        stop(process)
    return samples


# -- (c) qhpc per-iteration overhead ------------------------------------------------------------

#: the loop of (c), the same in both modes: null iterations timed where the program runs,
#: ``qpu.run`` and pre-encoded interleaved so that any disturbance hits both alike
ITERATION_LOOP = """
import time
from qiskit import QuantumCircuit
from qhpc.resources import SamplerTask
from qhpc.resources.codec import encode_payload


def main(qpu, iterations, settle=0.0):
    # Co-located: the pool forks and warms a replacement spare as this program starts;
    # let that finish, as it would between the iterations of a real program.
    time.sleep(settle)
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    data = encode_payload(SamplerTask((circuit,), shots=1))
    client = qpu._client
    for _ in range(200):  # warm
        qpu.run(circuit, shots=1)
        client.run_encoded(data)
    full, encoded = [], []
    for _ in range(iterations):
        started = time.perf_counter()
        qpu.run(circuit, shots=1)
        middle = time.perf_counter()
        client.run_encoded(data)
        encoded.append(time.perf_counter() - middle)
        full.append(middle - started)
    return {"qpu.run": full, "pre-encoded": encoded}
"""
CO_LOCATED_PROGRAM = ITERATION_LOOP


def role_fastpath_client(endpoint: str, token: str, iterations: int) -> None:
    """The client-driven loop: a separate process (as a Slurm job would be)."""
    from qhpc.session import QPU, open_channel

    namespace: dict[str, Any] = {}
    exec(compile(ITERATION_LOOP, "<loop>", "exec"), namespace)
    qpu = QPU(open_channel(endpoint, token))  # the fast path, or direct:// over TCP
    json.dump(namespace["main"](qpu, iterations), sys.stdout)
    qpu.close()


def qhpc_iteration_overhead(iterations: int) -> dict[str, dict[str, list[float]]]:
    """Per-iteration cost of one null-circuit iteration through qhpc, in seconds.

    One broker (SQLite store, the instant ``null`` resource, so everything measured
    is dispatch overhead) serves both modes:

    ``client-driven``: the loop runs in a separate process; each iteration is a
    session task through the broker's ZeroMQ fast path (TCP loopback).
    ``client-driven, direct TCP``: the same loop over the direct channel's frames on
    TCP loopback (``qhpc serve --direct-bind``), no ZeroMQ.
    ``co-located``: the loop runs in a runtime-pool program started by the broker
    (a hybrid job); each iteration goes over the direct Unix-socket channel and runs
    inline on the broker's connection thread.

    Per mode two figures: ``qpu.run`` (the user's call: circuit encoding, transport,
    broker, result decoding) and ``pre-encoded`` (the same payload bytes sent again:
    transport and broker only).
    """
    from qhpc.api.fastpath import FastPathServer
    from qhpc.broker.dispatch import DirectDispatcher
    from qhpc.broker.service import Broker, BrokerConfig
    from qhpc.resources import ResourceRegistry, ResourceSpec
    from qhpc.store import Store

    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    found: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "d.db") as store:
        broker = Broker(store, registry, BrokerConfig(policy="fifo", runtime_pool_size=1))
        broker.start()
        server = FastPathServer(broker).start()
        try:
            _, token = broker.open_session(
                user="bench", account="bench", resource="null", deadline=time.time() + 3600
            )
            # The session token goes by environment, never argv (visible in /proc).
            client = spawn_role("fastpath-client", "--endpoint", server.endpoint,
                                "--iterations", str(iterations),
                                env={"QHPC_SESSION": token})  # fmt: skip
            output, _ = client.communicate(timeout=600)
            if client.returncode:
                raise RuntimeError(f"client-driven loop failed with code {client.returncode}")
            found["client-driven"] = json.loads(output)
            direct = DirectDispatcher(broker, tcp=("127.0.0.1", 0), unix=False)
            try:
                assert direct.tcp_endpoint is not None
                client = spawn_role("fastpath-client", "--endpoint", direct.tcp_endpoint,
                                    "--iterations", str(iterations),
                                    env={"QHPC_SESSION": token})  # fmt: skip
                output, _ = client.communicate(timeout=600)
            finally:
                direct.stop()
            if client.returncode:
                raise RuntimeError(f"direct TCP loop failed with code {client.returncode}")
            found["client-driven, direct TCP"] = json.loads(output)
            job = broker.programs.submit(
                user="bench", account="bench", resource="null", source=CO_LOCATED_PROGRAM,
                args={"iterations": iterations, "settle": 0.5}, timeout=600,
            )  # fmt: skip
            while broker.get_job(job.job_id).state not in ("completed", "failed", "cancelled"):
                time.sleep(0.1)
            info = broker.programs.info(job.job_id)
            if info.record.status != "completed":
                raise RuntimeError(f"co-located loop {info.record.status}: {info.record.message}")
            found["co-located"] = info.return_value
        finally:
            server.stop()
            broker.stop()
            registry.close()
    return found


# -- (d) cold vs warm start, termination ------------------------------------------------------


def cold_starts(repeats: int) -> list[float]:
    code = f"import sys, {COLD_IMPORTS}; sys.stdout.write('ready\\n'); sys.stdout.flush()"
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        samples.append(time.perf_counter() - start)
        process.wait(30)
    return samples


def role_exit_floor(children: int) -> None:
    import importlib

    for name in COLD_IMPORTS.split(", "):
        importlib.import_module(name)
    times = []
    for _ in range(children + 3):
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            theirs.send(b"r")
            theirs.recv(1)
            os._exit(0)
        theirs.close()
        ours.recv(1)
        pidfd = os.pidfd_open(pid)
        time.sleep(0.02)
        start = time.perf_counter()
        ours.send(b"x")
        select.select([pidfd], [], [])
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - start)
        os.close(pidfd)
        ours.close()
    json.dump(times[3:], sys.stdout)


def exit_floor(children: int) -> list[float]:
    process = spawn_role("exit-floor", "--iterations", str(children))
    output, _ = process.communicate(timeout=300)
    samples: list[float] = json.loads(output)
    return samples


def warm_runs(runs: int, kills: int) -> dict[str, list[float]]:
    from qhpc.runtime import ProgramStatus, RuntimePool

    found: dict[str, list[float]] = {
        "start_s": [], "first_reply_s": [], "termination_s": [], "total_s": [],
        "outcome_delivery_s": [], "kill_termination_s": [],
    }  # fmt: skip
    with RuntimePool(size=2) as pool:
        pool.wait_ready(120)
        for index in range(runs + 3):  # three warm-up runs, dropped
            time.sleep(
                0.12
            )  # spares refilled, the last exit reaped: a start "when a spare is ready"
            outcome = pool.run(NULL_PROGRAM, timeout=30)
            if outcome.status is not ProgramStatus.COMPLETED:
                raise RuntimeError(f"null program {outcome.status}: {outcome.error}")
            if index >= 3:
                for key in ("start_s", "first_reply_s", "termination_s", "total_s",
                            "outcome_delivery_s"):  # fmt: skip
                    found[key].append(outcome.timings[key])
        for _ in range(kills):
            time.sleep(0.12)
            handle = pool.start_program(LOOP_PROGRAM, timeout=30)
            while not handle.running:
                time.sleep(0.001)
            handle.cancel()
            outcome = handle.wait(10)
            found["kill_termination_s"].append(outcome.timings["termination_s"])
    return found


# -- report -----------------------------------------------------------------------------------


def line(name: str, stats: dict[str, float | int] | None, note: str = "") -> None:
    if stats is None:
        print(f"  {name:<46} not measured yet")
    else:
        median, p99 = stats["median_us"], stats["p99_us"]
        print(
            f"  {name:<46} median {median:>10.1f} µs   p99 {p99:>10.1f} µs   n={stats['n']}{note}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint2", help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "echo":
        return role_echo(args.fd)
    if args.role in ("classical", "quantum"):
        return role_runtime(args.endpoint, CIRCUIT if args.role == "classical" else MEASUREMENTS)
    if args.role == "task-manager":
        return role_task_manager(args.endpoint, args.endpoint2, args.iterations)
    if args.role == "exit-floor":
        return role_exit_floor(args.iterations)
    if args.role == "fastpath-client":
        return role_fastpath_client(args.endpoint, os.environ["QHPC_SESSION"], args.iterations)

    iterations, repeats = (2_000, 1) if args.quick else (20_000, 3)
    runs, kills, colds = (10, 5, 2) if args.quick else (60, 20, 5)
    load_before = os.getloadavg()
    started = time.perf_counter()
    raw = summary(raw_unix_round_trips(iterations, repeats))
    zmq_a = summary(appendix_a_iterations(iterations, repeats))
    # capped: a client-driven iteration is a broker round trip of a millisecond or two
    qhpc_c = qhpc_iteration_overhead(min(iterations, 2_000))
    cold = summary(cold_starts(colds))
    warm = warm_runs(runs, kills)
    floor = summary(exit_floor(runs))
    warm_stats = {key: summary(values) for key, values in warm.items()}
    load_after = os.getloadavg()

    print(f"bench_dispatch ({'quick' if args.quick else 'full'}): {platform.node()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load {load_before[0]:.2f} → {load_after[0]:.2f}")  # fmt: skip
    print("(a) floor")
    line("raw Unix stream socket round trip", raw)
    print("(b) Appendix-A pattern, pyzmq REQ/REP ipc, 3 processes")
    line("iteration classical → TM → quantum → TM → classical", zmq_a)
    print("(c) qhpc per-iteration overhead, null circuit")
    for mode, kinds in qhpc_c.items():
        for kind, samples in kinds.items():
            line(f"{mode}, {kind}", summary(samples))
    print("(d) starting and stopping a classical runtime")
    line(f"cold: fresh interpreter importing {COLD_IMPORTS}", cold)
    line("warm: submit → user code running (RuntimePool)", warm_stats["start_s"])
    line("warm: submit → first frame at the pool", warm_stats["first_reply_s"])
    line("warm: submit → outcome of a null program", warm_stats["total_s"])
    line("termination: program returned → outcome known", warm_stats["outcome_delivery_s"])
    line("termination: outcome received → reaped", warm_stats["termination_s"])
    line("termination: kill sent → reaped (cancel)", warm_stats["kill_termination_s"])
    line("kernel floor: forked child told to _exit → reaped", floor)

    warm_ratio = warm_stats["start_s"]["median_us"] / cold["median_us"]
    c_medians = {
        f"{mode}, {kind}": summary(samples)["median_us"]
        for mode, kinds in qhpc_c.items()
        for kind, samples in kinds.items()
    }
    goals: dict[str, Any] = {
        "c_over_a": {k: v / raw["median_us"] for k, v in c_medians.items()},
        "b_over_c": {k: zmq_a["median_us"] / v for k, v in c_medians.items()},
        "warm_over_cold": warm_ratio,
        "warm_over_cold_met": warm_ratio <= GOAL_WARM_FRACTION_OF_COLD,
        "termination_median_us": warm_stats["termination_s"]["median_us"],
        "termination_met": warm_stats["termination_s"]["median_us"] <= GOAL_TERMINATION_S * 1e6,
        "outcome_delivery_met": (
            warm_stats["outcome_delivery_s"]["median_us"] <= GOAL_TERMINATION_S * 1e6
        ),
        "kill_termination_met": (
            warm_stats["kill_termination_s"]["median_us"] <= GOAL_TERMINATION_S * 1e6
        ),
    }
    print("goals")
    for key in c_medians:
        c_over_a, b_over_c = goals["c_over_a"][key], goals["b_over_c"][key]
        print(f"  {key:<34} (c)/(a) = {c_over_a:6.1f} "
              f"{'met' if c_over_a <= GOAL_C_OVER_A else 'NOT met':>7}   (b)/(c) = {b_over_c:5.2f} "
              f"{'met' if b_over_c >= GOAL_B_OVER_C else 'NOT met':>7}")  # fmt: skip
    print(f"  warm ≤ cold / 50                               warm/cold = 1/{1 / warm_ratio:.0f}"
          f"   {'met' if goals['warm_over_cold_met'] else 'NOT met'}")  # fmt: skip
    for key, label in (("outcome_delivery_s", "termination ≤ 1 ms (return → outcome known)"),
                       ("termination_s", "termination ≤ 1 ms (outcome → reaped)"),
                       ("kill_termination_s", "termination ≤ 1 ms (kill → reaped)")):  # fmt: skip
        median = warm_stats[key]["median_us"]
        print(f"  {label:<46} {median / 1000:.2f} ms   {'met' if median <= 1000 else 'NOT met'}")
    print(f"total {time.perf_counter() - started:.1f} s")

    if args.json:
        report = {
            "quick": args.quick, "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_before": load_before, "load_after": load_after,
            "a_raw_unix_round_trip": raw, "b_appendix_a_zmq_iteration": zmq_a,
            "c_qhpc_iteration": {f"{m}, {k}": summary(v) for m, kinds in qhpc_c.items()
                                 for k, v in kinds.items()},
            "d_cold_start": cold, "d_warm": warm_stats, "d_exit_floor_no_qhpc": floor,
            "goals": goals,
        }  # fmt: skip
        write_report(args.json, report)


if __name__ == "__main__":
    main()
