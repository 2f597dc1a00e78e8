"""QPU sessions of real Slurm jobs: hooks, licences, multiplexing, kills, accounting.

Needs the one-host cluster of ``scripts/slurm.sh start`` and QHPC_TEST_SLURM=1.
The module starts its own broker (``qhpc serve`` with an aer ``sim`` and an
emulated ``emu``), generates the Slurm configuration with ``qhpc slurm config``,
installs it with ``scripts/slurm.sh apply`` and puts the previous fragments back
at the end. Jobs run as the user running the tests.

The cluster has 2 CPUs in ``debug`` and 1 in ``qpu``: the time-limit job runs in
``qpu`` from the start while the other tests use ``debug`` one after another.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import free_port, start_serve, stop_process, wait_healthy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SLURM_SH = ROOT / "scripts" / "slurm.sh"
EXAMPLE = ROOT / "examples" / "slurm" / "vqe.sbatch"
H2_EXACT = -1.857275030202378
RESOURCES = """
[resources.sim]
type = "aer"

[resources.emu]
type = "emulator"
time_scale = 100
noise = false
"""
# A session's program: QPU tasks for a while (with gaps batch work can fill), then idle.
LOAD = """
import sys, time
from qiskit import QuantumCircuit
from qhpc.session import QPU
qpu = QPU.from_env(timeout=60)
bell = QuantumCircuit(2, 2); bell.h(0); bell.cx(0, 1); bell.measure([0, 1], [0, 1])
end, tasks = time.time() + float(sys.argv[1]), 0
while time.time() < end:
    qpu.run(bell, shots=100); tasks += 1; time.sleep(0.05)
