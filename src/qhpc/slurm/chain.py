"""Job chains: a hybrid loop split into Slurm jobs linked by ``afterok``.

A monolithic hybrid job holds its QPU for its whole run, including every
classical phase. A chain splits it into *steps*: each step is its own Slurm
job that restores the previous step's checkpoint, runs one quantum block (a
few optimiser iterations) and saves the next checkpoint. Step *i+1* is
submitted with ``--dependency=afterok:<step i>``, so it starts only if step *i*
succeeded, and each step holds the QPU (``--qpu`` / ``-L``) only while it runs.

A failing step must not leave its dependants pending forever. Every step is
submitted with ``--kill-on-invalid-dep=yes`` (Slurm cancels a job whose
dependency can never be met, whatever the cluster's ``DependencyParameters``),
and :meth:`Chain.settle` — run by ``qhpc slurm chain status`` and
:meth:`Chain.wait` — cancels any later step still waiting once a step has
ended badly.

The program is a Python file. If it defines ``chain_step(state, step, steps)``
(the name is configurable), the runner calls it with the restored state (None
in the first step) and saves the dict it returns. A chain made with
``function=None`` runs the file as a script instead, with ``QHPC_CHAIN_*`` in
its environment; the script calls :func:`qhpc.slurm.checkpoint.load` and
:func:`~qhpc.slurm.checkpoint.save` itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from qhpc.slurm.checkpoint import (
    ChainError,
    StepContext,
    checkpoint_path,
    read_checkpoint,
)
from qhpc.slurm.errors import SlurmCommandError, SlurmError
from qhpc.slurm.templates import chain_step_script

MANIFEST = "chain.json"
DEFAULT_FUNCTION = "chain_step"
#: Slurm job states after which a job never runs again.
SLURM_FINAL_STATES = frozenset(
    {
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
        "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
    }
)  # fmt: skip
NEVER_SATISFIED = "DependencyNeverSatisfied"

StepFunction = Callable[[dict[str, Any] | None, int, int], dict[str, Any]]


# --------------------------------------------------------------------------- Slurm commands


@dataclass(frozen=True)
class JobState:
    """A Slurm job as ``scontrol``/``sacct`` report it (``state`` is Slurm's own word)."""

    job_id: int
    state: str
    reason: str = ""
    exit_code: int | None = None

    @property
    def final(self) -> bool:
        return self.state in SLURM_FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED"

    @property
    def never_runs(self) -> bool:
        """Pending on a dependency that can no longer be met."""
        return self.state == "PENDING" and self.reason == NEVER_SATISFIED


class SlurmCommands:
    """The few Slurm commands a chain needs (pyslurm does not match Slurm 22.05)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    def _run(self, command: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                list(command), capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError as exc:
            raise SlurmCommandError(
                f"{command[0]} not found: is this a Slurm submit host (slurm-client installed)?"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise SlurmCommandError(
                f"`{shlex.join(command)}` gave no answer within {self.timeout:.0f} s: "
                "is slurmctld running?"
            ) from exc
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            raise SlurmCommandError(f"`{shlex.join(command)}` failed: {detail}")
        return done

    def sbatch(self, options: Sequence[str], script: Path) -> int:
        """Submit ``script``; the new job's id."""
        done = self._run(["sbatch", "--parsable", *options, str(script)])
        first = done.stdout.strip().split(";")[0]
        if not first.isdigit():
            raise SlurmCommandError(f"sbatch answered {done.stdout.strip()!r}, not a job id")
        return int(first)

    def scancel(self, job_ids: Iterable[int]) -> None:
        ids = [str(job_id) for job_id in job_ids]
        if ids:
            self._run(["scancel", *ids])

    def chain_directory_of_job(self, job_id: int) -> Path:
        """The directory of the chain a step's job belongs to (its output file lives there)."""
        done = self._run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        output = dict(_FIELD.findall(done.stdout)).get("StdOut", "")
        directory = Path(output).parent if output else None
        if directory is None or not (directory / MANIFEST).is_file():
            raise ChainError(
                f"job {job_id} is not a step of a qhpc chain slurmctld still knows: "
                "give the chain's directory instead"
            )
        return directory

    def job_states(self, job_ids: Iterable[int]) -> dict[int, JobState]:
        """States of ``job_ids``: the controller's view, then accounting for purged jobs."""
        wanted = set(job_ids)
        found: dict[int, JobState] = {}
        if not wanted:
            return found
        done = self._run(["scontrol", "show", "job", "-o"], check=False)
        for line in done.stdout.splitlines():
            state = parse_scontrol_job(line)
            if state is not None and state.job_id in wanted:
                found[state.job_id] = state
        missing = sorted(wanted - found.keys())
        if missing:
            found.update(self._accounted_states(missing))
        return found

    def _accounted_states(self, job_ids: Sequence[int]) -> dict[int, JobState]:
        done = self._run(
            ["sacct", "-n", "-P", "-X", "-o", "JobIDRaw,State,ExitCode",
             "-j", ",".join(str(i) for i in job_ids)],
            check=False,
        )  # fmt: skip
        found: dict[int, JobState] = {}
        if done.returncode != 0:  # no accounting storage: such jobs stay unknown
            return found
        for line in done.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[0].isdigit():
                # "CANCELLED by 0" → CANCELLED; ExitCode "1:0" → 1
                found[int(parts[0])] = JobState(
                    int(parts[0]), parts[1].split()[0] if parts[1] else "UNKNOWN",
                    exit_code=_exit_status(parts[2]),
                )  # fmt: skip
        return found


_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_scontrol_job(line: str) -> JobState | None:
    """A :class:`JobState` from one line of ``scontrol show job -o``; None if it is not one."""
    fields = dict(_FIELD.findall(line))
    job_id = fields.get("JobId", "")
    if not job_id.isdigit() or "JobState" not in fields:
        return None
    reason = fields.get("Reason", "")
    return JobState(
        int(job_id),
        fields["JobState"],
        "" if reason == "None" else reason,
        _exit_status(fields.get("ExitCode", "")),
    )


def _exit_status(text: str) -> int | None:
    head = text.split(":")[0]
    return int(head) if head.isdigit() else None


# --------------------------------------------------------------------------- the manifest


class ChainManifest(BaseModel):
    """``chain.json``: how the chain was built and which job runs which step."""

    format: Literal[1] = 1
    name: str = Field(min_length=1)
    program: str = Field(min_length=1)
    #: the step function's name; None runs the program as a script
    function: str | None = DEFAULT_FUNCTION
    args: list[str] = Field(default_factory=list)
    steps: int = Field(ge=1, le=10_000)
    python: str = Field(min_length=1)
    sbatch_args: list[str] = Field(default_factory=list)
    #: per step (index 0 = step 1): the Slurm job id of its latest submission
    job_ids: list[int | None] = Field(default_factory=list)

    @classmethod
    def read(cls, directory: Path) -> ChainManifest:
        path = Path(directory) / MANIFEST
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ChainError(f"{directory} holds no job chain ({MANIFEST} is missing)") from exc
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ChainError(f"{path} is not a qhpc chain manifest: {_first_problem(exc)}") from exc

    def write(self, directory: Path) -> None:
        path = Path(directory) / MANIFEST
        partial = path.with_name(f".{MANIFEST}.{os.getpid()}.partial")
        partial.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(partial, path)


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "document"
    return f"{where}: {error['msg']}"


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StepStatus:
    step: int
    job_id: int | None
    state: str
    reason: str = ""
    exit_code: int | None = None
    checkpoint: bool = False


@dataclass(frozen=True)
class ChainStatus:
    """Where a chain stands: one entry per step and an overall word.

    ``state`` is ``completed`` (every step completed), ``failed`` (a step ended
    badly and nothing of the chain is left waiting or running), ``failing`` (a
    step ended badly, later steps are still queued — :meth:`Chain.settle` cancels
    them), ``running``, ``pending``, or ``unsubmitted``.
    """

    name: str
    steps: list[StepStatus] = field(default_factory=list)

    @property
    def failed_step(self) -> StepStatus | None:
        for step in self.steps:
            if step.state in SLURM_FINAL_STATES and step.state != "COMPLETED":
                return step
        return None

    @property
    def state(self) -> str:
        if not self.steps or all(step.job_id is None for step in self.steps):
            return "unsubmitted"
        if all(step.state == "COMPLETED" for step in self.steps):
            return "completed"
        if self.failed_step is not None:
            settled = all(s.state in SLURM_FINAL_STATES or s.job_id is None for s in self.steps)
            return "failed" if settled else "failing"
        if any(step.state in ("RUNNING", "COMPLETING") for step in self.steps):
            return "running"
        return "pending"

    @property
    def final(self) -> bool:
        return self.state in ("completed", "failed")

    def describe(self) -> str:
        failed = self.failed_step
        if failed is not None:
            code = "" if failed.exit_code is None else f", exit code {failed.exit_code}"
            return f"chain {self.name}: {self.state} at step {failed.step} ({failed.state}{code})"
        done = sum(step.state == "COMPLETED" for step in self.steps)
        return f"chain {self.name}: {self.state} ({done}/{len(self.steps)} steps completed)"


# --------------------------------------------------------------------------- the chain


class Chain:
    """A hybrid program split into ``steps`` Slurm jobs sharing ``checkpoint_dir``.

    ``Chain(program="vqe.py", steps=3, checkpoint_dir="run1").submit()`` writes
    the manifest and one batch script per step into ``checkpoint_dir`` and
    submits them linked by ``afterok``; ``sbatch_args`` (e.g. ``["-p", "qpu",
    "--qpu=sim"]``) apply to every step. ``Chain.open(directory)`` gets a
    submitted chain back for :meth:`status`, :meth:`wait`, :meth:`cancel` and
    :meth:`result`.
    """

    def __init__(
        self,
        program: str | Path,
        steps: int,
        checkpoint_dir: str | Path,
        *,
        sbatch_args: Sequence[str] = (),
        program_args: Sequence[str] = (),
        function: str | None = DEFAULT_FUNCTION,
        name: str | None = None,
        python: str | None = None,
        slurm: SlurmCommands | None = None,
    ) -> None:
        program_path = Path(program).resolve()
        if not program_path.is_file():
            raise ChainError(f"chain program {program} does not exist or is not a file")
        if steps < 1:
            raise ChainError(f"a chain has at least one step, not {steps}")
        self.directory = Path(checkpoint_dir).resolve()
        self.slurm = slurm or SlurmCommands()
        self.manifest = ChainManifest(
            name=name or program_path.stem,
            program=str(program_path),
            function=function,
            args=list(program_args),
            steps=steps,
            python=python or sys.executable,
            sbatch_args=list(sbatch_args),
            job_ids=[None] * steps,
        )

    @classmethod
    def open(cls, directory: str | Path, slurm: SlurmCommands | None = None) -> Chain:
        """The chain whose manifest is in ``directory``."""
        chain = cls.__new__(cls)
        chain.directory = Path(directory).resolve()
        chain.slurm = slurm or SlurmCommands()
        chain.manifest = ChainManifest.read(chain.directory)
        return chain

    @classmethod
    def locate(cls, where: str | Path, slurm: SlurmCommands | None = None) -> Chain:
        """The chain in the directory ``where``, or the chain one of whose steps has the
        Slurm job id ``where`` (a directory of that name wins)."""
        text = str(where)
        if text.isdigit() and not Path(text).is_dir():
            slurm = slurm or SlurmCommands()
            return cls.open(slurm.chain_directory_of_job(int(text)), slurm)
        return cls.open(where, slurm)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def steps(self) -> int:
        return self.manifest.steps

    @property
    def job_ids(self) -> list[int | None]:
        return list(self.manifest.job_ids)

    def step_script(self, step: int) -> Path:
        return self.directory / f"step-{step:03d}.sh"

    def step_output(self, step: int) -> Path:
        return self.directory / f"step-{step:03d}.out"

    def prepare(self) -> None:
        """Write the manifest and the step scripts (``submit`` does this first)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ChainError(f"cannot create chain directory {self.directory}: {exc}") from exc
        self.manifest.write(self.directory)
        for step in range(1, self.steps + 1):
            script = self.step_script(step)
            script.write_text(
                chain_step_script(
                    name=self.name, directory=self.directory, step=step,
                    steps=self.steps, python=self.manifest.python,
                ),
                encoding="utf-8",
            )  # fmt: skip
            script.chmod(0o755)

    def submit(self, start: int = 1) -> list[int]:
        """Submit steps ``start``..N linked by ``afterok``; their job ids.

        ``start`` > 1 resumes a chain from the checkpoint of step ``start - 1``
        (e.g. after fixing what made a step fail). If a submission fails part
        way, the steps already submitted are cancelled before the error is
        raised, so no half chain is left waiting.
        """
        if not 1 <= start <= self.steps:
            raise ChainError(f"start step {start} is outside the chain's steps 1..{self.steps}")
        if start > 1 and not checkpoint_path(self.directory, start - 1).exists():
            raise ChainError(
                f"cannot resume at step {start}: {checkpoint_path(self.directory, start - 1)} "
                "does not exist"
            )
        if start == 1 and self._live_jobs():
            raise ChainError(
                f"{self.directory} already holds chain {self.name!r} with jobs queued or "
                "running; cancel it or use another directory"
            )
        self.prepare()
        submitted: list[int] = []
        previous: int | None = None
        try:
            for step in range(start, self.steps + 1):
                checkpoint_path(self.directory, step).unlink(missing_ok=True)
                options = [
                    f"--job-name={self.name}.{step}of{self.steps}",
                    f"--output={self.step_output(step)}",
                ]
                if not any(
                    a.startswith("--kill-on-invalid-dep") for a in self.manifest.sbatch_args
                ):
                    # sbatch sets both flags when given yes and no, and yes wins: leave the
                    # choice to a user who made one
                    options.append("--kill-on-invalid-dep=yes")
                if previous is not None:
                    options.append(f"--dependency=afterok:{previous}")
                previous = self.slurm.sbatch([*options, *self.manifest.sbatch_args],
                                             self.step_script(step))  # fmt: skip
                submitted.append(previous)
                self.manifest.job_ids[step - 1] = previous
        except SlurmError:
            self._cancel_quietly(submitted)
            for step in range(start, self.steps + 1):
                self.manifest.job_ids[step - 1] = None
            self.manifest.write(self.directory)
            raise
        self.manifest.write(self.directory)
        return submitted

    def _live_jobs(self) -> list[int]:
        ids = [i for i in self.manifest.job_ids if i is not None]
        if not ids:
            return []
        states = self.slurm.job_states(ids)
        return [i for i in ids if i in states and not states[i].final]

    def _cancel_quietly(self, job_ids: list[int]) -> None:
        try:
            self.slurm.scancel(job_ids)
        except SlurmError:
            pass  # the submission error is the one to report

    def status(self) -> ChainStatus:
        """Each step's job, its Slurm state and whether its checkpoint exists."""
        ids = [i for i in self.manifest.job_ids if i is not None]
        states = self.slurm.job_states(ids) if ids else {}
        steps = []
        for index, job_id in enumerate(self.manifest.job_ids, start=1):
            saved = checkpoint_path(self.directory, index).exists()
            if job_id is None:
                steps.append(StepStatus(index, None, "UNSUBMITTED", checkpoint=saved))
                continue
            known = states.get(job_id)
            if known is None:
                steps.append(StepStatus(index, job_id, "UNKNOWN", checkpoint=saved))
            else:
                steps.append(
                    StepStatus(index, job_id, known.state, known.reason, known.exit_code, saved)
                )
        return ChainStatus(self.name, steps)

    def settle(self, status: ChainStatus | None = None) -> list[int]:
        """After a failed step, cancel every later step still waiting; the ids cancelled.

        Slurm already does this for jobs submitted with ``--kill-on-invalid-dep``;
        this covers chains whose jobs were held back some other way, and steps
        pending with ``DependencyNeverSatisfied``.
        """
        status = status or self.status()
        failed = status.failed_step
        doomed = [
            step.job_id
            for step in status.steps
            if step.job_id is not None
            and step.state not in SLURM_FINAL_STATES
            and step.state != "UNKNOWN"
            and ((step.state == "PENDING" and step.reason == NEVER_SATISFIED)
                 or (failed is not None and step.step > failed.step))
        ]  # fmt: skip
        if doomed:
            self.slurm.scancel(doomed)
        return doomed

    def settled_status(self) -> tuple[ChainStatus, list[int]]:
        """The status once steps that can never run are cancelled, and their job ids.

        Settles only when a step failed or one waits on a dependency Slurm reports
        as never satisfied, so a healthy chain costs one status query.
        """
        status = self.status()
        if status.state != "failing" and not any(
            step.reason == NEVER_SATISFIED for step in status.steps
        ):
            return status, []
        cancelled = self.settle(status)
        return (self.status() if cancelled else status), cancelled

    def cancel(self) -> list[int]:
        """Cancel every step not yet finished; the ids cancelled."""
        live = self._live_jobs()
        self.slurm.scancel(live)
        return live

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 1.0,
        on_change: Callable[[ChainStatus], None] | None = None,
    ) -> ChainStatus:
        """Poll until the chain completed or failed (settling a failure); the last status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[tuple[str, str], ...] | None = None
        while True:
            status = self.status()
            if status.state == "unsubmitted":
                raise ChainError(f"chain {self.name!r} in {self.directory} was never submitted")
            if status.state == "failing" or any(
                step.state == "PENDING" and step.reason == NEVER_SATISFIED for step in status.steps
            ):
                self.settle(status)
                status = self.status()
            current = tuple((s.state, s.reason) for s in status.steps)
            if on_change is not None and current != seen:
                on_change(status)
            seen = current
            if status.final:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise ChainError(f"{status.describe()} after waiting {timeout:.0f} s")
            time.sleep(poll)

    def result(self) -> dict[str, Any]:
        """The state the last step saved: the chain's result."""
        return read_checkpoint(self.directory, self.steps)

    def run_here(self) -> dict[str, Any]:
        """Run every step in this process, in order, without Slurm; the last state.

        For trying a chain program on a laptop and for tests: the same restore /
        run / save cycle as under Slurm, one step after the other.
        """
        self.prepare()
        for step in range(1, self.steps + 1):
            run_step(self.directory, step)
        return self.result()


