"""The loop back to Slurm on the real cluster: QPU state held in Slurm, hetjobs.

- A QPU out of service holds its jobs PENDING, with why and until when:
  ``sbatch --qpu=emu`` while the broker reports the QPU drained used to start at
  once and hold its licence for nothing. Here the feedback agent (``qhpc slurm
  feedback``) runs beside slurmctld as a real process, the operator drains the QPU
  over REST, and the job must stay PENDING with a comment naming the QPU's state,
  reason and end, then start within seconds of the resume.
- A heterogeneous job's QPU component reaches its session: its tasks see the
  leader's ``SLURM_JOB_ID`` while the session belongs to the component's job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_sessions import (
    GATEWAY,
    LOAD,
    Cluster,
    booked,
    cluster,
    finished,
    run,
    squeue,
    wait_for,
)

from qhpc.slurm import parse_usage_comment

__all__ = ["cluster"]  # the module-scoped broker + applied configuration of test_sessions

pytestmark = pytest.mark.slow


def comment(job_id: str) -> str:
    out = run("squeue", "-h", "-j", job_id, "-o", "%k", check=False).stdout.strip()
    return "" if out == "(null)" else out


def admin_post(cluster: Cluster, path: str, body: dict[str, object] | None = None) -> None:
    answer = httpx.post(
        cluster.url + "/v1" + path, json=body,
        headers={"Authorization": f"Bearer {cluster.admin}"}, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text


def qhpc(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    token = cluster.token_file(cluster.admin)
    return run(sys.executable, "-m", "qhpc.cli", *args, "--url", cluster.url, "--token-file", token)


def test_a_drained_qpu_holds_its_jobs_pending_and_releases_them_on_resume(
    cluster: Cluster,
) -> None:
    (cluster.work / "load.py").write_text(LOAD)
    token = cluster.token_file(cluster.admin)
    agent = subprocess.Popen(
        [sys.executable, "-m", "qhpc.cli", "slurm", "feedback", "--threshold", "30",
         "--interval", "0.5", "--url", cluster.url, "--token-file", token],
        stdout=(cluster.work / "feedback.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    job = ""
    try:
        admin_post(cluster, "/resources/emu/drain",
                   {"reason": "cryostat warm-up", "for_seconds": 3600})  # fmt: skip
        wait_for("the hold reservation", lambda: "qhpc_hold_emu" in run(
            "scontrol", "show", "reservation", "-o").stdout, timeout=30)  # fmt: skip
        job = cluster.sbatch(
            "--qpu=emu", "-L", "qpu_emu:1", "-J", "qhpc-held",
            f"--output={cluster.work}/job-%j.out",
            script=cluster.job_script(f"{cluster.python} {cluster.work}/load.py 1"),
        )  # fmt: skip
        text = wait_for(f"job {job}'s comment", lambda: comment(job), timeout=30)
        assert text.startswith("qhpc: QPU emu maintenance until ")
        assert "(drained: cryostat warm-up)" in text
        wait_for("Reason=Licenses", lambda: squeue(job) == ("PENDING", "Licenses"), timeout=30)
        time.sleep(3)  # a scheduling pass or three: it must not start
        assert squeue(job)[0] == "PENDING"
        eta = json.loads(qhpc(cluster, "slurm", "eta", job, "--json").stdout)
        (qpu,) = eta["qpus"]
        assert (eta["job_state"], qpu["qpu"], qpu["state"]) == ("PENDING", "emu", "maintenance")
        assert qpu["until"] == pytest.approx(time.time() + 3600, abs=60)
        assert qpu["qpu_work_starts"].startswith(time.strftime("%Y-"))
        resumed = time.monotonic()
        admin_post(cluster, "/resources/emu/resume")
        wait_for(f"job {job} to start", lambda: squeue(job)[0] in ("RUNNING", ""), timeout=30)
        assert time.monotonic() - resumed < 15
        state, _, exit_code = finished(job, timeout=120)
        assert (state, exit_code) == ("COMPLETED", "0:0"), cluster.output(job)
        assert "tasks=" in cluster.output(job)
        wait_for("the hold to go", lambda: "qhpc_hold_emu" not in run(
            "scontrol", "show", "reservation", "-o").stdout, timeout=30)  # fmt: skip
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, (cluster.work / "feedback.log").read_text()
        if job:
            run("scancel", job, check=False)
        run("scontrol", "delete", "ReservationName=qhpc_hold_emu", check=False)
        httpx.post(cluster.url + "/v1/resources/emu/resume", timeout=10,
                   headers={"Authorization": f"Bearer {cluster.admin}"})  # fmt: skip
    log = (cluster.work / "feedback.log").read_text()
    assert "held emu" in log and "released emu" in log


def test_a_short_drain_does_not_bounce_jobs_and_an_open_ended_one_is_renewed(
    cluster: Cluster,
) -> None:
    try:
        admin_post(cluster, "/resources/emu/drain", {"reason": "quick fix", "for_seconds": 20})
        done = qhpc(cluster, "slurm", "feedback", "--once", "--threshold", "60")
        assert "held" not in done.stdout  # ends within the threshold: Slurm is left alone
        admin_post(cluster, "/resources/emu/drain", {"reason": "until further notice"})
        done = qhpc(cluster, "slurm", "feedback", "--once", "--threshold", "0")
        assert "held emu" in done.stdout, done.stdout + done.stderr
        line = run("scontrol", "show", "reservation", "qhpc_hold_emu", "-o").stdout
        assert "Licenses=qpu_emu:2" in line and "Flags=ANY_NODES" in line
        # no known end: a hold of ten minutes (rounded up to the second), renewed
        assert re.search(r"Duration=00:10:0[01] ", line), line
        again = qhpc(cluster, "slurm", "feedback", "--once", "--threshold", "0")
        assert "held" not in again.stdout  # fresh enough: not rewritten every step
        admin_post(cluster, "/resources/emu/resume")
        done = qhpc(cluster, "slurm", "feedback", "--once", "--threshold", "0")
        assert "released emu" in done.stdout
    finally:
        run("scontrol", "delete", "ReservationName=qhpc_hold_emu", check=False)
        httpx.post(cluster.url + "/v1/resources/emu/resume", timeout=10,
                   headers={"Authorization": f"Bearer {cluster.admin}"})  # fmt: skip


def test_eta_refuses_what_is_not_a_job_id(cluster: Cluster) -> None:
    token = cluster.token_file(cluster.admin)
    done = run(
        sys.executable, "-m", "qhpc.cli", "slurm", "eta", "1;reboot", "--url", cluster.url,
        "--token-file", token, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "not a Slurm job id" in done.stderr
    missing = run(
        sys.executable, "-m", "qhpc.cli", "slurm", "eta", "999999", "--url", cluster.url,
        "--token-file", token, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "999999" in missing.stderr
    assert Path(token).exists()


QPU_SIDE = """
from qiskit import QuantumCircuit
from qhpc.session import QPU
qpu = QPU.from_env(timeout=60)
bell = QuantumCircuit(2, 2); bell.h(0); bell.cx(0, 1); bell.measure([0, 1], [0, 1])
counts = qpu.run(bell, shots=100)
print(f"qpu-side shots={sum(counts.values())} resource={qpu.resource}", flush=True)
"""


def test_the_qpu_component_of_a_hetjob_reaches_its_session(cluster: Cluster) -> None:
    (cluster.work / "qpu_side.py").write_text(QPU_SIDE)
    script = run(
        sys.executable, "-m", "qhpc.cli", "slurm", "template", "hetjob", "--qpu", "sim",
        "--licenses", "qpu_sim:1", "--classical", "hostname >/dev/null; echo classical-done",
        "--time", "5", "--", cluster.python, str(cluster.work / "qpu_side.py"),
    ).stdout  # fmt: skip
    assert "bash -c 'hostname >/dev/null; echo classical-done'" in script
    job = cluster.sbatch(f"--output={cluster.work}/job-%j.out", script=script)
    state, _, exit_code = finished(job, timeout=180)
    output = cluster.output(job)
    assert (state, exit_code) == ("COMPLETED", "0:0"), output
    assert "classical-done" in output
    assert "qpu-side shots=100 resource=sim" in output


ESTIMATE = """
from qiskit import QuantumCircuit
from qhpc.session import QPU
qpu = QPU.from_env(timeout=60)
bell = QuantumCircuit(2); bell.h(0); bell.cx(0, 1)
print("zz", qpu.estimate(bell, ["ZZ", "ZI"], shots=100), flush=True)
qpu.run(QuantumCircuit.from_qasm_str(
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[1]; creg c[1]; measure q -> c;'), shots=50)
"""


def test_slurm_accounts_the_licence_and_qhpc_books_estimator_shots(cluster: Cluster) -> None:
    (cluster.work / "estimate.py").write_text(ESTIMATE)
    job = cluster.sbatch(
        "--qpu=emu", "-L", "qpu_emu:1", f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script(f"{cluster.python} {cluster.work}/estimate.py"),
    )  # fmt: skip
    state, _, exit_code = finished(job, timeout=120)
    assert (state, exit_code) == ("COMPLETED", "0:0"), cluster.output(job)
    # Slurm's own accounting: the licence held is a TRES of the job (AccountingStorageTRES)
    tres = run("sacct", "-n", "-P", "-X", "-j", job, "-o", "AllocTRES").stdout
    assert "license/qpu_emu=1" in tres, tres
    # qhpc's: QPU seconds and shots in AdminComment, the estimator's shots included (two
    # commuting observables: one measurement group of 100 shots, plus the 50 sampled)
    comment = booked(job)
    usage = parse_usage_comment(comment)
    assert usage is not None and usage["resource"] == "emu", comment
    assert usage["shots"] == 150 and usage["tasks"] == 2 and usage["qpu_seconds"] > 0


RESTD = os.environ.get("QHPC_TEST_SLURMRESTD", "http://127.0.0.1:6820")
REMOTE_BELL = """#!/bin/bash
{python} - <<'PYTHON'
from qiskit import QuantumCircuit
from qhpc.session import QPU
bell = QuantumCircuit(2); bell.h(0); bell.cx(0, 1); bell.measure_all()
qpu = QPU.from_env()
print("counts", sorted(qpu.run(bell, shots=200)), flush=True)
qpu.close()
PYTHON
"""


@pytest.mark.parametrize("licence", [None, "qpu_sim:1"])
def test_a_centres_job_honours_the_licence_and_is_booked_to_the_centres_user(
    cluster: Cluster, licence: str | None
) -> None:
    headers = {"Authorization": f"Bearer {cluster.admin}"}
    httpx.put(cluster.url + "/v1/accounts/north-chem", json={"shares": 1.0, "centre": "north"},
              headers=headers, timeout=10).raise_for_status()  # fmt: skip
    created = httpx.post(
        cluster.url + "/v1/tokens",
        headers=headers,
        timeout=10,
        json={"role": "centre", "subject": "north-gw", "centre": "north", "account": "north-chem"},
    )
    created.raise_for_status()  # fmt: skip
    centre = cluster.token_file(created.json()["token"])
    script = cluster.work / f"remote-{licence is None}.sh"
    script.write_text(REMOTE_BELL.format(python=cluster.python))
    done = run(
        sys.executable, "-m", "qhpc.cli", "slurm", "submit", str(script), "--remote", RESTD,
        "--user", GATEWAY, "--chdir", str(cluster.work), "-p", "debug",
        *(["-L", licence] if licence else []),
        "--broker", cluster.url, "--broker-token-file", centre, "--qpu", "sim",
        "--for-user", "alice", "--broker-account", "north-chem",
        "--fastpath", cluster.fastpath, "--wait", "--poll", "0.5", "--timeout", "240",
        timeout=300,
    )  # fmt: skip
    job = done.stdout.split("submitted batch job ")[1].split()[0]
    assert "counts ['00', '11']" in (cluster.work / f"slurm-{job}.out").read_text()
    # the site's licence limit held: the job asked for the QPU's licence, with or without -L
    tres = run("sacct", "-n", "-P", "-X", "-j", job, "-o", "AllocTRES").stdout
    assert "license/qpu_sim=1" in tres, tres
    # one session, the centre's, adopted by the site's hooks (none of their own)
    (session,) = cluster.sessions_of(job)
    assert (session["centre"], session["user"], session["account"]) == (
        "north", "alice", "north-chem",
    )  # fmt: skip
    usage = parse_usage_comment(booked(job))
    assert usage is not None and usage["tasks"] == 1 and usage["shots"] == 200
    # booked at the broker to the centre's user and account, under the centre
    rows = cluster.broker("/accounting?group_by=job").json()["rows"]
    (mine,) = [r for r in rows if r["group"] == session["session_id"]]
    assert mine["shots"] == 200 and mine["tasks"] == 1
    by_centre = {
        r["group"]: r for r in cluster.broker("/accounting?group_by=centre").json()["rows"]
    }
    assert by_centre["north"]["shots"] >= 200


TWO_QPUS = """
import os
from qiskit import QuantumCircuit
from qhpc.session import QPU
bell = QuantumCircuit(2, 2); bell.h(0); bell.cx(0, 1); bell.measure([0, 1], [0, 1])
for name in os.environ["QRMI_JOB_QPU_RESOURCES"].split(","):
    qpu = QPU.from_env(timeout=60, resource=name)
    print(f"{name}: shots={sum(qpu.run(bell, shots=100).values())} on {qpu.resource}", flush=True)
print("types", os.environ["QRMI_JOB_QPU_TYPES"], flush=True)
"""


def test_a_job_holds_a_session_on_each_of_several_qpus(cluster: Cluster) -> None:
    (cluster.work / "two.py").write_text(TWO_QPUS)
    job = cluster.sbatch(
        "--qpu=sim,emu", f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script(f"{cluster.python} {cluster.work}/two.py"),
    )  # fmt: skip
    state, _, exit_code = finished(job, timeout=120)
    output = cluster.output(job)
    assert (state, exit_code) == ("COMPLETED", "0:0"), output
    assert "sim: shots=100 on sim" in output and "emu: shots=100 on emu" in output
    assert "types aer,emulator" in output
    usage = parse_usage_comment(booked(job))  # the epilog has closed and booked them
    sessions = cluster.sessions_of(job)
    assert sorted(s["resource"] for s in sessions) == ["emu", "sim"]
    assert all(s["closed_at"] is not None for s in sessions)  # both closed with the job
    assert usage is not None and usage["resource"] == "sim+emu" and usage["shots"] == 200
    # both licences held, each counted against its QPU's limit
    tres = run("sacct", "-n", "-P", "-X", "-j", job, "-o", "AllocTRES").stdout
    assert "license/qpu_sim=1" in tres and "license/qpu_emu=1" in tres, tres


def test_naming_a_qpu_twice_fails_the_job_with_a_message(cluster: Cluster) -> None:
    job = cluster.sbatch(
        "--qpu=sim,sim", f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script("echo should-not-run"),
    )  # fmt: skip
    state, _, _ = finished(job, timeout=120)
    output = cluster.output(job)
    assert state == "FAILED" and "should-not-run" not in output
    assert "sim named twice" in output


HEAVY = """
import sys, time
from qiskit import QuantumCircuit
from qhpc.session import QPU
qpu = QPU.from_env(timeout=120)
bell = QuantumCircuit(2, 2); bell.h(0); bell.cx(0, 1); bell.measure([0, 1], [0, 1])
end, tasks = time.time() + float(sys.argv[1]), 0
while time.time() < end:  # no think time: the session keeps the QPU busy all along
    qpu.run(bell, shots=100); tasks += 1
print(f"tasks={tasks}", flush=True)
"""


def test_admission_steered_by_duty_cycle_keeps_a_second_session_job_waiting(
    cluster: Cluster,
) -> None:
    (cluster.work / "heavy.py").write_text(HEAVY)
    token = cluster.token_file(cluster.admin)
    log = cluster.work / "steer.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "qhpc.cli", "slurm", "feedback", "--threshold", "30",
         "--interval", "0.5", "--url", cluster.url, "--token-file", token],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    jobs: list[str] = []
    try:
        heavy = cluster.sbatch(
            "--qpu=emu", "-J", "qhpc-heavy", f"--output={cluster.work}/job-%j.out",
            script=cluster.job_script(f"{cluster.python} {cluster.work}/heavy.py 20"),
        )  # fmt: skip
        jobs.append(heavy)
        # once the heavy session is measured, only it fits 1.1x: one of two licences open
        wait_for("the admission hold", lambda: "admission emu: 1 of 2 licences open"
                 in log.read_text(), timeout=60)  # fmt: skip
        second = cluster.sbatch(
            "--qpu=emu", "-J", "qhpc-second", f"--output={cluster.work}/job-%j.out",
            script=cluster.job_script(f"{cluster.python} {cluster.work}/heavy.py 1"),
        )  # fmt: skip
        jobs.append(second)
        wait_for("Reason=Licenses", lambda: squeue(second) == ("PENDING", "Licenses"), 30)
        assert squeue(heavy)[0] == "RUNNING"
        admission = cluster.broker("/resources/emu/admission?licences=2").json()
        assert admission["admitted"] == 1 and admission["hold"] == 1, admission
        assert admission["duty_cycles"][0] > 0.5
        # the heavy job ends: its licence frees and the second one starts
        state, _, code = finished(second, timeout=120)
        assert (state, code) == ("COMPLETED", "0:0"), cluster.output(second)
        assert finished(heavy, timeout=60)[0] == "COMPLETED"
        started = run("sacct", "-n", "-P", "-X", "-j", second, "-o", "Start").stdout.strip()
        ended = run("sacct", "-n", "-P", "-X", "-j", heavy, "-o", "End").stdout.strip()
        assert started >= ended  # it waited for the heavy one (ISO times sort as text)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()
        for job in jobs:
            run("scancel", job, check=False)
        run("scontrol", "delete", "ReservationName=qhpc_hold_emu", check=False)