qpu.close()
print(f"tasks={tasks}", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""
#: the Slurm user a federated centre's gateway submits as (slurmrestd, JWT): the tests' own
GATEWAY = os.environ.get("USER") or "root"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def run(
    *command: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return done


@dataclass
class Cluster:
    work: Path
    url: str
    admin: str
    python: str
    env: dict[str, str]  # what sbatch passes on: no qhpc token of the tests' own
    settings: Path
    fastpath: str = ""

    def sbatch(self, *args: str, script: str | None = None) -> str:
        command = ["sbatch", "--parsable", f"--chdir={self.work}", *args]
        done = subprocess.run(
            command, input=script, capture_output=True, text=True, timeout=60,
            env=self.env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"sbatch {args} failed: {done.stderr}"
        return done.stdout.strip().split(";")[0]

    def job_script(self, body: str) -> str:
        return f"#!/bin/bash\nset -e\n{body}\n"

    def output(self, job_id: str) -> str:
        path = self.work / f"job-{job_id}.out"
        return path.read_text() if path.exists() else ""

    def token_file(self, secret: str) -> str:
        """A file holding ``secret`` for --token-file: root's, 0600, a fresh name."""
        descriptor, path = tempfile.mkstemp(prefix=".token-", dir=self.work)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secret + "\n")
        return path

    def broker(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        return httpx.get(self.url + "/v1" + path, headers=headers, timeout=10)

    def sessions_of(self, job_id: str) -> list[dict[str, Any]]:
        every = self.broker("/sessions?include_closed=true").json()
        return [s for s in every if s["slurm_job_id"] == job_id]


def squeue(job_id: str) -> tuple[str, str]:
    """(state, reason) while Slurm still lists the job, else ("", "")."""
    out = run("squeue", "-h", "-j", job_id, "-o", "%T|%r", check=False).stdout.strip()
    return tuple(out.split("|", 1)) if "|" in out else ("", "")  # type: ignore[return-value]


def sacct(job_id: str, fields: str = "State,AdminComment,ExitCode") -> list[str]:
    out = run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", fields).stdout.strip()
    return out.splitlines()[0].split("|") if out else []


def wait_for(what: str, check: Callable[[], Any], timeout: float, pause: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(pause)


def finished(job_id: str, timeout: float = 120) -> list[str]:
    """sacct's State, AdminComment, ExitCode once the job is final there."""

    def final() -> list[str] | None:
        row = sacct(job_id)
        return row if row and row[0].split()[0] in FINAL else None

    return wait_for(f"job {job_id} to finish", final, timeout)  # type: ignore[no-any-return]


def booked(job_id: str, timeout: float = 15) -> str:
    """The AdminComment the EpilogSlurmctld wrote (it may land just after the job ends)."""
    return wait_for(  # type: ignore[no-any-return]
        f"job {job_id}'s AdminComment", lambda: sacct(job_id)[1:2] and sacct(job_id)[1], timeout
    )


def _spank_plugin() -> str:
    return run("bash", str(SLURM_SH), "build-spank").stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def cluster(slurm_cluster: Path) -> Iterator[Cluster]:
    # Slurm's hooks run as SlurmUser and as the job's user: /tmp/pytest-of-* is 0700.
    work = Path(f"/tmp/qhpc-slurm-sessions-{secrets.token_hex(4)}")
    work.mkdir(mode=0o755)
    work.chmod(0o1777)  # job output from any user
    (work / "resources.toml").write_text(RESOURCES)
    # Hooks, spool and run directory: in root's own 0711 directory. The node Prolog
    # refuses a run directory another user could have claimed (any name in `work`).
    private = Path(tempfile.mkdtemp(prefix="qhpc-slurm-sessions-root-"))
    private.chmod(0o711)
    (private / "run").mkdir(mode=0o711)
    (private / "run").chmod(0o711)
    # The broker's store: a directory of its own (it refuses the shared, sticky `work`).
    (private / "state").mkdir(mode=0o700)
    port = free_port()
    fastpath = f"tcp://127.0.0.1:{free_port()}"
    process = start_serve(
        work, port, "--config", str(work / "resources.toml"), "--fastpath", fastpath,
        db=private / "state" / "broker.db", stdout=(work / "broker.log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    saved = work / "saved"
    applied = False
    try:
        wait_healthy(url, process)
        admin = (work / "admin.token").read_text().strip()
        run(
            sys.executable, "-m", "qhpc.cli", "slurm", "config",
            "--config", str(work / "resources.toml"), "--token-file", str(work / "admin.token"),
            "--out", str(work / "slurm"), "--hooks-dir", str(private / "hooks"),
            "--spool-dir", str(private / "spool"), "--run-dir", str(private / "run"),
            "--broker", url, "--fastpath", fastpath, "--sessions-per-qpu", "2",
            "--spank-plugin", _spank_plugin(), "--cli-filter",
            # federation (test_loop_back.py): centre north's gateway submits as this user
            "--federated-centre", f"north={GATEWAY}",
        )  # fmt: skip
        run("bash", str(SLURM_SH), "save", str(saved))
        run("bash", str(SLURM_SH), "apply", str(work / "slurm"), timeout=400)
        applied = True
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
            "LANG": "C.UTF-8", "QHPC_PYTHON": sys.executable,
            "QHPC_EXAMPLES": str(ROOT / "examples"),
        }  # fmt: skip
        yield Cluster(
            work, url, admin, sys.executable, env, private / "hooks" / "hooks.toml", fastpath
        )
    finally:
        for job in run("squeue", "-h", "-o", "%i %o", check=False).stdout.splitlines():
            if str(work) in job:
                run("scancel", job.split()[0], check=False)
        if applied:
            run("bash", str(SLURM_SH), "apply", str(saved), check=False, timeout=400)
        stop_process(process, timeout=30)
        if process.returncode == 0 and not os.environ.get("QHPC_KEEP_SLURM_TEST_DIR"):
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(scope="module")
def timed_out_job(cluster: Cluster) -> str:
    """A job on emu, in the qpu partition, killed by its 1-minute limit (runs alongside)."""
    (cluster.work / "load.py").write_text(LOAD)
    return cluster.sbatch(
        "--partition=qpu", "--qpu=emu", "-L", "qpu_emu:1", "--time=1", "-J", "qhpc-timeout",
        f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script(f"{cluster.python} {cluster.work}/load.py 2 600"),
    )  # fmt: skip


def test_vqe_example_runs_client_driven_through_the_broker(
    cluster: Cluster, timed_out_job: str
) -> None:
    options = [
        line.split(None, 1)[1].split("#")[0].strip()
        for line in EXAMPLE.read_text().splitlines()
        if line.startswith("#SBATCH")
    ]
    assert "--qpu=sim" in options
    options = [o for o in options if not o.startswith("--output")]
    dump = cluster.work / "vqe.env"
    job = cluster.sbatch(
        *options, f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script(f"env > {dump}\nexec bash {EXAMPLE}"),
    )  # fmt: skip
    state, _, exit_code = finished(job, timeout=180)
    output = cluster.output(job)
    assert state == "COMPLETED", output
    assert exit_code == "0:0"
    result = ast.literal_eval(output.strip().splitlines()[-1])  # the example prints a dict
    assert result["energy"] == pytest.approx(H2_EXACT, abs=1.6e-3)

    environment = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    (session,) = cluster.sessions_of(job)
    assert environment["QHPC_SESSION"].startswith("qhpc_")
    assert environment["QHPC_SESSION_ID"] == session["session_id"]
    assert environment["QHPC_RESOURCE"] == "sim"
    assert environment["QHPC_URL"] == cluster.url
    assert "QHPC_TOKEN" not in environment
    text = dump.read_text()
    assert cluster.admin not in text  # the hooks' credential stays with SlurmUser
    # no vendor credential (QRMI's job variables name the QPUs and their types, no secret)
    assert not re.search(r"QRMI_(?!JOB_QPU_(RESOURCES|TYPES)=)|APIKEY|API_KEY|IAM_", text)
    assert environment["QRMI_JOB_QPU_RESOURCES"] == "sim"
    assert environment["QRMI_JOB_QPU_TYPES"] == "aer"

    # the session ended with the job; its token is dead and says so
    closed = wait_for("the session to close", lambda: cluster.sessions_of(job)[0]["closed_at"], 5)
    assert closed >= session["opened_at"]
    refused = cluster.broker("/sessions", token=environment["QHPC_SESSION"])
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    comment = booked(job)
    assert comment.startswith("qhpc:resource=sim,qpu_s=")
    assert f"tasks={result['evaluations']}" in comment


def test_two_sessions_share_the_qpu_batch_backfills_third_waits_on_the_licence(
    cluster: Cluster, timed_out_job: str
) -> None:
    (cluster.work / "load.py").write_text(LOAD)
    script = cluster.job_script(f"{cluster.python} {cluster.work}/load.py 8")
    common = ["--partition=debug", "--qpu=sim", f"--output={cluster.work}/job-%j.out"]
    first, second, third = (cluster.sbatch(*common, script=script) for _ in range(3))
    wait_for("two running sessions", lambda: all(
        any(s["closed_at"] is None for s in cluster.sessions_of(j)) for j in (first, second)
    ), 60)  # fmt: skip
    assert squeue(third) == ("PENDING", "Licenses")
    assert cluster.sessions_of(third) == []

    # batch work submitted now runs in the gaps the two sessions leave
    user = httpx.post(
        cluster.url + "/v1/tokens", headers={"Authorization": f"Bearer {cluster.admin}"},
        json={"role": "user", "subject": "carol", "account": "chemistry"}, timeout=10,
    ).json()["token"]  # fmt: skip
    bell = cluster.work / "bell.qasm"
    bell.write_text(
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
        "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
    )
    submitted = run(
        cluster.python, "-m", "qhpc.cli", "submit", str(bell), str(bell), str(bell),
        "-r", "sim", "-s", "200", "--json", "--url", cluster.url,
        "--token-file", cluster.token_file(user),
    )  # fmt: skip
    batch = json.loads(submitted.stdout)["job_id"]
    done = wait_for(
        "the batch job", lambda: cluster.broker(f"/jobs/{batch}", user).json()["state"]
        in ("completed", "failed", "cancelled") and cluster.broker(f"/jobs/{batch}", user).json(),
        30,
    )  # fmt: skip
    assert done["state"] == "completed"
    assert squeue(first)[0] == "RUNNING" and squeue(second)[0] == "RUNNING"

    for job in (first, second, third):
        state, _, _ = finished(job, timeout=90)
        assert state == "COMPLETED", cluster.output(job)
        assert int(re.search(r"tasks=(\d+)", cluster.output(job)).group(1)) > 5  # type: ignore[union-attr]
    (one,), (two,), (three,) = (cluster.sessions_of(j) for j in (first, second, third))
    assert one["opened_at"] < two["closed_at"] and two["opened_at"] < one["closed_at"]
    assert three["opened_at"] >= min(one["closed_at"], two["closed_at"]) - 1.0
    usage = {r["group"]: r for r in cluster.broker("/accounting?group_by=job").json()["rows"]}
    assert usage[one["session_id"]]["tasks"] > 5 and usage[two["session_id"]]["tasks"] > 5


def test_scancel_and_time_limit_close_the_session(cluster: Cluster, timed_out_job: str) -> None:
    (cluster.work / "load.py").write_text(LOAD)
    job = cluster.sbatch(
        "--partition=debug", "--qpu=emu", "-L", "qpu_emu:1", f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script(f"{cluster.python} {cluster.work}/load.py 2 600"),
    )  # fmt: skip
    wait_for("the job's tasks", lambda: "tasks=" in cluster.output(job), 60)
    run("scancel", job)
    cancelled_at = time.time()
    closed = wait_for("the session to close", lambda: cluster.sessions_of(job)[0]["closed_at"], 10)
    assert closed - cancelled_at < 5
    state, _, _ = finished(job)
    assert state.startswith("CANCELLED")
    assert float(re.search(r"qpu_s=([0-9.]+)", booked(job)).group(1)) > 0  # type: ignore[union-attr]

    # the time-limit job has been running on the qpu partition since the module began
    state, _, _ = finished(timed_out_job, timeout=120)
    assert state == "TIMEOUT"
    ended = float(run("date", "+%s", "-d", sacct(timed_out_job, "End")[0]).stdout)
    (session,) = cluster.sessions_of(timed_out_job)
    assert session["closed_at"] is not None and session["closed_at"] - ended < 5
    comment = booked(timed_out_job)
    assert float(re.search(r"qpu_s=([0-9.]+)", comment).group(1)) > 0  # type: ignore[union-attr]
    listed = run(
        cluster.python, "-m", "qhpc.cli", "accounting", "--slurm", "--json",
        "--url", cluster.url, "--token-file", cluster.token_file(cluster.admin),
    )  # fmt: skip
    rows = {r["slurm_job_id"]: r for r in json.loads(listed.stdout)}
    assert rows[timed_out_job]["state"] == "TIMEOUT"
    assert rows[timed_out_job]["in_sacct"] is True
    assert rows[job]["resource"] == "emu"


def test_jobs_without_a_session_fail_with_a_clear_message(cluster: Cluster) -> None:
    no_qpu = cluster.sbatch(
        "--partition=debug", f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script(
            f"{cluster.python} -c 'from qhpc.session import QPU; QPU.from_env()'"
        ),
    )  # fmt: skip
    unknown = subprocess.run(
        ["sbatch", "--qpu=nope", "--wrap", "true"], capture_output=True, text=True,
        timeout=60, env=cluster.env, check=False,
    )  # fmt: skip
    assert unknown.returncode != 0
    assert "nope" in unknown.stderr
    two_qpus = cluster.sbatch(
        "--partition=debug", "-L", "qpu_sim:1,qpu_emu:1", f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script("echo body ran"),
    )  # fmt: skip
    assert finished(no_qpu)[0] == "FAILED"
    assert "no QPU session" in cluster.output(no_qpu)
    assert finished(two_qpus)[0] == "FAILED"
    assert "licences of several QPUs" in cluster.output(two_qpus)
    assert "body ran" not in cluster.output(two_qpus)


def test_broker_down_fails_the_job_fast_and_keeps_the_node(cluster: Cluster) -> None:
    original = cluster.settings.read_text()
    dead = f"http://127.0.0.1:{free_port()}"
    cluster.settings.write_text(original.replace(cluster.url, dead))
    try:
        started = time.monotonic()
        job = cluster.sbatch(
            "--partition=debug", "--qpu=sim", "-L", "qpu_sim:1",
            f"--output={cluster.work}/job-%j.out", script=cluster.job_script("echo body ran"),
        )  # fmt: skip
        state, _, exit_code = finished(job, timeout=60)
        took = time.monotonic() - started
    finally:
        cluster.settings.write_text(original)
    output = cluster.output(job)
    assert state == "FAILED" and exit_code == "1:0"
    assert f"the qhpc broker at {dead} is unreachable" in output
    assert "body ran" not in output
    assert took < 30
    node = run("sinfo", "-h", "-p", "debug", "-o", "%T").stdout.strip()
    assert "drain" not in node and "down" not in node, node