# --------------------------------------------------------------------------- one step


def _load_program(path: Path) -> Any:
    module_name = f"qhpc_chain_program_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ChainError(f"cannot load chain program {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_step(directory: str | Path, step: int) -> Path:
    """Run step ``step`` of the chain in ``directory``: restore, run, save; the checkpoint.

    Raises :class:`ChainError` (or whatever the program raises) if the step
    cannot produce its checkpoint — the step's job then fails, and Slurm does
    not start the next one.
    """
    manifest = ChainManifest.read(Path(directory))
    context = StepContext(Path(directory).resolve(), step, manifest.steps)
    program = Path(manifest.program)
    if not program.is_file():
        raise ChainError(f"chain program {program} is gone")
    state = context.load()  # before running anything: a missing checkpoint fails fast
    checkpoint_path(context.directory, step).unlink(missing_ok=True)
    saved_env = {name: os.environ.get(name) for name in context.environment()}
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    os.environ.update(context.environment())
    sys.argv = [str(program), *manifest.args]
    sys.path.insert(0, str(program.parent))
    try:
        if manifest.function is not None:
            function = getattr(_load_program(program), manifest.function, None)
            if not callable(function):
                raise ChainError(
                    f"{program} defines no function {manifest.function}(state, step, steps): "
                    "define it, or run the file as a script (`--script`) that calls "
                    "qhpc.slurm.checkpoint.load() and save()"
                )
            new_state = function(state, step, manifest.steps)
            if not isinstance(new_state, dict):
                raise ChainError(
                    f"{program}: {manifest.function}() returned a {type(new_state).__name__}; "
                    "return the state (a dict) for the next step"
                )
            context.save(new_state)
        else:
            runpy.run_path(str(program), run_name="__main__")
            if not context.saved:
                raise ChainError(
                    f"{program} finished step {step} without saving a checkpoint: call "
                    "qhpc.slurm.checkpoint.save(state) before it ends"
                )
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return checkpoint_path(context.directory, step)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qhpc.slurm.chain step --dir DIR --step I``: what a step's job runs."""
    parser = argparse.ArgumentParser(prog="python -m qhpc.slurm.chain")
    commands = parser.add_subparsers(dest="command", required=True)
    step_parser = commands.add_parser("step", help="run one step of a chain")
    step_parser.add_argument("--dir", required=True, type=Path, help="the chain's directory")
    step_parser.add_argument("--step", required=True, type=int, help="which step (1-based)")
    options = parser.parse_args(argv)
    started = time.time()
    job = os.environ.get("SLURM_JOB_ID", "-")
    print(f"qhpc chain: step {options.step} starts (Slurm job {job})", flush=True)
    try:
        path = run_step(options.dir, options.step)
    except SlurmError as exc:
        print(f"qhpc chain: step {options.step} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        f"qhpc chain: step {options.step} saved {path.name} after {time.time() - started:.1f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
