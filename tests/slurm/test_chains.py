"""Job chains, a heterogeneous job and slurmrestd submission on a real Slurm cluster.

Needs the one-host cluster of ``scripts/slurm.sh start`` (partitions ``debug`` and
``qpu``, slurmdbd, slurmrestd on 127.0.0.1:6820 with JWT) and QHPC_TEST_SLURM=1.
Jobs run as the user running the tests and need no qhpc hooks or broker.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port, start_serve, wait_healthy
from qhpc.client import connect
from qhpc.slurm.chain import Chain, SlurmCommands
from qhpc.slurm.checkpoint import read_checkpoint
from qhpc.slurm.rest import SlurmRestClient, token_from_scontrol
from qhpc.slurm.templates import hetjob_script

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("QHPC_TEST_SLURM") != "1",
        reason="needs the test Slurm cluster (bash scripts/slurm.sh start; QHPC_TEST_SLURM=1)",
    ),
    pytest.mark.slow,
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "slurm" / "chain_vqe.py"
RESTD = os.environ.get("QHPC_TEST_SLURMRESTD", "http://127.0.0.1:6820")
USER = os.environ.get("USER") or "root"
FAILS_AT_TWO = """
def chain_step(state, step, steps):
    if step == 2:
        raise RuntimeError("step 2 breaks on purpose")
    return {"steps": (state or {"steps": []})["steps"] + [step]}
"""


def slurm(*command: str, check: bool = True) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # steps must use the local simulator, and tokens come from this cluster
    for name in ("QHPC_FASTPATH", "QHPC_SESSION", "SLURM_JWT", "CHAIN_VQE_ITERATIONS"):
        monkeypatch.delenv(name, raising=False)


class SpySlurm(SlurmCommands):
    """The real commands, remembering what the chain cancelled itself."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[int] = []

    def scancel(self, job_ids: Iterable[int]) -> None:
        ids = list(job_ids)
        self.cancelled += ids
        super().scancel(ids)


@pytest.fixture
def chains() -> Iterator[list[Chain]]:
    """Chains made by a test; whatever is left of them is cancelled afterwards."""
    made: list[Chain] = []
    yield made
    for chain in made:
        chain.cancel()


def _job_id(row: list[str]) -> int:
    return int(row[0])


