"""Scheduling study for real: a scaled-time emulator behind a served broker, beside the simulator.

For each of exclusive reservation per job, qhpc multiplex and split jobs (job
chains), a fresh ``qhpc serve`` (SQLite, ``--policy fifo``) fronts an
``emulator`` QPU whose modelled time runs ``--time-scale`` times faster than
real time. Hybrid jobs are client-driven programs: they open a session over
REST and send every iteration's circuits through the ZeroMQ fast path, then
"think" for the drawn classical time (scaled). Batch jobs go through
``POST /v1/jobs`` (multiplex) or hold an exclusive session (exclusive, split).
A small in-process stand-in for Slurm grants the QPU (one job at a time for
exclusive and split, ``licences`` sessions for multiplex) in FIFO order and
waits ``job_start_latency`` after each grant — what ``sbatch`` would do.

Measured figures come from the broker's records (task start/finish via
``GET /v1/jobs/{id}``, QPU seconds via ``GET /v1/accounting``) and the
programs' own iteration timings; the simulator runs the same drawn workload
with the same policy. Times are reported in modelled seconds.

Run: ``.venv/bin/python bench/bench_study_real.py [--quick] [--time-scale 10]``
     ``[--json results/study_real.json]``
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from _common import bell
from _report import write_report

import qhpc
from qhpc.resources import SamplerTask, TimingModel
from qhpc.resources.codec import encode_payload
from qhpc.session import FastPathClient
from qhpc.study import Dist, Mode, Scenario, Strategy, simulate
from qhpc.study.workload import (
    Arrivals,
    BatchClass,
    BatchJob,
    Environment,
    HybridClass,
    HybridJob,
    QpuModel,
)

RESOURCE = "chip"
MODES = (Mode.EXCLUSIVE, Mode.MULTIPLEX, Mode.SPLIT)
#: agreement margins, relative, measured vs simulated (see docs/benchmarks.md)
MARGIN = {"makespan": 0.10, "utilisation": 0.10, "iteration_latency_mean": 0.25}


def real_scenario(time_scale: float) -> Scenario:
    """Small enough for about a minute of real time per run at ``time_scale`` 10."""
    return Scenario(
        name="real-small",
        description="Four VQE-style hybrid jobs and three batch jobs on one emulated QPU.",
        hybrid=(
            HybridClass(
                "vqe", "chem", Arrivals(4, 0.0, Dist.of("const", value=5.0)),
                iterations=Dist.of("randint", low=12, high=20),
                circuits=Dist.of("randint", low=2, high=4),
                shots=Dist.of("const", value=1000),
                think=Dist.of("lognormal", median=1.5, sigma=0.3),
            ),
        ),
        batch=(
            BatchClass(
                "sampling", "phys", Arrivals(3, 2.0, Dist.of("exponential", mean=15.0)),
                circuits=Dist.of("randint", low=8, high=16),
                shots=Dist.of("const", value=1000),
            ),
        ),
        shares={"chem": 1.0, "phys": 1.0},
        qpu=QpuModel(TimingModel()),
        # The broker's starvation limit is 60 real seconds; the fast path's round trip
        # (~2 ms real) is scaled like everything else.
        environment=Environment(
            job_start_latency=1.0, round_trip=0.002 * time_scale, licences=4,
            starvation_limit=60.0 * time_scale,
        ),
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """A served broker with one emulator resource, in a temporary folder."""

    def __init__(self, folder: Path, scenario: Scenario, time_scale: float) -> None:
        timing = scenario.qpu.timing
        config = folder / "resources.toml"
        config.write_text(
            f'[resources.{RESOURCE}]\ntype = "emulator"\nnoise = false\nseed = 1\n'
            f"time_scale = {time_scale}\n"
            f"timing = {{ task_overhead = {timing.task_overhead}, "
            f"circuit_overhead = {timing.circuit_overhead}, shot_time = {timing.shot_time} }}\n"
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.fastpath = f"tcp://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QHPC_")}
        env["XDG_CONFIG_HOME"] = str(folder)
        self.log = (folder / "serve.log").open("wb")
        # The store in a directory of its own: the broker refuses a shared one (the
        # Slurm study's folder is sticky and world-writable, for jobs' output).
        state = folder / "state"
        state.mkdir(mode=0o700, exist_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "qhpc.cli", "serve", "--db", str(state / "qhpc.db"),
                "--config", str(config), "--port", str(port), "--fastpath", self.fastpath,
                "--policy", "fifo", "--admin-token-file", str(folder / "admin.token"),
            ],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"broker did not start; see {folder / 'serve.log'}")
            time.sleep(0.1)
        self.token = (folder / "admin.token").read_text().strip()
        self.client = qhpc.connect(self.url, self.token)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


class Grants:
    """Slurm's stand-in: at most ``capacity`` holders, granted in request order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.waiting: collections.deque[object] = collections.deque()
        self.cond = threading.Condition()

    def acquire(self) -> None:
        ticket = object()
        with self.cond:
            self.waiting.append(ticket)
            self.cond.wait_for(lambda: self.waiting[0] is ticket and self.held < self.capacity)
            self.waiting.popleft()
            self.held += 1
            self.cond.notify_all()

    def release(self) -> None:
        with self.cond:
            self.held -= 1
            self.cond.notify_all()


