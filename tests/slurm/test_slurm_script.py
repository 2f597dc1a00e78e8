"""scripts/slurm.sh refuses a state directory someone else could have prepared.

Root signals the pids recorded in the state directory and deletes files below it, so a
directory another user created (a name in /tmp is anyone's to take) is refused before
any use. Only ``status`` and ``stop`` run here, on directories of the test's own: the
cluster (if any) is not touched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SLURM_SH = Path(__file__).resolve().parents[2] / "scripts" / "slurm.sh"


def slurm_sh(command: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QHPC_SLURM_DIR=str(state_dir))
    return subprocess.run(
        ["bash", str(SLURM_SH), command], capture_output=True, text=True, env=env,
        timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("flaw", ["symlink", "file", "world-writable", "group-writable", "foreign"])
@pytest.mark.parametrize("command", ["status", "stop"])
def test_an_unsafe_state_directory_is_refused(tmp_path: Path, flaw: str, command: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("slurm.sh acts as root; its stop needs root")
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (real / "pids").mkdir()
    (real / "pids" / "munged").write_text(f"{os.getpid()} 1\n")  # must never be signalled
    state = tmp_path / "state"
    if flaw == "symlink":
        state.symlink_to(real)
    elif flaw == "file":
        state.write_text("")
    else:
        state.mkdir()
        state.chmod({"world-writable": 0o1777, "group-writable": 0o775}.get(flaw, 0o755))
        if flaw == "foreign":
            os.chown(state, 65534, 65534)
    done = slurm_sh(command, state)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"refusing the state directory {state}" in done.stderr
    expected = {
        "symlink": "is a symlink", "file": "is not a directory",
        "world-writable": "writable by group or others (mode 1777)",
        "group-writable": "writable by group or others (mode 775)",
        "foreign": "is owned by uid 65534, not root",
    }[flaw]  # fmt: skip
    assert expected in done.stderr
    assert (real / "pids" / "munged").exists()


def test_a_safe_state_directory_is_used(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("slurm.sh acts as root; its stop needs root")
    state = tmp_path / "state"  # missing: created 0755, root's
    done = slurm_sh("stop", state)
    assert done.returncode == 0, done.stderr
    assert "not running" in done.stderr
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o755
    status = slurm_sh("status", state)
    assert (status.returncode, status.stdout.strip()) == (3, "stopped")