def accounted(job_ids: list[int], fields: str = "JobIDRaw,State,Start,End") -> list[list[str]]:
    """sacct rows of ``job_ids`` in id order, once slurmdbd has all of them final."""
    deadline = time.monotonic() + 30
    while True:
        out = slurm("sacct", "-n", "-P", "-X", "-o", fields, "-j", ",".join(map(str, job_ids)))
        rows = sorted(
            (line.split("|") for line in out.splitlines() if line), key=lambda r: int(r[0])
        )
        final = [r for r in rows if r[1].split()[0] not in ("PENDING", "RUNNING")]
        if len(final) == len(job_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def waiting(job_ids: list[int]) -> list[str]:
    return slurm("squeue", "-h", "-o", "%i %T %r", "-j", ",".join(map(str, job_ids)),
                 check=False).splitlines()  # fmt: skip


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("chain_vqe_slurm_test", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_step_vqe_chain_completes_on_the_qpu_partition(
    tmp_path: Path, chains: list[Chain]
) -> None:
    chain = Chain(EXAMPLE, 3, tmp_path / "vqe", sbatch_args=["--partition=qpu"], name="vqe")
    chains.append(chain)
    ids = chain.submit()
    status = chain.wait(timeout=600, poll=1.0)
    assert status.state == "completed", status.describe()
    per_step = load_example().ITERATIONS_PER_STEP
    for step in (1, 2, 3):  # each step carried the previous one's optimiser state on
        assert read_checkpoint(chain.directory, step)["iteration"] == step * per_step
    result = chain.result()
    uninterrupted = load_example().uninterrupted(steps=3)
    assert result["energy"] == pytest.approx(uninterrupted["energy"], abs=1e-9)
    assert result["error_mha"] < 1.6
    rows = accounted(ids)
    assert [r[1] for r in rows] == ["COMPLETED"] * 3
    for before, after in itertools.pairwise(rows):
        assert after[2] >= before[3], "afterok: a step started before the previous one ended"
    assert "step 3/3" in (chain.directory / "step-003.out").read_text()


@pytest.mark.parametrize("slurm_kills", [True, False], ids=["slurm-kills", "qhpc-cancels"])
def test_a_failing_step_ends_the_chain_with_nothing_pending(
    tmp_path: Path, chains: list[Chain], slurm_kills: bool
) -> None:
    program = tmp_path / "fails.py"
    program.write_text(FAILS_AT_TWO)
    spy = SpySlurm()
    # --kill-on-invalid-dep=no keeps step 3 pending (DependencyNeverSatisfied) even on a
    # cluster with kill_invalid_depend: the chain itself must then cancel it
    extra = [] if slurm_kills else ["--kill-on-invalid-dep=no"]
    chain = Chain(program, 3, tmp_path / "chain", sbatch_args=extra, slurm=spy)
    chains.append(chain)
    ids = chain.submit()
    status = chain.wait(timeout=300, poll=0.5)
    assert status.state == "failed"
    assert status.failed_step is not None and status.failed_step.step == 2
    assert [s.state for s in status.steps] == ["COMPLETED", "FAILED", "CANCELLED"]
    if not slurm_kills:  # (with Slurm killing, qhpc may still win the race: either is fine)
        assert spy.cancelled == [ids[2]]
    assert waiting(ids) == []
    assert [r[1].split()[0] for r in accounted(ids)] == ["COMPLETED", "FAILED", "CANCELLED"]
    assert "step 2 breaks on purpose" in (chain.directory / "step-002.out").read_text()
    assert read_checkpoint(chain.directory, 1) == {"steps": [1]}
    # the CLI finds the chain from a step's job id and reports where it broke
    shown = subprocess.run(
        [sys.executable, "-m", "qhpc.cli", "slurm", "chain", "status", str(ids[0]), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert '"state": "failed"' in shown.stdout


def test_hetjob_template_runs_with_a_qpu_component(tmp_path: Path) -> None:
    script = tmp_path / "het.sh"
    script.write_text(
        hetjob_script(
            command=["bash", "-c", "echo qpu-side node=$SLURMD_NODENAME het=$SLURM_HET_SIZE"],
            classical_command=["bash", "-c", "echo classical-side node=$SLURMD_NODENAME"],
            time_limit="5",
        )
    )
    output = tmp_path / "het.out"
    done = subprocess.run(
        ["sbatch", "--parsable", "--wait", f"--output={output}", str(script)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = output.read_text()
    assert "2 components" in text
    assert "qpu-side node=qpu0 het=2" in text
    assert f"classical-side node={socket.gethostname().split('.')[0]}" in text


def test_a_job_submitted_through_slurmrestd_runs_and_reports_its_state(tmp_path: Path) -> None:
    script = tmp_path / "remote.sh"
    script.write_text("#!/bin/bash\necho remote-ok job=$SLURM_JOB_ID\nexit ${CODE:-0}\n")

    def submit(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qhpc.cli", "slurm", "submit", str(script),
             "--remote", RESTD, "--user", USER, "--chdir", str(tmp_path), "-p", "debug",
             "--wait", "--poll", "0.5", "--timeout", "240", *extra],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    done = submit()  # no token given: the CLI gets one with `scontrol token`
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    job_id = int(lines[0].split()[3])
    assert lines[0] == f"submitted batch job {job_id} to {RESTD} as {USER}"
    assert lines[-1] == f"job {job_id}: COMPLETED, exit code 0"
    assert (tmp_path / f"slurm-{job_id}.out").read_text().strip() == f"remote-ok job={job_id}"

    token = token_from_scontrol(USER, lifespan=300)
    jwt, bogus = tmp_path / "jwt", tmp_path / "bogus"  # never a token as an argument
    jwt.write_text(token + "\n")
    bogus.write_text("not-a-jwt\n")
    failed = submit("--token-file", str(jwt), "--env", "CODE=3")
    assert failed.returncode == 3, failed.stderr
    assert failed.stdout.splitlines()[-1].endswith("FAILED (NonZeroExitCode), exit code 3")

    refused = submit("--token-file", str(bogus))
    assert refused.returncode == 1
    assert "token slurmctld refused" in " ".join(refused.stderr.split())
    with SlurmRestClient(RESTD, USER, token) as rest:  # slurmrestd and Slurm kept running
        assert rest.ping()[0]["ping"] == "UP"
        assert rest.job(job_id).state == "COMPLETED"


BELL_JOB = """#!/bin/bash
{python} - <<'PYTHON'
from qiskit import QuantumCircuit
from qhpc.session import QPU
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
qpu = QPU.from_env()
print("counts", sorted(qpu.run(bell, shots=200)))
qpu.close()
PYTHON
"""


def test_a_centre_submits_through_slurmrestd_and_its_user_is_accounted_at_the_broker(
    tmp_path: Path,
) -> None:
    port, fastpath = free_port(), f"tcp://127.0.0.1:{free_port()}"
    broker = start_serve(tmp_path, port, "--fastpath", fastpath, db=tmp_path / "broker.db")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, broker)
        with connect(url, (tmp_path / "admin.token").read_text().strip()) as admin:
            admin.set_account("north-chem", 1.0, centre="north")
            centre_token = admin.create_token("centre", "north-gw", centre="north")["token"]
            centre_file = tmp_path / "centre.token"  # never a token as an argument
            centre_file.write_text(centre_token + "\n")
            script = tmp_path / "bell.sh"
            script.write_text(BELL_JOB.format(python=sys.executable))
            done = subprocess.run(
                [sys.executable, "-m", "qhpc.cli", "slurm", "submit", str(script),
                 "--remote", RESTD, "--user", USER, "--chdir", str(tmp_path), "-p", "qpu",
                 "--broker", url, "--broker-token-file", str(centre_file), "--qpu", "aer",
                 "--for-user", "alice", "--broker-account", "north-chem", "--no-qpu-licence",
                 "--fastpath", fastpath, "--wait", "--poll", "0.5", "--timeout", "240"],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            job_id = int(done.stdout.split("submitted batch job ")[1].split()[0])
            output = (tmp_path / f"slurm-{job_id}.out").read_text()
            assert "counts ['00', '11']" in output, output
            by_user = {row["group"]: row for row in admin.accounting(group_by="user")}
            by_centre = {row["group"]: row for row in admin.accounting(group_by="centre")}
        assert by_user["alice"]["tasks"] == 1 and by_user["alice"]["shots"] == 200
        assert by_centre["north"]["tasks"] == 1
    finally:
        broker.terminate()
        broker.wait(timeout=30)