class JobThreads:
    """Drives a mode's jobs, each as a thread from ``t0``; modelled time runs ``scale`` times
    faster than real time. Subclasses say what a hybrid and a batch job do."""

    def __init__(self, mode: Mode, scale: float) -> None:
        self.mode, self.scale = mode, scale
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.t0 = 0.0

    def hybrid(self, job: HybridJob) -> None:
        raise NotImplementedError

    def batch(self, job: BatchJob) -> None:
        raise NotImplementedError

    def until(self, modelled: float) -> None:
        time.sleep(max(0.0, self.t0 + modelled / self.scale - time.time()))

    def guarded(self, target: Any, job: Any) -> None:
        try:
            target(job)
        except BaseException as exc:  # reported after the run
            with self.lock:
                self.errors.append(exc)

    def run_jobs(self, hybrid: tuple[HybridJob, ...], batch: tuple[BatchJob, ...]) -> None:
        """Every job from half a second from now; raises if any of them failed."""
        threads = [threading.Thread(target=self.guarded, args=(self.hybrid, j)) for j in hybrid]
        threads += [threading.Thread(target=self.guarded, args=(self.batch, j)) for j in batch]
        self.t0 = time.time() + 0.5
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.errors:
            first = self.errors[0]  # its type, and its message as written (may span lines)
            raise RuntimeError(
                f"{self.mode}: {len(self.errors)} job(s) failed: {type(first).__name__}: {first}"
            )


