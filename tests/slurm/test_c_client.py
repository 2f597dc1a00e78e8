"""A compiled program's QPU session on the real cluster: libqhpc under ``sbatch --qpu``.

The examples of ``examples/c`` are built with the project's Makefile into the test's
shared work directory (jobs read it), then run inside Slurm jobs. Their session comes
only from what qhpc's hooks put in the job's environment; the same binary run after
the job has ended meets the session its epilog closed. Needs the cluster (see
``test_sessions``) and libcurl/Jansson headers (``scripts/cdeps.sh``).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from test_sessions import Cluster, booked, cluster, finished

from qhpc.slurm import parse_usage_comment

__all__ = ["cluster"]  # the module-scoped broker + applied configuration of test_sessions

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def programs(cluster: Cluster) -> Path:
    """bell and sweep, built in the cluster's work directory (readable by jobs)."""
    if subprocess.run(["bash", str(ROOT / "scripts" / "cdeps.sh"), "check"],
                      capture_output=True, timeout=60).returncode != 0:  # fmt: skip
        message = "libcurl/Jansson headers are missing: run scripts/cdeps.sh (needs root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    out = cluster.work / "c"
    made = subprocess.run(
        ["make", "-C", str(ROOT / "clients" / "c"), f"OUT={out}", "all", "examples"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    for path in [out, *out.iterdir()]:
        path.chmod(path.stat().st_mode | 0o055)  # jobs of any user read and run them
    return out


def test_a_c_program_uses_its_jobs_session_and_is_booked(cluster: Cluster, programs: Path) -> None:
    dump = cluster.work / "c-job.env"
    body = f"env > {dump}\n{programs}/bell 500\n{programs}/sweep 5 200 2"
    job = cluster.sbatch(
        "--qpu=sim", "-J", "qhpc-c", f"--output={cluster.work}/job-%j.out",
        script=cluster.job_script(body),
    )  # fmt: skip
    state, _, exit_code = finished(job, timeout=180)
    output = cluster.output(job)
    assert (state, exit_code) == ("COMPLETED", "0:0"), output
    counts = dict(re.findall(r"^([01]{2}) (\d+)$", output, flags=re.MULTILINE))
    assert set(counts) == {"00", "11"} and sum(map(int, counts.values())) == 500
    assert "shots 500 on sim" in output
    last = output.strip().splitlines()[-1].split()
    assert last[0] == "max_error" and float(last[1]) < 0.25  # 200 shots: 0.07 per point
    # one session, the job's, closed by the epilog, with every task booked to the job
    usage = parse_usage_comment(booked(job))  # the epilog has closed and booked it
    assert usage is not None and usage["resource"] == "sim", usage
    (session,) = cluster.sessions_of(job)
    assert session["resource"] == "sim" and session["closed_at"] is not None
    assert (usage["tasks"], usage["shots"]) == (1 + 10, 500 + 10 * 200)

    # the same binary with the job's environment once the job is over: the session is closed
    environment = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert environment["QHPC_SESSION_ID"] == session["session_id"]
    job_env = {k: v for k, v in environment.items() if k.startswith(("QHPC_", "QRMI_"))}
    after = subprocess.run(
        [str(programs / "bell"), "10"], env={"PATH": "/usr/bin:/bin", **job_env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert after.returncode == 3, after.stderr  # QHPC_E_CLOSED
    assert f"session {session['session_id']} is closed" in after.stderr
    assert environment["QHPC_SESSION"] not in after.stderr
    assert cluster.broker("/resources").status_code == 200  # the broker goes on


def test_a_job_without_a_qpu_gets_a_clear_env_error(cluster: Cluster, programs: Path) -> None:
    job = cluster.sbatch(
        "-J", "qhpc-c-noqpu", f"--output={cluster.work}/job-%j.out",
        script=f"#!/bin/bash\n{programs}/bell 10\necho exit=$?\n",
    )  # fmt: skip
    state, _, _ = finished(job, timeout=120)
    output = cluster.output(job)
    assert state == "COMPLETED", output
    assert "QHPC_URL is unset" in output and "--qpu=NAME" in output
    assert "exit=1" in output  # QHPC_E_ENV
