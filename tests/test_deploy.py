"""deploy/systemd: the broker runs least-privileged, with what the runtime pool needs.

The unit is read as systemd reads it (sections, repeated keys, whitespace-separated
lists) and checked against the code it deploys: its capabilities are exactly
``POOL_CAPABILITIES``, the runtime user is the one ``run_as="auto"`` picks first.
``systemd-analyze verify`` checks it as systemd would, where that tool exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qhpc.runtime.isolation import AUTO_USERS
from qhpc.runtime.privileges import POOL_CAPABILITIES

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNIT = DEPLOY / "qhpc.service"
CAP_NAMES = {0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 3: "CAP_FOWNER", 5: "CAP_KILL",
             6: "CAP_SETGID", 7: "CAP_SETUID"}  # fmt: skip


def read_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections → key → every value given (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return read_unit(UNIT.read_text(encoding="utf-8"))["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def test_runs_as_a_dedicated_user_with_only_the_pools_capabilities(
    service: dict[str, list[str]],
) -> None:
    assert one(service, "User") == one(service, "Group") == "qhpc"
    wanted = {CAP_NAMES[c] for c in POOL_CAPABILITIES}
    assert set(one(service, "AmbientCapabilities").split()) == wanted
    assert set(one(service, "CapabilityBoundingSet").split()) == wanted
    # The uid switch needs no exec of a set-uid binary: no_new_privs costs it nothing.
    assert one(service, "NoNewPrivileges") == "yes"


def test_filesystem_is_read_only_but_a_private_state_dir_and_tmp(
    service: dict[str, list[str]],
) -> None:
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "StateDirectory") == "qhpc"
    assert one(service, "StateDirectoryMode") == "0700"
    assert one(service, "ReadWritePaths") == "/var/lib/qhpc"
    assert one(service, "UMask") == "0077"
    assert one(service, "PrivateTmp") == one(service, "ProtectHome") == "yes"
    command = one(service, "ExecStart").split()
    for flag in ("--db", "--admin-token-file"):  # state lives in the state directory
        assert command[command.index(flag) + 1].startswith("/var/lib/qhpc/")


def test_secrets_are_credentials_never_arguments(service: dict[str, list[str]]) -> None:
    command = one(service, "ExecStart")
    assert not re.search(r"--(token|password|secret)\b", command)
    assert not re.search(r"://[^/\s]*:[^/\s]*@", command)  # no password in a URL
    credentials = dict(c.split(":", 1) for c in service["LoadCredential"])
    assert "--config %d/" + "resources.toml" in command and "resources.toml" in credentials


def test_the_runtime_user_is_the_one_auto_picks_first() -> None:
    users = {
        line.split()[1]
        for line in (DEPLOY / "qhpc.sysusers.conf").read_text().splitlines()
        if line.startswith("u ")
    }
    assert users == {"qhpc", AUTO_USERS[0]}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at one that does.
    text = UNIT.read_text().replace("/opt/qhpc/venv/bin/qhpc", sys.executable)
    (tmp_path / "qhpc.service").write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "qhpc.service")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


FEEDBACK = DEPLOY / "qhpc-slurm-feedback.service"


def test_the_feedback_agent_holds_its_token_as_a_credential() -> None:
    service = read_unit(FEEDBACK.read_text(encoding="utf-8"))["Service"]
    start = one(service, "ExecStart")
    assert "slurm feedback" in start and "--token-file %d/feedback.token" in start
    assert not re.search(r"qhpc_[A-Za-z0-9]", start)  # no secret on the command line
    assert one(service, "LoadCredential") == "feedback.token:/etc/qhpc/feedback.token"
    assert one(service, "Restart") == "on-failure"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_accepts_the_feedback_unit(tmp_path: Path) -> None:
    text = FEEDBACK.read_text().replace("/opt/qhpc/venv/bin/qhpc", sys.executable)
    (tmp_path / "qhpc-slurm-feedback.service").write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "qhpc-slurm-feedback.service")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