class Run(JobThreads):
    """One mode on a fresh broker: every job as a thread, timings in modelled seconds."""

    def __init__(self, broker: Broker, scenario: Scenario, mode: Mode, scale: float) -> None:
        super().__init__(mode, scale)
        self.broker, self.scenario = broker, scenario
        env = scenario.environment
        self.grants = Grants(env.licences if mode is Mode.MULTIPLEX else 1)
        self.latencies: list[float] = []
        self.overheads: list[float] = []  # real s: iteration latency minus modelled task time
        self.session_costs: list[float] = []  # real s: opening a session over REST
        self.close_costs: list[float] = []  # real s: closing it
        self.turnarounds: dict[str, float] = {}
        self.circuit = bell()

    def now(self) -> float:
        return (time.time() - self.t0) * self.scale

    def sleep(self, modelled: float) -> None:
        time.sleep(max(0.0, modelled / self.scale))

    def grant(self) -> None:
        self.grants.acquire()
        self.sleep(self.scenario.environment.job_start_latency)

    def session(self, job_id: str, account: str, exclusive: bool) -> tuple[str, str]:
        began = time.perf_counter()
        opened = self.broker.client.open_session(
            RESOURCE, duration_seconds=3600, user=account, account=account,
            mode="exclusive" if exclusive else "multiplex", slurm_job_id=job_id,
        )  # fmt: skip
        with self.lock:
            self.session_costs.append(time.perf_counter() - began)
        return opened["session_id"], opened["token"]

    def close(self, session_id: str) -> None:
        began = time.perf_counter()
        self.broker.client.close_session(session_id)
        with self.lock:
            self.close_costs.append(time.perf_counter() - began)

    def payload(self, circuits: int, shots: int) -> SamplerTask:
        return SamplerTask(tuple([self.circuit] * circuits), shots=shots)

    def hybrid(self, job: HybridJob) -> None:
        self.until(job.arrival)
        split = self.mode is Mode.SPLIT
        session_id = token = ""
        if not split:
            self.grant()
            session_id, token = self.session(job.job_id, job.account, self.mode is Mode.EXCLUSIVE)
        client = None if split else FastPathClient(self.broker.fastpath, token, timeout=600)
        try:
            for index, step in enumerate(job.iterations):
                asked = self.now()
                if split:
                    self.grant()
                    session_id, token = self.session(f"{job.job_id}.{index}", job.account, True)
                    with FastPathClient(self.broker.fastpath, token, timeout=600) as block:
                        block.run(self.payload(step.circuits, step.shots))
                    self.close(session_id)
                    self.grants.release()
                else:
                    assert client is not None
                    client.run(self.payload(step.circuits, step.shots))
                took = self.now() - asked
                modelled = self.scenario.qpu.duration(step.circuits, step.shots)
                with self.lock:
                    self.latencies.append(took)
                    self.overheads.append((took - modelled) / self.scale)
                if index + 1 < len(job.iterations):
                    self.sleep(step.think)
        finally:
            if client is not None:
                client.close()
                self.close(session_id)
                self.grants.release()
        self.turnarounds[job.job_id] = self.now() - job.arrival

    def batch(self, job: BatchJob) -> None:
        self.until(job.arrival)
        if self.mode is Mode.MULTIPLEX:
            answer = self.broker.client.submit(
                RESOURCE, [self.circuit] * job.circuits, job.shots, account=job.account,
                user=job.account, split_circuits=True, name=job.job_id,
            )  # fmt: skip
            self.broker.client.wait(answer["job_id"], timeout=3600)
        else:
            self.grant()
            session_id, token = self.session(job.job_id, job.account, True)
            payloads = [encode_payload(self.payload(n, job.shots)) for n in job.task_sizes()]
            with FastPathClient(self.broker.fastpath, token, timeout=600) as client:
                client.run_many_encoded(payloads, window=64)
            self.close(session_id)
            self.grants.release()
        self.turnarounds[job.job_id] = self.now() - job.arrival

    def go(self, hybrid: tuple[HybridJob, ...], batch: tuple[BatchJob, ...]) -> dict[str, Any]:
        self.run_jobs(hybrid, batch)
        return self.measure()

    def measure(self) -> dict[str, Any]:
        client = self.broker.client
        intervals = []
        for job in client.jobs(limit=1000):
            for task in client.job(job["job_id"])["tasks"]:
                if task["state"] != "completed":
                    raise RuntimeError(f"task {task['task_id']} ended {task['state']}")
                start = (task["started_at"] - self.t0) * self.scale
                end = (task["finished_at"] - self.t0) * self.scale
                intervals.append((start, end))
        booked = {str(r["group"]): r["qpu_seconds"] for r in client.accounting(group_by="account")}
        busy = math.fsum(e - s for s, e in intervals)
        makespan = max(e for _, e in intervals)
        return {
            "makespan": makespan,
            "busy": busy,
            "utilisation": busy / makespan,
            "iteration_latency_mean": statistics.fmean(self.latencies),
            "iteration_latency_median": statistics.median(self.latencies),
            "turnaround_mean": statistics.fmean(self.turnarounds.values()),
            "tasks": len(intervals),
            "booked_qpu_seconds": booked,
            "iteration_overhead_real_ms": statistics.median(self.overheads) * 1e3,
            "session_open_close_real_ms": (
                statistics.median(self.session_costs) + statistics.median(self.close_costs)
            )
            * 1e3,
            "busy_modelled": math.fsum(booked.values()),
        }


