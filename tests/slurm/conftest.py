"""Shared by the tests of the one-host Slurm cluster (``scripts/slurm.sh start``).

They run only with QHPC_TEST_SLURM=1 (``make unit`` sets it after starting the cluster);
otherwise they are skipped, except under CI=true, where a missing cluster is a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SLURM_SH = Path(__file__).resolve().parents[2] / "scripts" / "slurm.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """The path of scripts/slurm.sh, once the cluster is known to run."""
    in_ci = os.environ.get("CI") == "true"
    if os.environ.get("QHPC_TEST_SLURM") != "1":
        message = (
            "QHPC_TEST_SLURM is not 1: run `make unit`, or "
            "`bash scripts/slurm.sh start && QHPC_TEST_SLURM=1 pytest tests/slurm`"
        )
        if in_ci:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    if os.geteuid() != 0:
        message = "the Slurm tests apply configuration with scripts/slurm.sh, which needs root"
        if in_ci:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    status = subprocess.run(
        ["bash", str(SLURM_SH), "status"], capture_output=True, text=True, timeout=30
    )
    if status.returncode != 0:
        pytest.fail(f"QHPC_TEST_SLURM=1 but the cluster is {status.stdout.strip() or 'down'}")
    return SLURM_SH
