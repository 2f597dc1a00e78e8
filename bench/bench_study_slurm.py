"""Scheduling study through the real Slurm cluster: sbatch, hooks, licences, beside the simulator.

The same comparison as ``bench_study_real.py`` (exclusive reservation per job,
qhpc multiplex, split jobs), but every QPU grant comes from the project's
one-host Slurm cluster (``bash scripts/slurm.sh start``): a private ``qhpc
serve`` (SQLite, ``--policy fifo``) fronts a scaled-time ``emulator`` QPU
``chip``; ``qhpc slurm config`` writes the fragments and hooks for it, which
``scripts/slurm.sh apply`` installs (the cluster's own fragments are saved first
and always put back). Per mode:

- exclusive: licence count 1, exclusive sessions; every job (hybrid and batch)
  is ``sbatch --qpu=chip`` running ``bench/study_job.py``;
- multiplex: licence count K (the study's throughput choice, 2), shared
  sessions; hybrid jobs through sbatch, batch jobs ``POST /v1/jobs`` straight to
  the broker (the QPU's gaps are theirs);
- split: licence count 1, exclusive sessions; each hybrid job is a
  ``qhpc.slurm.Chain`` of one-iteration blocks; the driver submits block i+1
  (``--dependency=afterok`` on block i) once block i has its result and the drawn
  think time has passed, so the QPU is free while the program thinks (seed 002).

Measured metrics come from the broker's records (tasks and their sessions over
REST; sessions carry the Slurm job id) and the programs' own timings, and go
through the study's own ``qhpc.study.measure``; sacct's view of every job is in
the report. The simulator runs the same drawn jobs, calibrated on the exclusive
run (device time per task beyond the model, client round trip, and the whole
Slurm job start: licence release → scheduling → prolog → program ready).

Run (root, cluster running): ``.venv/bin/python bench/bench_study_slurm.py [--quick]``
``[--time-scale 2] [--json results/study_slurm.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from _report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bell
from bench_study_real import RESOURCE, Broker, JobThreads, compare

from qhpc.resources import TimingModel
from qhpc.slurm.chain import Chain
from qhpc.slurm.checkpoint import read_checkpoint
from qhpc.study import Dist, Mode, Scenario, Strategy, measure, simulate
from qhpc.study.simulator import IterationRun, JobRun, SimulationResult, TaskRun
from qhpc.study.workload import (
    Arrivals,
    BatchClass,
    BatchJob,
    Environment,
    HybridClass,
    HybridJob,
    QpuModel,
    Workload,
)

ROOT = Path(__file__).resolve().parents[1]
SLURM_SH = ROOT / "scripts" / "slurm.sh"
JOB_PROGRAM = Path(__file__).resolve().parent / "study_job.py"
MODES = (Mode.EXCLUSIVE, Mode.MULTIPLEX, Mode.SPLIT)
#: the multiplex licence count: the study's choice for throughput of hybrid work
#: (docs/benchmarks.md, "Choosing the licence count K"), also what the cluster's
#: two CPUs in partition debug can run at once
LICENCES = 2
#: the broker's default shot-chunk bound (real seconds of estimated device time)
CHUNK_SECONDS = 0.1
#: agreement margins, relative, measured vs calibrated prediction (docs/benchmarks.md)
MARGIN = {
    "makespan": 0.15,
    "utilisation": 0.15,
    "utilisation_waiting": 0.15,
    "iteration_latency_mean": 0.25,
    "turnaround_mean": 0.20,
}
REPORTED = (*MARGIN, "iteration_latency_p95")


def slurm_scenario(time_scale: float) -> Scenario:
    """VQE-heavy in small: three hybrid jobs, two batch jobs, one emulated QPU."""
    return Scenario(
        name="slurm-small",
        description="Three VQE-style hybrid jobs and two batch jobs through real Slurm.",
        hybrid=(
            HybridClass(
                "vqe", "chemistry", Arrivals(3, 0.0, Dist.of("const", value=4.0)),
                iterations=Dist.of("randint", low=6, high=10),
                circuits=Dist.of("randint", low=2, high=4),
                shots=Dist.of("const", value=1000),
                think=Dist.of("lognormal", median=1.5, sigma=0.3),
            ),
        ),
        batch=(
            BatchClass(
                "sampling", "physics", Arrivals(2, 2.0, Dist.of("exponential", mean=10.0)),
                circuits=Dist.of("randint", low=8, high=16),
                shots=Dist.of("const", value=1000),
            ),
        ),
        shares={"chemistry": 1.0, "physics": 1.0},
        qpu=QpuModel(TimingModel()),
        environment=Environment(
            job_start_latency=1.0, round_trip=0.002 * time_scale, licences=LICENCES,
            starvation_limit=60.0 * time_scale,
        ),
    )  # fmt: skip


def run(*command: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def spank_plugin() -> str:
    return run("bash", str(SLURM_SH), "build-spank").strip().splitlines()[-1]


@dataclass
class Record:
    """What one study job did, in wall-clock seconds."""

    kind: str
    slurm_ids: list[str] = field(default_factory=list)
    arrived: float = math.nan  # submitted (to Slurm, or to the broker)
    asked: list[float] = field(default_factory=list)  # iteration asked (split: block submitted)
    done: list[float] = field(default_factory=list)  # iteration's result in the program
    started: list[float] = field(default_factory=list)  # program ready (per Slurm job)
    finished: float = math.nan  # last result
    broker_job: str = ""  # multiplex batch: the broker's job id


class SlurmRun(JobThreads):
    """One mode against a fresh broker, with its own Slurm fragments applied."""

    def __init__(
        self, work: Path, broker: Broker, scenario: Scenario, mode: Mode, scale: float
    ) -> None:
        super().__init__(mode, scale)
        self.work, self.broker, self.scenario = work, broker, scenario
        self.records: dict[str, Record] = {}
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
            "LANG": "C.UTF-8",
        }  # fmt: skip

    # -- timing
    def modelled(self, wall: float) -> float:
        return (wall - self.t0) * self.scale

    # -- Slurm
    def options(self, name: str, account: str) -> list[str]:
        return [
            f"--job-name={name}", f"--account={account}", "--partition=debug",
            f"--qpu={RESOURCE}", "--time=30", f"--chdir={self.work}",
        ]  # fmt: skip

    def sbatch(self, options: list[str], script: Path | None = None, body: str = "") -> str:
        command = ["sbatch", "--parsable", *options]
        if script is not None:
            command.append(str(script))
        done = subprocess.run(
            command, input=None if script else body, capture_output=True, text=True,
            timeout=60, env=self.env, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {options} failed: {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0]

    def wait_file(self, path: Path, slurm_id: str, output: Path) -> None:
        """Until ``path`` exists; fails when the job ended without writing it."""
        checked = time.monotonic()
        while not path.exists():
            time.sleep(0.01)
            if time.monotonic() - checked > 2:
                checked = time.monotonic()
                if not run("squeue", "-h", "-j", slurm_id, check=False).strip():
                    time.sleep(0.5)  # the file may land just as the job leaves
                    if not path.exists():
                        text = output.read_text() if output.exists() else "(no output)"
                        raise RuntimeError(f"Slurm job {slurm_id} ended without {path}:\n{text}")

    def job_file(self, job_id: str, kind: str, spec: dict[str, Any]) -> tuple[Path, Path, Path]:
        spec_path = self.work / f"{job_id}.spec.json"
        spec_path.write_text(json.dumps({"scale": self.scale, **spec}))
        return spec_path, self.work / f"{job_id}.record.json", self.work / f"{job_id}.out"

    def submit_program(self, job_id: str, account: str, kind: str, spec: dict[str, Any]) -> Any:
        spec_path, record_path, output = self.job_file(job_id, kind, spec)
        body = (
            f"#!/bin/bash\nexec {sys.executable} {JOB_PROGRAM} {kind} {spec_path} {record_path}\n"
        )
        slurm_id = self.sbatch([*self.options(job_id, account), f"--output={output}"], body=body)
        self.records[job_id].slurm_ids.append(slurm_id)
        self.wait_file(record_path, slurm_id, output)
        return json.loads(record_path.read_text())

    # -- jobs
    def hybrid(self, job: HybridJob) -> None:
        record = self.records[job.job_id] = Record("hybrid")
        self.until(job.arrival)
        arrived = record.arrived = time.time()
        if self.mode is Mode.SPLIT:
            self.chain(job, record, arrived)
            return
        spec = {"iterations": [[i.circuits, i.shots, i.think] for i in job.iterations]}
        answer = self.submit_program(job.job_id, job.account, "hybrid", spec)
        record.started.append(answer["started"])
        record.asked = [a for a, _ in answer["iterations"]]
        record.done = [d for _, d in answer["iterations"]]
        record.finished = record.done[-1]

    def chain(self, job: HybridJob, record: Record, arrived: float) -> None:
        spec_path, _, _ = self.job_file(
            job.job_id,
            "chain",
            {"iterations": [[i.circuits, i.shots, i.think] for i in job.iterations]},
        )
        chain = Chain(
            JOB_PROGRAM, steps=len(job.iterations), program_args=[str(spec_path)],
            checkpoint_dir=self.work / f"chain-{job.job_id}", name=job.job_id,
        )  # fmt: skip
        chain.prepare()
        asked = arrived
        previous: str | None = None
        for step, iteration in enumerate(job.iterations, start=1):
            options = [
                *self.options(f"{job.job_id}.{step}of{chain.steps}", job.account),
                f"--output={chain.step_output(step)}", "--kill-on-invalid-dep=yes",
            ]  # fmt: skip
            if previous is not None:
                options.append(f"--dependency=afterok:{previous}")
            previous = self.sbatch(options, script=chain.step_script(step))
            record.slurm_ids.append(previous)
            record.asked.append(asked)
            checkpoint = self.work / f"chain-{job.job_id}" / f"checkpoint-{step:03d}.json"
            self.wait_file(checkpoint, previous, chain.step_output(step))
            block = read_checkpoint(chain.directory, step)["blocks"][-1]
            record.started.append(block["started"])
            record.done.append(block["done"])
            # the classical phase between blocks runs outside Slurm, holding nothing
            asked = block["done"] + iteration.think / self.scale
            if step < chain.steps:
                time.sleep(max(0.0, asked - time.time()))
        record.finished = record.done[-1]

    def batch(self, job: BatchJob) -> None:
        record = self.records[job.job_id] = Record("batch")
        self.until(job.arrival)
        arrived = record.arrived = time.time()
        record.asked = [arrived]
        if self.mode is Mode.MULTIPLEX:
            answer = self.broker.client.submit(
                RESOURCE, [bell()] * job.circuits, job.shots, account=job.account,
                user=job.account, split_circuits=True, name=job.job_id,
            )  # fmt: skip
            record.broker_job = answer["job_id"]
            final = self.broker.client.wait(answer["job_id"], timeout=3600)
            record.started.append(arrived)
            record.finished = max(
                t["finished_at"] for t in self.broker.client.job(final["job_id"])["tasks"]
            )
        else:
            spec = {"tasks": job.task_sizes(), "shots": job.shots}
            answer = self.submit_program(job.job_id, job.account, "batch", spec)
            record.started.append(answer["started"])
            record.finished = answer["done"]
        record.done = [record.finished]

    def go(self, workload: Workload) -> SimulationResult:
        self.run_jobs(workload.hybrid, workload.batch)
        return self.collect(workload)

    # -- measurement
    def broker_get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.broker.token}"}
        answer = httpx.get(self.broker.url + "/v1" + path, headers=headers, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def collect(self, workload: Workload) -> SimulationResult:
        """The run as the simulator would have recorded it, from the broker's records."""
        owner = {sid: job_id for job_id, r in self.records.items() for sid in r.slurm_ids}
        block_of = {sid: i for r in self.records.values() for i, sid in enumerate(r.slurm_ids)}
        session_job = {
            s["session_id"]: str(s["slurm_job_id"])
            for s in self.broker_get("/sessions?include_closed=true")
            if s.get("slurm_job_id")
        }
        by_broker_job = {r.broker_job: j for j, r in self.records.items() if r.broker_job}
        jobs: dict[str, HybridJob | BatchJob] = {j.job_id: j for j in workload.hybrid}
        jobs.update({j.job_id: j for j in workload.batch})
        tasks: list[TaskRun] = []
        seen: dict[str, int] = {}
        for summary in self.broker.client.jobs(limit=1000):
            for task in sorted(
                self.broker.client.job(summary["job_id"])["tasks"], key=lambda t: t["submitted_at"]
            ):
                if task["state"] != "completed":
                    raise RuntimeError(f"task {task['task_id']} ended {task['state']}")
                slurm_id = session_job.get(task.get("session_id") or "")
                job_id = owner.get(slurm_id or "") or by_broker_job.get(summary["job_id"])
                if job_id is None:
                    raise RuntimeError(f"task {task['task_id']} belongs to no study job")
                record, job = self.records[job_id], jobs[job_id]
                position = seen.get(job_id, 0)
                seen[job_id] = position + 1
                index: int | None = None
                if isinstance(job, HybridJob):
                    index = block_of[slurm_id or ""] if self.mode is Mode.SPLIT else position
                    circuits, shots = job.iterations[index].circuits, job.iterations[index].shots
                else:
                    circuits, shots = job.task_sizes()[position], job.shots
                started = self.modelled(task["started_at"])
                finished = self.modelled(task["finished_at"])
                tasks.append(
                    TaskRun(
                        task["task_id"], job_id, job.account, task.get("session_id") is not None,
                        index, circuits, shots, finished - started,
                        self.modelled(record.asked[index] if index else record.arrived),
                        self.modelled(task["submitted_at"]), started, finished,
                    )
                )  # fmt: skip
        iterations = [
            IterationRun(job_id, jobs[job_id].account, i, self.modelled(a), self.modelled(d))
            for job_id, r in self.records.items() if r.kind == "hybrid"
            for i, (a, d) in enumerate(zip(r.asked, r.done, strict=True))
        ]  # fmt: skip
        runs = [
            JobRun(
                job_id, jobs[job_id].account, r.kind, jobs[job_id].arrival,
                self.modelled(r.started[0]), self.modelled(r.finished),
            )
            for job_id, r in self.records.items()
        ]  # fmt: skip
        return SimulationResult(
            self.scenario.name, Strategy(self.mode, fairshare=False), tasks, iterations, runs, [],
            dict(self.scenario.shares),
        )  # fmt: skip

    def sacct(self) -> list[dict[str, Any]]:
        ids = [sid for r in self.records.values() for sid in r.slurm_ids]
        if not ids:
            return []
        out = run("sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o",
                  "JobID,JobName,State,Submit,Start,End,AdminComment")  # fmt: skip
        rows = []
        for line in out.splitlines():
            job, name, state, submit, start, end, comment = line.split("|")

            def stamp(text: str) -> float | None:
                try:
                    return self.modelled(datetime.fromisoformat(text).timestamp())
                except ValueError:
                    return None

            rows.append({
                "job": job, "name": name, "state": state, "submit": stamp(submit),
                "start": stamp(start), "end": stamp(end), "admin_comment": comment,
            })  # fmt: skip
        return rows

    def job_starts(self) -> list[float]:
        """Modelled seconds from "the QPU could be granted" to "the program is ready", per
        Slurm job of a one-licence run: from its submission or from the previous holder's
        last result (when the simulator releases the licence), whichever is later."""
        gaps = []
        for record in self.records.values():
            for block, started in enumerate(record.started if record.slurm_ids else []):
                released = [
                    done
                    for other in self.records.values() if other.slurm_ids
                    for done in (other.done if self.mode is Mode.SPLIT else [other.finished])
                    if done <= started
                ]  # fmt: skip
                submitted = record.asked[block] if self.mode is Mode.SPLIT else record.arrived
                ready = max([submitted, *released])
                gaps.append((started - ready) * self.scale)
        return gaps


