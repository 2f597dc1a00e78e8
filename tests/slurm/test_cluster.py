"""The one-host Slurm cluster of ``scripts/slurm.sh``: nodes, jobs, the ``--qpu`` SPANK
option and its licence, licences, accounting, slurmrestd with JWT.

Needs the running cluster and QHPC_TEST_SLURM=1 (see conftest.py). The module applies a
small fixture (licences qpu_sim:1 and qpu_emu:1, qhpc's cli_filter, the SPANK line with
allowed=sim,emu, no hooks) and puts the previous fragments back at the end. Jobs run as
the user running the tests (root in CI: apply needs root anyway).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

REST = "http://127.0.0.1:6820"
JOB_TIMEOUT = 120


# Jobs write their slurm-N.out into the current directory: keep them out of the checkout.
JOB_OUTPUT_DIR = tempfile.mkdtemp(prefix="qhpc-slurm-jobs-")


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, cwd=JOB_OUTPUT_DIR
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}\nstdout: {done.stdout}\n"
            f"stderr: {done.stderr}"
        )
    return done


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (values without spaces are enough here)."""
    line = run("scontrol", "show", "job", "-o", job_id).stdout
    return dict(re.findall(r"(\w+)=(\S*)", line))


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def fixture_applied(
    slurm_cluster: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    saved = tmp_path_factory.mktemp("slurm-saved")
    run("bash", str(slurm_cluster), "save", str(saved))
    spank_so = run("bash", str(slurm_cluster), "build-spank").stdout.strip()
    wanted = tmp_path_factory.mktemp("slurm-fixture")
    (wanted / "qhpc.conf").write_text(
        "Licenses=qpu_sim:1,qpu_emu:1\nCliFilterPlugins=cli_filter/lua\n"
    )
    (wanted / "plugstack.conf").write_text(f"required {spank_so} allowed=sim,emu\n")
    run("bash", str(slurm_cluster), "apply", str(wanted), timeout=180)
    try:
        yield
    finally:
        run("bash", str(slurm_cluster), "apply", str(saved), timeout=180)


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    """Job ids a test submitted; whatever still runs at the end is cancelled."""
    submitted: list[str] = []
    yield submitted
    if submitted:
        run("scancel", *submitted, check=False)


def test_status_says_running(slurm_cluster: Path) -> None:
    done = run("bash", str(slurm_cluster), "status")
    assert done.stdout.strip() == "running"


def recorded_daemons() -> dict[str, str]:
    pids = Path(os.environ.get("QHPC_SLURM_DIR", "/var/lib/qhpc-slurm")) / "pids"
    return {path.name: path.read_text() for path in sorted(pids.iterdir())}


def test_start_when_running_changes_nothing(slurm_cluster: Path) -> None:
    before = recorded_daemons()
    done = run("bash", str(slurm_cluster), "start", timeout=120)
    assert done.stdout.strip() == "running"
    assert "already running" in done.stderr
    assert recorded_daemons() == before
    assert {"slurmctld", "slurmdbd", "slurmrestd", "mariadb", "slurmd-qpu0"} <= set(before)


def test_apply_refuses_a_fragment_slurm_cannot_parse(
    slurm_cluster: Path, fixture_applied: None, tmp_path: Path
) -> None:
    before = Path("/etc/slurm/qhpc.conf").read_text()
    daemons = recorded_daemons()
    (tmp_path / "qhpc.conf").write_text("Licenses=qpu_sim:1\nNoSuchParameter=1\n")
    done = run("bash", str(slurm_cluster), "apply", str(tmp_path), check=False, timeout=120)
    assert done.returncode != 0
    assert "NoSuchParameter" in done.stderr
    assert "nothing was changed" in done.stderr
    assert Path("/etc/slurm/qhpc.conf").read_text() == before
    assert recorded_daemons() == daemons


def test_apply_refuses_unexpected_files(slurm_cluster: Path, tmp_path: Path) -> None:
    (tmp_path / "slurm.conf").write_text("ClusterName=other\n")
    done = run("bash", str(slurm_cluster), "apply", str(tmp_path), check=False)
    assert done.returncode != 0
    assert "unexpected file" in done.stderr


def test_both_nodes_respond_in_their_partitions(slurm_cluster: Path) -> None:
    host = run("hostname", "-s").stdout.strip()
    lines = run("sinfo", "-h", "-N", "-o", "%N %P %T").stdout.split("\n")
    nodes = {tuple(line.split()) for line in lines if line.strip()}
    names = {(node, partition.rstrip("*")) for node, partition, _ in nodes}
    assert names == {(host, "debug"), ("qpu0", "qpu")}
    for node, _, state in nodes:
        assert state in {"idle", "mixed", "allocated", "completing"}, (node, state)


def test_a_trivial_job_runs(slurm_cluster: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    done = run(
        "sbatch",
        "--parsable",
        "--wait",
        "-o",
        str(out),
        "--wrap",
        "echo hello $SLURM_JOB_ID",
        timeout=JOB_TIMEOUT,
    )
    job_id = done.stdout.strip().split(";")[0]
    assert out.read_text().strip() == f"hello {job_id}"


def test_a_job_runs_in_the_qpu_partition(slurm_cluster: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    run(
        "sbatch",
        "--parsable",
        "--wait",
        "-p",
        "qpu",
        "-o",
        str(out),
        "--wrap",
        "echo $SLURM_JOB_PARTITION $SLURMD_NODENAME",
        timeout=JOB_TIMEOUT,
    )
    assert out.read_text().split() == ["qpu", "qpu0"]


def test_unknown_qpu_is_refused_at_submit_time(fixture_applied: None) -> None:
    name = unique_name("nosuch-job")
    done = run("sbatch", "--qpu=nosuch", "-J", name, "--wrap", "true", check=False)
    assert done.returncode != 0
    assert "unknown QPU 'nosuch'" in done.stderr
    assert "sim,emu" in done.stderr
    assert run("squeue", "-h", "-n", name).stdout.strip() == ""


def test_a_malformed_qpu_name_is_refused(fixture_applied: None) -> None:
    done = run("sbatch", "--qpu=sim,", "--wrap", "true", check=False)
    assert done.returncode != 0
    assert "--qpu" in done.stderr


def test_qpu_option_reaches_the_job_and_requests_the_licence(
    fixture_applied: None, tmp_path: Path, jobs: list[str]
) -> None:
    out = tmp_path / "out.txt"
    job_id = run(
        "sbatch",
        "--parsable",
        "--hold",
        "--qpu=sim",
        "-o",
        str(out),
        "--wrap",
        'echo "QPU=$SLURM_JOB_QPU"',
    ).stdout.strip()
    jobs.append(job_id)
    assert job_fields(job_id)["Licenses"] == "qpu_sim:1"
    run("scontrol", "release", job_id)
    wait_for(
        f"job {job_id} to finish",
        lambda: job_fields(job_id)["JobState"] in {"COMPLETED", "FAILED", "CANCELLED"},
        timeout=JOB_TIMEOUT,
    )
    assert job_fields(job_id)["JobState"] == "COMPLETED"
    assert out.read_text().strip() == "QPU=sim"


@pytest.mark.parametrize("licence", ["qpu_emu:1", "qpu_emu"])
def test_an_explicit_licence_count_wins_over_the_qpu_default(
    fixture_applied: None, jobs: list[str], licence: str
) -> None:
    # -L NAME and NAME:COUNT (22.05.8 refuses NAME*COUNT at submission, "Invalid license
    # specification", though the filter reads it too): qpu_emu is not requested twice.
    job_id = run(
        "sbatch",
        "--parsable",
        "--hold",
        "--qpu=sim,emu",
        "-L",
        licence,
        "--wrap",
        "true",
    ).stdout.strip()
    jobs.append(job_id)
    assert sorted(job_fields(job_id)["Licenses"].split(",")) == [licence, "qpu_sim:1"]


def test_a_second_licence_holder_waits_for_the_first(
    fixture_applied: None, jobs: list[str]
) -> None:
    first = run("sbatch", "--parsable", "-L", "qpu_sim:1", "--wrap", "sleep 120").stdout.strip()
    jobs.append(first)
    wait_for(f"job {first} to run", lambda: job_fields(first)["JobState"] == "RUNNING")
    second = run("sbatch", "--parsable", "-L", "qpu_sim:1", "--wrap", "true").stdout.strip()
    jobs.append(second)
    wait_for(
        f"job {second} to wait on the licence",
        lambda: job_fields(second)["Reason"] == "Licenses",
        timeout=15,
    )
    assert job_fields(second)["JobState"] == "PENDING"
    run("scancel", first)
    wait_for(
        f"job {second} to start once the licence is free",
        lambda: job_fields(second)["JobState"] in {"RUNNING", "COMPLETING", "COMPLETED"},
    )


def test_sacct_shows_a_finished_job(slurm_cluster: Path) -> None:
    name = unique_name("acct")
    job_id = run(
        "sbatch",
        "--parsable",
        "--wait",
        "-J",
        name,
        "-o",
        "/dev/null",
        "--wrap",
        "true",
        timeout=JOB_TIMEOUT,
    ).stdout.strip()

    def accounted() -> bool:
        rows = run(
            "sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,JobName,State,Account"
        ).stdout.split()
        return rows == [f"{job_id}|{name}|COMPLETED|physics"]

    wait_for(f"sacct to show job {job_id}", accounted, timeout=30)


def test_accounts_exist_for_root(slurm_cluster: Path) -> None:
    rows = run(
        "sacctmgr", "-n", "-P", "list", "assoc", "cluster=qhpc", "user=root", "format=account"
    ).stdout.split()
    # root also keeps the association with account root that every cluster starts with.
    assert {"chemistry", "physics"} <= set(rows)


def rest_token() -> str:
    line = run("scontrol", "token", "username=root", "lifespan=300").stdout.strip()
    assert line.startswith("SLURM_JWT=")
    return line.removeprefix("SLURM_JWT=")


@pytest.mark.parametrize("path", ["/slurm/v0.0.38/ping", "/slurm/v0.0.38/diag"])
def test_slurmrestd_answers_with_a_token(slurm_cluster: Path, path: str) -> None:
    headers = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": rest_token()}
    with httpx.Client(base_url=REST, trust_env=False, timeout=30) as client:
        response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["errors"] == []


def test_slurmrestd_ping_reports_the_controller_up(slurm_cluster: Path) -> None:
    headers = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": rest_token()}
    with httpx.Client(base_url=REST, trust_env=False, timeout=30) as client:
        pings = client.get("/slurm/v0.0.38/ping", headers=headers).json()["pings"]
    assert [ping["ping"] for ping in pings] == ["UP"]


def test_slurmrestd_refuses_without_a_token(slurm_cluster: Path) -> None:
    with httpx.Client(base_url=REST, trust_env=False, timeout=30) as client:
        assert client.get("/slurm/v0.0.38/ping").status_code == 401
        # A token that is no JWT at all gets 500 from 22.05's rest_auth/jwt, not 401.
        bad = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": "not-a-token"}
        assert client.get("/slurm/v0.0.38/ping", headers=bad).status_code in {401, 500}