def predicted(scenario: Scenario, mode: Mode, workload: Any) -> dict[str, Any]:
    result = simulate(scenario, Strategy(mode, fairshare=False), workload)
    busy = math.fsum(t.duration for t in result.tasks)
    makespan = max(t.finished_at for t in result.tasks) - result.start
    jobs = [j.turnaround for j in result.jobs]
    return {
        "makespan": makespan,
        "busy": busy,
        "utilisation": busy / makespan,
        "iteration_latency_mean": statistics.fmean(i.latency for i in result.iterations),
        "iteration_latency_median": statistics.median(i.latency for i in result.iterations),
        "turnaround_mean": statistics.fmean(jobs),
        "tasks": len(result.tasks),
    }


def calibrate(scenario: Scenario, exclusive: dict[str, Any], scale: float) -> Scenario:
    """The scenario with three constants measured in the exclusive run, in modelled seconds:
    the device time a task really takes beyond the model, the client's round trip per
    iteration, and the REST cost of opening and closing a session (added to job start)."""
    per_task = max(0.0, (exclusive["busy"] - exclusive["busy_modelled"]) / exclusive["tasks"])
    round_trip = max(0.0, exclusive["iteration_overhead_real_ms"] / 1e3 * scale - per_task)
    session = exclusive["session_open_close_real_ms"] / 1e3 * scale
    timing = scenario.qpu.timing
    env = scenario.environment
    return replace(
        scenario,
        qpu=replace(
            scenario.qpu,
            timing=replace(timing, task_overhead=timing.task_overhead + per_task),
        ),
        environment=replace(
            env, round_trip=round_trip, job_start_latency=env.job_start_latency + session
        ),
    )


def compare(
    measured: dict[str, Any], fitted: dict[str, Any], margin: dict[str, float]
) -> tuple[dict[str, float], bool]:
    """Relative deviation of measured from predicted per metric in ``margin`` (where both
    are non-zero), and whether every one is within its margin."""
    deviation = {k: measured[k] / fitted[k] - 1 for k in margin if fitted[k] and measured[k]}
    return deviation, all(abs(deviation[k]) <= margin[k] for k in deviation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half the jobs and iterations")
    parser.add_argument("--time-scale", type=float, default=10.0, help="modelled s per real s")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--slurm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slurm:
        sys.exit("--slurm is not built yet: jobs are driven directly (see docs/benchmarks.md)")
    scale = args.time_scale
    scenario = real_scenario(scale)
    workload = scenario.materialise(scale=0.5 if args.quick else 1.0)
    report: dict[str, Any] = {
        "time_scale": scale,
        "quick": args.quick,
        "scenario": scenario.to_dict(),
        "margin": MARGIN,
        "modes": {},
    }
    started = time.perf_counter()
    calibrated: Scenario | None = None
    for mode in MODES:
        with tempfile.TemporaryDirectory(prefix="qhpc-study-real-") as tmp:
            broker = Broker(Path(tmp), scenario, scale)
            try:
                measured = Run(broker, scenario, mode, scale).go(workload.hybrid, workload.batch)
            finally:
                broker.stop()
        if calibrated is None:
            # Calibrate on the first (exclusive, uncontended) run, predict the others.
            calibrated = calibrate(scenario, measured, scale)
            report["calibrated_environment"] = calibrated.to_dict()["environment"]
            report["calibrated_qpu"] = calibrated.to_dict()["qpu"]
        simulated = predicted(scenario, mode, workload)
        fitted = predicted(calibrated, mode, workload)
        deviation, agree = compare(measured, fitted, MARGIN)
        report["modes"][str(mode)] = {
            "measured": measured, "simulated": simulated, "calibrated": fitted,
            "deviation": deviation, "agree": agree,
        }  # fmt: skip
        print(
            f"{mode!s:10s} makespan {measured['makespan']:6.1f} s "
            f"(sim {simulated['makespan']:6.1f}, calibrated {fitted['makespan']:6.1f})  "
            f"util {measured['utilisation']:5.1%} ({simulated['utilisation']:5.1%}, "
            f"{fitted['utilisation']:5.1%})  iteration {measured['iteration_latency_mean']:5.2f} s "
            f"({simulated['iteration_latency_mean']:5.2f}, {fitted['iteration_latency_mean']:5.2f})"
            f"  {'agree' if agree else 'DIFFER'}",
            flush=True,
        )
    report["wall_seconds"] = time.perf_counter() - started
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
