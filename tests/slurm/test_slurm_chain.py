"""Job chains without a cluster: checkpoints, the step runner, and chain logic against a
fake Slurm that keeps afterok semantics (real Slurm: tests/slurm/test_chains.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qhpc.slurm.chain import (
    Chain,
    ChainManifest,
    JobState,
    SlurmCommands,
    main,
    parse_scontrol_job,
    run_step,
)
from qhpc.slurm.checkpoint import (
    CHAIN_DIR_ENV,
    STEP_ENV,
    STEPS_ENV,
    ChainError,
    CheckpointError,
    StepContext,
    checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from qhpc.slurm.errors import SlurmCommandError
from qhpc.slurm.templates import chain_step_script, hetjob_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "chain_vqe.py"

COUNTER = """
def chain_step(state, step, steps):
    state = state or {"total": 0, "seen": []}
    if step == FAIL_AT:
        raise RuntimeError("step %d breaks on purpose" % step)
    return {"total": state["total"] + step, "seen": state["seen"] + [step]}
FAIL_AT = 0
"""


def write_program(tmp_path: Path, text: str = COUNTER, name: str = "prog.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_keeps_numpy_values(tmp_path: Path) -> None:
    state = {"theta": np.array([0.5, -1.25]), "count": np.int64(3), "name": "x"}
    path = write_checkpoint(tmp_path, 2, state)
    assert path == checkpoint_path(tmp_path, 2)
    assert read_checkpoint(tmp_path, 2) == {"theta": [0.5, -1.25], "count": 3, "name": "x"}
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "left no checkpoint"),
        ("{not json", "is not JSON"),
        ('{"format": 1, "state": [1, 2]}', "holds no state object"),
        ('{"format": 99, "state": {}}', "format 99"),
    ],
)
def test_bad_checkpoints_are_named(tmp_path: Path, content: str | None, problem: str) -> None:
    if content is not None:
        checkpoint_path(tmp_path, 1).write_text(content)
    with pytest.raises(CheckpointError, match=problem):
        read_checkpoint(tmp_path, 1)


def test_unstorable_state_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot be stored"):
        write_checkpoint(tmp_path, 1, {"handle": object()})
    assert list(tmp_path.iterdir()) == []


def test_step_context_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STEP_ENV, raising=False)
    with pytest.raises(ChainError, match=STEP_ENV):
        StepContext.from_env()
    monkeypatch.setenv(CHAIN_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(STEP_ENV, "2")
    monkeypatch.setenv(STEPS_ENV, "two")
    with pytest.raises(ChainError, match="whole numbers"):
        StepContext.from_env()
    monkeypatch.setenv(STEPS_ENV, "3")
    context = StepContext.from_env()
    assert (context.step, context.steps, context.first, context.last) == (2, 3, False, False)
    with pytest.raises(ChainError, match="outside"):
        StepContext(tmp_path, 4, 3)


# --------------------------------------------------------------------------- running steps


def test_function_steps_carry_state_across_steps(tmp_path: Path) -> None:
    chain = Chain(write_program(tmp_path), 3, tmp_path / "run")
    assert chain.run_here() == {"total": 6, "seen": [1, 2, 3]}
    assert [read_checkpoint(chain.directory, i)["total"] for i in (1, 2, 3)] == [1, 3, 6]


def test_script_steps_use_checkpoint_load_and_save(tmp_path: Path) -> None:
    script = write_program(
        tmp_path,
        "import sys\nfrom qhpc.slurm import checkpoint\n"
        "state = checkpoint.load() or {'path': []}\n"
        "checkpoint.save({'path': state['path'] + [sys.argv[1]]})\n",
    )
    chain = Chain(script, 2, tmp_path / "run", function=None, program_args=["hop"])
    assert chain.run_here() == {"path": ["hop", "hop"]}


def test_a_script_that_saves_nothing_fails_its_step(tmp_path: Path) -> None:
    chain = Chain(write_program(tmp_path, "x = 1\n"), 2, tmp_path / "run", function=None)
    chain.prepare()
    with pytest.raises(ChainError, match="without saving a checkpoint"):
        run_step(chain.directory, 1)


def test_step_errors_name_the_problem(tmp_path: Path) -> None:
    missing = Chain(write_program(tmp_path, "y = 2\n"), 1, tmp_path / "a")
    missing.prepare()
    with pytest.raises(ChainError, match="defines no function chain_step"):
        run_step(missing.directory, 1)
    wrong = Chain(
        write_program(tmp_path, "def chain_step(s, i, n):\n    return 5\n"), 1, tmp_path / "b"
    )
    wrong.prepare()
    with pytest.raises(ChainError, match="returned a int"):
        run_step(wrong.directory, 1)
    early = Chain(write_program(tmp_path), 2, tmp_path / "c")
    early.prepare()
    with pytest.raises(CheckpointError, match="step 1 left no checkpoint"):
        run_step(early.directory, 2)
    with pytest.raises(ChainError, match="does not exist"):
        Chain(tmp_path / "nope.py", 2, tmp_path / "d")
    with pytest.raises(ChainError, match="no job chain"):
        Chain.open(tmp_path / "nowhere")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "chain.json").write_text('{"format": 1, "name": "x", "steps": 0}')
    with pytest.raises(ChainError, match="not a qhpc chain manifest"):
        Chain.open(tmp_path / "e")


def test_step_entry_point_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chain = Chain(write_program(tmp_path, COUNTER.replace("FAIL_AT = 0", "FAIL_AT = 2")), 2,
                  tmp_path / "run")  # fmt: skip
    chain.prepare()
    assert main(["step", "--dir", str(chain.directory), "--step", "1"]) == 0
    assert "saved checkpoint-001.json" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="breaks on purpose"):  # a traceback → exit 1 in a job
        main(["step", "--dir", str(chain.directory), "--step", "2"])
    assert not checkpoint_path(chain.directory, 2).exists()
    assert main(["step", "--dir", str(tmp_path / "none"), "--step", "1"]) == 1
    assert "no job chain" in capsys.readouterr().err


def load_example(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("QHPC_FASTPATH", raising=False)
    monkeypatch.delenv("QHPC_SESSION", raising=False)
    spec = importlib.util.spec_from_file_location("chain_vqe_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_vqe_chain_ends_where_an_uninterrupted_run_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(monkeypatch)
    chained = Chain(EXAMPLE, 3, tmp_path / "vqe").run_here()
    whole = example.uninterrupted(steps=3)
    assert chained["iteration"] == whole["iteration"] == 3 * example.ITERATIONS_PER_STEP
    assert chained["energy"] == pytest.approx(whole["energy"], abs=1e-9)
    assert np.allclose(chained["theta"], whole["theta"], atol=1e-9)
    assert chained["error_mha"] < 1.6  # chemical accuracy
    first = read_checkpoint(tmp_path / "vqe", 1)
    assert first["iteration"] == example.ITERATIONS_PER_STEP
    assert first["energy"] > chained["energy"]  # the later steps kept improving


# --------------------------------------------------------------------------- fake Slurm


@dataclass
class FakeJob:
    job_id: int
    script: Path
    options: list[str]
    state: str = "PENDING"
    reason: str = ""
    exit_code: int | None = None

    @property
    def after(self) -> int | None:
        for option in self.options:
            if option.startswith("--dependency=afterok:"):
                return int(option.split(":")[1])
        return None

    def kill_on_invalid(self, cluster_default: bool) -> bool:
        if "--kill-on-invalid-dep=yes" in self.options:  # yes wins, as in sbatch
            return True
        return cluster_default and "--kill-on-invalid-dep=no" not in self.options


class FakeSlurm(SlurmCommands):
    """afterok as Slurm does it: a job runs once its dependency completed; if the
    dependency ended badly it is cancelled (``--kill-on-invalid-dep=yes``, or the
    cluster's ``kill_invalid_depend`` unless the job said ``=no``) or left pending
    with ``DependencyNeverSatisfied``. Jobs run their step in-process."""

    def __init__(self, kill_invalid_depend: bool = False, refuse_after: int | None = None) -> None:
        super().__init__()
        self.jobs: dict[int, FakeJob] = {}
        self.next_id = 100
        self.kill_invalid_depend = kill_invalid_depend
        self.refuse_after = refuse_after
        self.cancelled: list[int] = []

    def sbatch(self, options: Sequence[str], script: Path) -> int:
        if self.refuse_after is not None and len(self.jobs) >= self.refuse_after:
            raise ChainError("`sbatch` failed: Invalid partition name specified")
        self.next_id += 1
        self.jobs[self.next_id] = FakeJob(self.next_id, script, list(options))
        return self.next_id

    def scancel(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            job = self.jobs[job_id]
            if job.state not in ("COMPLETED", "FAILED", "CANCELLED"):
                job.state, job.reason = "CANCELLED", ""
                self.cancelled.append(job_id)

    def job_states(self, job_ids: Iterable[int]) -> dict[int, JobState]:
        return {
            i: JobState(i, self.jobs[i].state, self.jobs[i].reason, self.jobs[i].exit_code)
            for i in job_ids
            if i in self.jobs
        }

    def tick(self) -> None:
        """Start-and-finish every job whose dependency allows it."""
        for job in self.jobs.values():
            if job.state != "PENDING":
                continue
            before = self.jobs[job.after] if job.after is not None else None
            if before is None or before.state == "COMPLETED":
                self._execute(job)
            elif before.state in ("FAILED", "CANCELLED"):
                if job.kill_on_invalid(self.kill_invalid_depend):
                    job.state = "CANCELLED"
                else:
                    job.reason = "DependencyNeverSatisfied"
            else:
                job.reason = "Dependency"

    def _execute(self, job: FakeJob) -> None:
        text = job.script.read_text()
        directory = Path(text.split("--dir ")[1].split()[0])
        step = int(text.split("--step ")[1].split()[0])
        try:
            run_step(directory, step)
            job.state, job.exit_code = "COMPLETED", 0
        except Exception:
            job.state, job.exit_code = "FAILED", 1


def test_submit_links_steps_with_afterok(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    chain = Chain(write_program(tmp_path), 3, tmp_path / "run", slurm=slurm,
                  sbatch_args=["--partition=qpu"], name="vqe")  # fmt: skip
    ids = chain.submit()
    assert ids == [101, 102, 103]
    jobs = [slurm.jobs[i] for i in ids]
    assert [job.after for job in jobs] == [None, 101, 102]
    assert all("--kill-on-invalid-dep=yes" in job.options for job in jobs)
    assert all("--partition=qpu" in job.options for job in jobs)
    assert "--job-name=vqe.2of3" in jobs[1].options
    assert Chain.open(chain.directory, slurm=slurm).job_ids == ids
    assert chain.status().state == "pending"
    for _ in range(3):
        slurm.tick()
    status = chain.wait(timeout=5, poll=0.01)
    assert status.state == "completed"
    assert chain.result() == {"total": 6, "seen": [1, 2, 3]}


@pytest.mark.parametrize(
    ("kill_invalid_depend", "sbatch_args", "slurm_kills"),
    [
        (False, [], True),  # the steps' own --kill-on-invalid-dep=yes
        (True, ["--kill-on-invalid-dep=no"], False),  # the user's choice, respected
        (False, ["--kill-on-invalid-dep=no"], False),
    ],
)
def test_a_failing_step_leaves_nothing_pending(
    tmp_path: Path, kill_invalid_depend: bool, sbatch_args: list[str], slurm_kills: bool
) -> None:
    slurm = FakeSlurm(kill_invalid_depend=kill_invalid_depend)
    program = write_program(tmp_path, COUNTER.replace("FAIL_AT = 0", "FAIL_AT = 2"))
    chain = Chain(program, 4, tmp_path / "run", slurm=slurm, sbatch_args=sbatch_args)
    chain.submit()
    for _ in range(4):
        slurm.tick()
    seen: list[str] = []
    status = chain.wait(timeout=5, poll=0.01, on_change=lambda s: seen.append(s.state))
    assert status.state == "failed"
    assert status.failed_step is not None and status.failed_step.step == 2
    assert [s.state for s in status.steps] == ["COMPLETED", "FAILED", "CANCELLED", "CANCELLED"]
    assert not any(job.state == "PENDING" for job in slurm.jobs.values())
    # without Slurm's help the chain cancels the stuck steps itself
    assert slurm.cancelled == ([] if slurm_kills else [103, 104])
    assert all(
        ("--kill-on-invalid-dep=yes" in job.options) == (not sbatch_args)
        for job in slurm.jobs.values()
    )
    assert "failed at step 2 (FAILED, exit code 1)" in status.describe()
    assert status.steps[0].checkpoint and not status.steps[1].checkpoint


def test_a_failed_submission_cancels_the_half_chain(tmp_path: Path) -> None:
    slurm = FakeSlurm(refuse_after=2)
    chain = Chain(write_program(tmp_path), 3, tmp_path / "run", slurm=slurm)
    with pytest.raises(ChainError, match="Invalid partition"):
        chain.submit()
    assert slurm.cancelled == [101, 102]
    assert ChainManifest.read(chain.directory).job_ids == [None, None, None]
    assert chain.status().state == "unsubmitted"


def test_resume_from_the_last_good_checkpoint(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    program = write_program(tmp_path, COUNTER.replace("FAIL_AT = 0", "FAIL_AT = 2"))
    chain = Chain(program, 3, tmp_path / "run", slurm=slurm)
    with pytest.raises(ChainError, match="cannot resume at step 3"):
        chain.submit(start=3)
    chain.submit()
    for _ in range(3):
        slurm.tick()
    assert chain.wait(timeout=5, poll=0.01).state == "failed"
    with pytest.raises(ChainError, match="already holds chain"):
        # a live chain in the directory blocks a fresh submission: make one job live again
        slurm.jobs[103].state = "PENDING"
        chain.submit()
    slurm.jobs[103].state = "CANCELLED"
    program.write_text(COUNTER)  # the fix
    assert chain.submit(start=2) == [104, 105]
    for _ in range(2):
        slurm.tick()
    status = chain.wait(timeout=5, poll=0.01)
    assert status.state == "completed"
    assert [s.job_id for s in status.steps] == [101, 104, 105]
    assert chain.result() == {"total": 6, "seen": [1, 2, 3]}


def test_chain_status_words() -> None:
    from qhpc.slurm.chain import ChainStatus, StepStatus

    def status(*states: str) -> str:
        return ChainStatus("c", [StepStatus(i, i, s) for i, s in enumerate(states, 1)]).state

    assert status("COMPLETED", "RUNNING", "PENDING") == "running"
    assert status("PENDING", "PENDING") == "pending"
    assert status("COMPLETED", "TIMEOUT", "PENDING") == "failing"
    assert status("COMPLETED", "TIMEOUT", "CANCELLED") == "failed"
    assert status("COMPLETED", "COMPLETED") == "completed"


# --------------------------------------------------------------------------- parsing, templates


def test_parse_scontrol_job_lines() -> None:
    line = (
        "JobId=42 JobName=vqe.2of3 UserId=root(0) JobState=PENDING "
        "Reason=DependencyNeverSatisfied Dependency=afterok:41(failed) ExitCode=0:0 "
        "Command=/tmp/a b/step-002.sh"
    )
    assert parse_scontrol_job(line) == JobState(42, "PENDING", "DependencyNeverSatisfied", 0)
    done = parse_scontrol_job("JobId=7 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0")
    assert done == JobState(7, "FAILED", "NonZeroExitCode", 3)
    assert parse_scontrol_job("No jobs in the system") is None
    assert parse_scontrol_job("JobId=9 Reason=None JobState=RUNNING").reason == ""  # type: ignore[union-attr]


def test_missing_slurm_commands_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmCommandError, match="sbatch not found"):
        SlurmCommands().sbatch([], tmp_path / "x.sh")


def test_generated_scripts_are_valid_bash(tmp_path: Path) -> None:
    step = chain_step_script(name="a b", directory=tmp_path / "it's here", step=2, steps=3,
                             python="/usr/bin/python3")  # fmt: skip
    het = hetjob_script(command=["python3", "vqe.py", "--x", "a b"], qpu="sim",
                        classical_command=["./solver"], classical_tasks=4)  # fmt: skip
    for text in (step, het):
        assert subprocess.run(["bash", "-n"], input=text, text=True, check=False).returncode == 0
    assert "checkpoint-001.json" in step and "step 2 of 3" in step
    lines = het.splitlines()
    split = lines.index("#SBATCH hetjob")
    assert "#SBATCH --partition=debug" in lines[:split]
    assert "#SBATCH --ntasks=4" in lines[:split]
    assert {"#SBATCH --partition=qpu", "#SBATCH --qpu=sim"} <= set(lines[split:])
    assert "srun --het-group=1 python3 vqe.py --x 'a b'" in het


def test_manifest_is_json_a_person_can_read(tmp_path: Path) -> None:
    chain = Chain(write_program(tmp_path), 2, tmp_path / "run", sbatch_args=["-p", "qpu"])
    chain.prepare()
    data = json.loads((chain.directory / "chain.json").read_text())
    assert data["steps"] == 2 and data["sbatch_args"] == ["-p", "qpu"]
    assert data["job_ids"] == [None, None]


def test_settled_status_cancels_the_steps_that_can_never_run(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    program = write_program(tmp_path, COUNTER.replace("FAIL_AT = 0", "FAIL_AT = 2"))
    chain = Chain(program, 4, tmp_path / "run", slurm=slurm,
                  sbatch_args=["--kill-on-invalid-dep=no"])  # fmt: skip
    chain.submit()
    assert chain.settled_status()[1] == []  # healthy so far: nothing to cancel
    for _ in range(4):
        slurm.tick()
    assert slurm.jobs[103].reason == "DependencyNeverSatisfied"
    status, cancelled = chain.settled_status()
    assert cancelled == [103, 104] == slurm.cancelled
    assert [s.state for s in status.steps] == ["COMPLETED", "FAILED", "CANCELLED", "CANCELLED"]
    assert chain.settled_status() == (status, [])  # settled once: nothing left


def test_locate_takes_a_directory_or_a_step_job_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slurm = FakeSlurm()
    chain = Chain(write_program(tmp_path), 2, tmp_path / "7", slurm=slurm)
    ids = chain.submit()

    def directory_of(job_id: int) -> Path:
        if job_id not in slurm.jobs:
            raise ChainError(f"job {job_id} is not a step of a qhpc chain")
        return chain.directory

    monkeypatch.setattr(slurm, "chain_directory_of_job", directory_of)
    assert Chain.locate(chain.directory, slurm).job_ids == ids
    assert Chain.locate(str(ids[1]), slurm).directory == chain.directory
    with pytest.raises(ChainError, match="job 5 is not a step"):
        Chain.locate("5", slurm)
    monkeypatch.chdir(tmp_path)  # a directory named like a job id is that directory
    assert Chain.locate("7", slurm).directory == chain.directory