def calibrate(scenario: Scenario, exclusive: SimulationResult, starts: list[float]) -> Scenario:
    """The scenario with three constants measured in the exclusive run (modelled seconds):
    device time per task beyond the model, the client's round trip per iteration, and
    Slurm's job start (licence free → program ready: scheduling cycle, prolog with the
    session's REST call, interpreter and Qiskit import, fast-path HELLO)."""
    tasks = exclusive.tasks
    extra = math.fsum(t.duration - scenario.qpu.duration(t.circuits, t.shots) for t in tasks)
    per_task = max(0.0, extra / len(tasks))
    task_of = {(t.job_id, t.iteration): t for t in tasks if t.iteration is not None}
    trips = [
        i.latency - task_of[(i.job_id, i.index)].duration
        for i in exclusive.iterations if i.index > 0
    ]  # fmt: skip
    timing = scenario.qpu.timing
    return replace(
        scenario,
        qpu=replace(
            scenario.qpu, timing=replace(timing, task_overhead=timing.task_overhead + per_task)
        ),
        environment=replace(
            scenario.environment,
            round_trip=max(0.0, statistics.median(trips))
            if trips
            else scenario.environment.round_trip,
            job_start_latency=statistics.median(starts),
        ),
    )


def predicted(scenario: Scenario, mode: Mode, workload: Workload, scale: float) -> dict[str, Any]:
    result = simulate(
        scenario, Strategy(mode, fairshare=False), workload, chunk_seconds=CHUNK_SECONDS * scale
    )
    return measure(result).to_dict()


