"""End-to-end VQE overhead: a 100-iteration VQE through qhpc vs calling Aer directly.

Workload: H2 at 0.735 Å (STO-3G), Jordan-Wigner mapping, 4 qubits, 15 Pauli
terms (written out in ``H2_JW`` below; lowest eigenvalue −1.857275 Ha,
electronic energy). Ansatz: Hartree-Fock state |0011⟩, then RY on every qubit,
a CX ladder, RY on every qubit (8 parameters). Exact expectation values (no
shots). The optimiser is ``scipy.optimize.minimize(method="COBYLA",
maxiter=N, tol=1e-12)`` from a fixed start: COBYLA then uses exactly N energy
evaluations, the same N points in every variant (exact values are
deterministic), so the variants differ only in how each evaluation reaches Aer:

- ``aer_direct`` — scipy around Qiskit Aer alone, as a careful user writes it by hand:
  ``save_expectation_value`` of the whole Hamiltonian (15 terms) added once to the
  parameterised ansatz, then per evaluation one ``assign_parameters`` and one
  ``AerSimulator(method="statevector").run(shots=1)`` (the fastest of the hand-written
  forms measured: adding the save instruction at every evaluation costs ~0.4 ms more,
  Aer's ``EstimatorV2`` ~3 ms more per evaluation);
- ``qhpc_local`` — ``ScipyMinimize | ObservableMeasurement | Transpile | qpu`` over a
  local ``aer`` resource (``LocalQPU``), in this process;
- ``qhpc_fastpath`` — the same stack, client-driven, over a session on a real broker
  (``qhpc serve`` in its own process): every evaluation is one session task over the
  ZeroMQ fast path (what ``qhpc.connect().qpu()`` gives inside a Slurm job);
- ``qhpc_rest`` — the same stack over a ``RemoteQPU`` with the plugins on the client:
  one broker job per evaluation through REST;
- ``qhpc_broker_stack`` — the same stack handed whole to the broker, rebuilt there and
  run next to the QPU as a hybrid job at session priority (only when the broker
  offers server-side stacks; the time includes submitting and collecting the job).

Each variant runs ``--repeats`` whole VQEs; the report gives the median VQE time,
the median per evaluation, and the overhead over ``aer_direct`` (the issue's goal:
≤ 10 % through the remote broker). ``device_share`` is the fraction of the
local stack's time spent inside the resource's ``run()`` (the rest is qhpc's
stack: plugins, payload plan, result handling).

Run: ``.venv/bin/python bench/bench_vqe.py [--quick] [--repeats 5] [--json results/vqe.json]``
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _report import write_report
from qiskit.circuit import ParameterVector, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

from qhpc.program import (
    Executor,
    Job,
    LocalQPU,
    ObservableMeasurement,
    RemoteQPU,
    ScipyMinimize,
    Transpile,
    session_qpu,
)
from qhpc.resources import AerResource, Payload, TaskResult

#: H2, 0.735 Å, STO-3G, Jordan-Wigner (qubit 0 is the rightmost letter), in Ha
H2_JW = [
    ("IIII", -0.81054798), ("IIIZ", 0.17218393), ("IIZI", -0.22575349),
    ("IIZZ", 0.12091263), ("IZII", 0.17218393), ("IZIZ", 0.16892754),
    ("ZIII", -0.22575349), ("ZIIZ", 0.16614543), ("YYYY", 0.0452328),
    ("XXYY", 0.0452328), ("YYXX", 0.0452328), ("XXXX", 0.0452328),
    ("IZZI", 0.16614543), ("ZIZI", 0.17464343), ("ZZII", 0.12091263),
]  # fmt: skip
RESOURCE_TOML = '[resources.aer]\ntype = "aer"\nseed = 7\n'


def hamiltonian() -> SparsePauliOp:
    return SparsePauliOp.from_list(H2_JW)


def ansatz() -> QuantumCircuit:
    theta = ParameterVector("θ", 8)
    circuit = QuantumCircuit(4, name="hf-ry-cx-ry")
    circuit.x([0, 1])
    for q in range(4):
        circuit.ry(theta[q], q)
    for q in range(3):
        circuit.cx(q, q + 1)
    for q in range(4):
        circuit.ry(theta[4 + q], q)
    return circuit


def start_point() -> list[float]:
    return list(np.random.default_rng(11).uniform(-0.2, 0.2, 8))


# -- the variants: each runs one whole VQE and returns (energy, evaluations) ------------------


def aer_direct(iterations: int) -> Callable[[], tuple[float, int]]:
    import qiskit_aer  # noqa: F401  (registers save_expectation_value)
    from qiskit_aer import AerSimulator
    from scipy.optimize import minimize

    simulator = AerSimulator(method="statevector")
    circuit = ansatz()
    circuit.save_expectation_value(hamiltonian(), range(4), label="e")

    def energy(theta: np.ndarray[Any, Any]) -> float:
        bound = circuit.assign_parameters(theta)
        return float(simulator.run(bound, shots=1).result().data(0)["e"])

    def vqe() -> tuple[float, int]:
        found = minimize(
            energy, start_point(), method="COBYLA", tol=1e-12, options={"maxiter": iterations}
        )
        return float(found.fun), int(found.nfev)

    return vqe


def stack_vqe(qpu: Executor, iterations: int) -> Callable[[], tuple[float, int]]:
    stack = (
        ScipyMinimize("COBYLA", tol=1e-12, maxiter=iterations, x0=start_point(), reevaluate=False)
        | ObservableMeasurement()
        | Transpile()
        | qpu
    )
    job = Job.expectation(ansatz(), hamiltonian(), name="vqe-h2-jw")

    def vqe() -> tuple[float, int]:
        result = stack.submit(job)
        assert result.value is not None
        return result.value, int(result.meta["nfev"])

    return vqe


class TimedResource:
    """A resource that adds up the time spent inside its ``run()`` / ``run_now()``."""

    def __init__(self, resource: AerResource) -> None:
        self.resource = resource
        self.name = resource.name
        self.seconds = 0.0

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        started = time.perf_counter()
        try:
            return self.resource.run(payload, timeout)
        finally:
            self.seconds += time.perf_counter() - started

    def run_now(self, payload: Payload, stop: threading.Event) -> Any:
        started = time.perf_counter()
        try:
            return self.resource.run_now(payload, stop)
        finally:
            self.seconds += time.perf_counter() - started

    def target(self) -> Any:
        return self.resource.target()


def measure(
    vqe: Callable[[], tuple[float, int]],
    repeats: int,
    after_warm_up: Callable[[], None] | None = None,
) -> dict[str, Any]:
    vqe()  # warm: pass managers, connections, Aer's first run
    if after_warm_up is not None:
        after_warm_up()
    seconds, energy, evaluations = [], 0.0, 0
    for _ in range(repeats):
        started = time.perf_counter()
        energy, evaluations = vqe()
        seconds.append(time.perf_counter() - started)
    return {"seconds": seconds, "energy": energy, "evaluations": evaluations}


# -- a real broker ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """``qhpc serve`` in its own process on 127.0.0.1 (SQLite in a temporary directory)."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "resources.toml").write_text(RESOURCE_TOML)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.fastpath = f"tcp://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QHPC_")}
        env["XDG_CONFIG_HOME"] = str(tmp)
        self.log = (tmp / "serve.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "qhpc.cli", "serve", "--db", str(tmp / "bench.db"),
                "--port", self.url.rsplit(":", 1)[1], "--fastpath", self.fastpath,
                "--config", str(tmp / "resources.toml"), "--policy", "fifo",
                "--admin-token-file", str(tmp / "admin.token"),
            ],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the broker did not start; see {tmp / 'serve.log'}")
            time.sleep(0.1)
        self.admin = (tmp / "admin.token").read_text().strip()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def program_timings(client: Any, count: int) -> dict[str, float]:
    """Medians of the broker's own timings of the last ``count`` stack jobs (seconds)."""
    hybrid = [j for j in client.jobs(limit=4 * count + 8) if j.get("kind") == "hybrid"][:count]
    timings = [client.program(j["job_id"])["timings"] for j in hybrid]
    keys = sorted(set().union(*timings)) if timings else []
    return {k: statistics.median(t.get(k, 0.0) for t in timings) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 iterations, 2 repeats (smoke)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5, help="whole VQEs per variant")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args()
    iterations = 20 if args.quick else args.iterations
    repeats = 2 if args.quick else args.repeats

    from qhpc.client import connect

    runs: dict[str, dict[str, Any]] = {}
    runs["aer_direct"] = measure(aer_direct(iterations), repeats)
    timed = TimedResource(AerResource("aer", seed=7))

    def reset() -> None:
        timed.seconds = 0.0

    runs["qhpc_local"] = measure(stack_vqe(LocalQPU(timed), iterations), repeats, reset)
    device_seconds = timed.seconds
    timed.resource.close()

    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp))
        try:
            with connect(broker.url, broker.admin) as admin:
                admin.set_account("bench", 1.0)
                session = admin.open_session(
                    "aer", duration_seconds=3600, user="bench", account="bench"
                )
                with session_qpu(broker.fastpath, session["token"], url=broker.url) as fast:
                    runs["qhpc_fastpath"] = measure(stack_vqe(fast, iterations), repeats)
                admin.close_session(session["session_id"])
                rest = RemoteQPU(admin, "aer", account="bench", stacks="client")
                runs["qhpc_rest"] = measure(stack_vqe(rest, iterations), repeats)
                if admin.offers_programs():
                    whole = RemoteQPU(admin, "aer", account="bench", stacks="broker")
                    runs["qhpc_broker_stack"] = measure(stack_vqe(whole, iterations), repeats)
                    runs["qhpc_broker_stack"]["program"] = program_timings(admin, repeats)
                else:
                    print("qhpc_broker_stack: skipped (this broker offers no server-side stacks)")
        finally:
            broker.stop()

    base = statistics.median(runs["aer_direct"]["seconds"])
    report: dict[str, Any] = {
        "workload": "H2 JW 4 qubits, 15 terms, 8-parameter RY-CX ansatz, exact values, COBYLA",
        "iterations": iterations,
        "repeats": repeats,
        "goal_overhead_pct": 10.0,
    }
    print(f"VQE of {iterations} iterations, median of {repeats} runs each")
    for name, run in runs.items():
        median = statistics.median(run["seconds"])
        evaluations = max(run["evaluations"], 1)
        overhead = (median / base - 1) * 100
        report[name] = {
            "median_s": median,
            "per_evaluation_ms": median / evaluations * 1e3,
            "overhead_pct": overhead,
            "energy": run["energy"],
            "evaluations": run["evaluations"],
            "runs_s": run["seconds"],
        }
        print(
            f"{name:<18} {median:7.3f} s  {median / evaluations * 1e3:7.3f} ms/eval  "
            f"overhead vs aer_direct {overhead:+7.1f} %   E={run['energy']:.6f} Ha "
            f"({run['evaluations']} evaluations)"
        )
    program = runs.get("qhpc_broker_stack", {}).get("program")
    if program:
        report["qhpc_broker_stack"]["program_timings_s"] = program
        print(
            "qhpc_broker_stack, the broker's own timings (median per VQE): "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in program.items())
        )
    local_total = sum(runs["qhpc_local"]["seconds"])
    report["qhpc_local"]["device_share"] = device_seconds / local_total
    print(
        f"qhpc_local spends {device_seconds / local_total * 100:.0f} % of its time inside "
        "the resource's run(); the rest is the stack (plugins, payload plan, results)"
    )
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
