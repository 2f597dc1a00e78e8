"""Batch scripts qhpc writes for Slurm: chain steps and heterogeneous jobs.

Both are plain ``#!/bin/bash`` scripts a user can read, keep and edit; every
value that reaches the shell is quoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path


def chain_step_script(*, name: str, directory: Path, step: int, steps: int, python: str) -> str:
    """The batch script of one chain step: run ``python -m qhpc.slurm.chain step``.

    Options (dependency, output file, user's ``sbatch`` arguments) are passed on
    the ``sbatch`` command line, not here, so the script stays valid whatever
    the chain was submitted with.
    """
    restores = "nothing (first step)" if step == 1 else f"checkpoint-{step - 1:03d}.json"
    command = [
        python,
        "-m",
        "qhpc.slurm.chain",
        "step",
        "--dir",
        str(directory),
        "--step",
        str(step),
    ]
    return (
        "#!/bin/bash\n"
        f"# qhpc job chain {name!r}: step {step} of {steps}.\n"
        f"# Restores {restores}, runs one block, saves checkpoint-{step:03d}.json.\n"
        "# Submitted by qhpc with --dependency=afterok:<previous step> --kill-on-invalid-dep=yes.\n"
        f"exec {shlex.join(command)}\n"
    )


def hetjob_script(
    *,
    command: Sequence[str],
    classical_command: Sequence[str] | None = None,
    job_name: str = "qhpc-hetjob",
    classical_partition: str = "debug",
    qpu_partition: str = "qpu",
    classical_tasks: int = 1,
    qpu: str | None = None,
    license: str | None = None,
    time_limit: str | None = None,
    extra_classical: Sequence[str] = (),
    extra_qpu: Sequence[str] = (),
) -> str:
    """A heterogeneous job: component 0 on the classical partition, component 1 on ``qpu``.

    ``command`` runs once in component 1 — the component that holds the QPU
    (``--qpu=NAME`` or ``-L LICENSE`` is requested there, so qhpc's hooks open
    the broker session for it). ``classical_command``, if given, runs with
    ``classical_tasks`` tasks in component 0 at the same time (e.g. an MPI
    solver the quantum side exchanges data with); the job ends when both have.
    """
    classical = [
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --partition={classical_partition}",
        f"#SBATCH --ntasks={classical_tasks}",
    ]
    quantum = [f"#SBATCH --partition={qpu_partition}", "#SBATCH --ntasks=1"]
    if qpu:
        quantum.append(f"#SBATCH --qpu={qpu}")
    if license:
        quantum.append(f"#SBATCH --licenses={license}")
    if time_limit:
        classical.append(f"#SBATCH --time={time_limit}")
    classical += [f"#SBATCH {option}" for option in extra_classical]
    quantum += [f"#SBATCH {option}" for option in extra_qpu]
    lines = [
        "#!/bin/bash",
        "# qhpc heterogeneous job: component 0 = classical nodes, component 1 = the QPU side.",
        *classical,
        "#SBATCH hetjob",
        *quantum,
        "",
        'echo "qhpc hetjob $SLURM_JOB_ID: $SLURM_HET_SIZE components, '
        'classical job $SLURM_JOB_ID_HET_GROUP_0, qpu job $SLURM_JOB_ID_HET_GROUP_1"',
    ]
    if classical_command:
        lines += [
            f"srun --het-group=0 {shlex.join(classical_command)} &",
            "classical=$!",
            f"srun --het-group=1 {shlex.join(command)}",
            "quantum_status=$?",
            "wait $classical",
            "classical_status=$?",
            "exit $(( quantum_status != 0 ? quantum_status : classical_status ))",
        ]
    else:
        lines.append(f"srun --het-group=1 {shlex.join(command)}")
    return "\n".join(lines) + "\n"