def root_dir(parent: Path, name: str) -> Path:
    """``parent/name``, root's own, mode 0711: the node Prolog refuses a run directory that
    another user could have claimed (as anyone can, a name in the world-writable work
    folder)."""
    folder = parent / name
    folder.mkdir(mode=0o711)
    folder.chmod(0o711)
    return folder


def configure(work: Path, private: Path, broker: Broker, mode: Mode, plugin: str) -> Path:
    """Slurm fragments and hooks for ``broker``; the directory to apply. Hooks, spool
    and run directory go into ``private`` (root's, 0711)."""
    out, hooks = work / "slurm", private / "hooks"
    run_dir = root_dir(private, "run")
    run(
        sys.executable, "-m", "qhpc.cli", "slurm", "config",
        "--config", str(work / "resources.toml"), "--token-file", str(work / "admin.token"),
        "--out", str(out), "--hooks-dir", str(hooks),
        "--spool-dir", str(private / "spool"), "--run-dir", str(run_dir),
        "--broker", broker.url, "--fastpath", broker.fastpath,
        "--sessions", f"{RESOURCE}={LICENCES if mode is Mode.MULTIPLEX else 1}",
        "--mode", "multiplex" if mode is Mode.MULTIPLEX else "exclusive",
        "--spank-plugin", plugin, "--cli-filter",
    )  # fmt: skip
    return out


