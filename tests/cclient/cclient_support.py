"""What the C client's tests share: libqhpc and its programs built by the project's own
Makefile (``clients/c``), a real broker's handle, and a job's environment.

The builds need libcurl's and Jansson's headers (``scripts/cdeps.sh`` installs them;
``make unit`` runs it): without them the tests are skipped, except under CI=true,
where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "c"
PROBE = Path(__file__).resolve().parent / "probe.c"
CDEPS = ROOT / "scripts" / "cdeps.sh"
#: ``aer`` answers at once; ``slow`` (the emulator in real time) takes ~2 s for 10 000 shots
RESOURCES = """
[resources.aer]
type = "aer"
seed = 11

[resources.slow]
type = "emulator"
noise = false
seed = 11
"""


def _missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


@dataclass(frozen=True)
class Build:
    """One build of libqhpc with the examples and the probe."""

    out: Path
    sanitize: str | None

    def program(self, name: str) -> Path:
        return self.out / name


def build(out: Path, sanitize: str | None = None) -> Build:
    """``make -C clients/c`` into ``out`` (incremental), then the probe against it."""
    check = subprocess.run(
        ["bash", str(CDEPS), "check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        _missing(
            "libcurl/Jansson headers or a C compiler are missing: run scripts/cdeps.sh "
            "(installs Debian's libcurl4-openssl-dev and libjansson-dev; needs root)"
        )
    extra = [f"SANITIZE={sanitize}"] if sanitize else []
    made = subprocess.run(
        ["make", "-C", str(CLIENT), f"OUT={out}", *extra, "all", "examples"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    flags = ["-fsanitize=" + sanitize, "-g"] if sanitize else []
    probe = subprocess.run(
        ["cc", "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", *flags, f"-I{CLIENT}",
         str(PROBE), "-o", str(out / "probe"), f"-L{out}", "-lqhpc", f"-Wl,-rpath,{out}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    return Build(out, sanitize)


@dataclass
class Broker:
    url: str
    admin: str
    opened: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}"}
        return httpx.request(method, self.url + "/v1" + path, headers=headers, timeout=30, **kwargs)

    def open_session(self, resource: str = "aer", seconds: float = 600) -> dict[str, Any]:
        answer = self.call(
            "POST", "/sessions",
            json={"resource": resource, "user": "alice", "account": "chem",
                  "duration_seconds": seconds},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        session: dict[str, Any] = answer.json()
        self.opened.append(session["session_id"])
        return session

    def close_session(self, session_id: str) -> None:
        assert self.call("DELETE", f"/sessions/{session_id}").status_code == 200

    def healthy(self) -> bool:
        return httpx.get(self.url + "/v1/health", timeout=10).status_code == 200


def job_env(session: dict[str, Any], url: str, **extra: str) -> dict[str, str]:
    """What qhpc's TaskProlog gives a job holding ``session`` (and nothing of this shell's)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "QHPC_URL": url,
        "QHPC_SESSION": session["token"],
        "QHPC_SESSION_ID": session["session_id"],
        "QHPC_RESOURCE": session["resource"],
        "QRMI_JOB_QPU_RESOURCES": session["resource"],
    }
    env.update(extra)
    return env