def settle(work: Path, timeout: float = 60) -> None:
    """Let this run's jobs finish (their epilog closes the session and books it); cancel
    whatever is still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        ours = [
            line.partition(" ")[0]
            for line in run("squeue", "-h", "-o", "%i %Z", check=False).splitlines()
            if line.partition(" ")[2].startswith(str(work))
        ]
        if not ours:
            return
        if time.monotonic() > deadline:
            run("scancel", *ours, check=False)
            return
        time.sleep(0.5)


def row(values: dict[str, Any]) -> str:
    return (
        f"makespan {values['makespan']:6.1f} s  util {values['utilisation']:5.1%}  "
        f"util-waiting {values['utilisation_waiting']:5.1%}  "
        f"iteration {values['iteration_latency_mean']:5.2f} s "
        f"(p95 {values['iteration_latency_p95']:5.2f})  "
        f"turnaround {values['turnaround_mean']:6.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one hybrid and one batch job, few iterations"
    )
    parser.add_argument("--time-scale", type=float, default=2.0, help="modelled s per real s")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (job output, logs)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: installing Slurm fragments (scripts/slurm.sh apply) needs it")
    if run("bash", str(SLURM_SH), "status", check=False).strip() != "running":
        sys.exit("the Slurm cluster is not running: bash scripts/slurm.sh start")
    scale = args.time_scale
    scenario = slurm_scenario(scale)
    workload = scenario.materialise(scale=0.34 if args.quick else 1.0)
    # Hooks run as SlurmUser and jobs write their output here: not a 0700 temp dir.
    base = Path(f"/tmp/qhpc-study-slurm-{secrets.token_hex(4)}")
    base.mkdir(mode=0o755)
    base.chmod(0o1777)
    private = Path(tempfile.mkdtemp(prefix="qhpc-study-slurm-root-"))
    private.chmod(0o711)
    report: dict[str, Any] = {
        "time_scale": scale, "quick": args.quick, "licences": LICENCES,
        "chunk_seconds": CHUNK_SECONDS, "scenario": scenario.to_dict(), "margin": MARGIN,
        "workload": {"hybrid": len(workload.hybrid), "batch": len(workload.batch),
                     "iterations": sum(len(j.iterations) for j in workload.hybrid),
                     "tasks": sum(len(j.iterations) for j in workload.hybrid)
                     + sum(len(j.task_sizes()) for j in workload.batch)},
        "modes": {},
    }  # fmt: skip
    started = time.perf_counter()
    saved = base / "saved"
    run("bash", str(SLURM_SH), "save", str(saved))
    plugin = spank_plugin()
    calibrated: Scenario | None = None
    try:
        for mode in MODES:
            work = base / str(mode)
            work.mkdir(mode=0o755)
            work.chmod(0o1777)
            broker = Broker(work, scenario, scale)
            try:
                applying = time.perf_counter()
                run(
                    "bash",
                    str(SLURM_SH),
                    "apply",
                    str(configure(work, root_dir(private, str(mode)), broker, mode, plugin)),
                    timeout=400,
                )
                applied = time.perf_counter() - applying
                driver = SlurmRun(work, broker, scenario, mode, scale)
                try:
                    result = driver.go(workload)
                finally:
                    settle(work)
                measured = measure(result).to_dict()
                starts = driver.job_starts()
                sacct = driver.sacct()
            finally:
                broker.stop()
            if calibrated is None:
                # Calibrate on the first (exclusive, one licence) run, predict the others.
                calibrated = calibrate(scenario, result, starts)
                report["calibrated_environment"] = calibrated.to_dict()["environment"]
                report["calibrated_qpu"] = calibrated.to_dict()["qpu"]
            stated = predicted(scenario, mode, workload, scale)
            fitted = predicted(calibrated, mode, workload, scale)
            deviation, agree = compare(measured, fitted, MARGIN)
            report["modes"][str(mode)] = {
                "measured": measured, "simulated": stated, "calibrated": fitted,
                "deviation": deviation, "agree": agree, "job_start_modelled_s": starts,
                "job_start_real_s_median": statistics.median(starts) / scale if starts else None,
                "slurm_jobs": sacct, "apply_seconds": applied,
            }  # fmt: skip
            print(f"{mode!s:10s} measured   {row(measured)}", flush=True)
            print(
                f"{'':10s} calibrated {row(fitted)}  {'agree' if agree else 'DIFFER'}", flush=True
            )
            print(f"{'':10s} as stated  {row(stated)}", flush=True)
    finally:
        run("bash", str(SLURM_SH), "apply", str(saved), timeout=400, check=False)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(private, ignore_errors=True)
    report["wall_seconds"] = time.perf_counter() - started
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
