"""``qhpc top`` as a real process: one frame against a live ``qhpc serve``, the live view
in a pseudo-terminal ended by SIGINT, and a broker that does not answer."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import free_port, start_serve, stop_process, wait_healthy
from qhpc.client import connect

BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)
#: an emulator that is offline for its first 10^9 (emulated) seconds: its work waits
RESOURCES = """
[resources.qpu]
type = "emulator"
device = "line-5"
noise = false
offline = [[0, 1e9]]

[resources.aer]
type = "aer"
"""
#: how soon a SIGINT-ed top must have exited (what the command promises)
PROMPT_EXIT_S = 1.0


@dataclass(frozen=True)
class Served:
    url: str
    token: str
    queued_job: str
    session_id: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp_path = tmp_path_factory.mktemp("top")
    config = tmp_path / "resources.toml"
    config.write_text(RESOURCES)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(tmp_path, port, "--config", str(config), db=tmp_path / "b.db")
    try:
        wait_healthy(url, process)
        token = (tmp_path / "admin.token").read_text().strip()
        with connect(url, token) as client:
            jobs = [client.submit("qpu", [BELL], 100, account="ops")["job_id"] for _ in range(2)]
            session = client.open_session("aer", duration_seconds=600, account="ops")
        yield Served(url, token, jobs[-1], session["session_id"])
    finally:
        stop_process(process)


def top_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("QHPC_URL", "QHPC_TOKEN")}
    return {**env, "QHPC_TOKEN": token, "COLUMNS": "220", "LINES": "60", "TERM": "xterm"}


def test_once_shows_the_qpus_the_queue_and_the_sessions(served: Served) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qhpc.cli", "top", "--once", "--url", served.url],
        env=top_env(served.token), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    screen = done.stdout
    qpu_row = next(line for line in screen.splitlines() if line.strip("│┃ ").startswith("qpu "))
    assert "emulator" in qpu_row and "offline" in qpu_row and "offline until" in qpu_row
    assert served.queued_job in screen  # the queue, with its position and ETA
    queue_row = next(line for line in screen.splitlines() if served.queued_job in line)
    assert " 2 " in queue_row or " 1 " in queue_row
    assert served.session_id in screen
    assert "Traceback" not in screen + done.stderr


class Terminal:
    """A child process on a pseudo-terminal; everything it writes, read continuously
    (a full pty would block the child)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                if self.process.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not chunk:
                return
            with self._lock:
                self.output += chunk

    def text(self) -> str:
        with self._lock:
            return self.output.decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.process.poll() is None, f"top ended early:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {needle!r} on the screen:\n{self.text()}"
            time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)
        os.close(self.master)


def interrupt(terminal: Terminal) -> int:
    """SIGINT (what Ctrl-C sends) and the exit status, which must come promptly."""
    terminal.process.send_signal(signal.SIGINT)
    return terminal.process.wait(timeout=PROMPT_EXIT_S)


def test_live_view_in_a_terminal_ends_cleanly_on_ctrl_c(served: Served) -> None:
    terminal = Terminal(
        [sys.executable, "-m", "qhpc.cli", "top", "--url", served.url, "--interval", "0.2"],
        top_env(served.token),
    )
    try:
        terminal.wait_for(served.queued_job)
        terminal.wait_for("every 0.2s")
        assert interrupt(terminal) == 0
    finally:
        terminal.close()
    screen = terminal.text()
    assert "\x1b[?1049h" in screen  # drew on the alternate screen …
    assert screen.rindex("\x1b[?1049l") > screen.rindex("\x1b[?1049h")  # … and left it
    assert "\x1b[?25h" in screen[screen.rindex("\x1b[?25l") :]  # the cursor is back
    assert "Traceback" not in screen and "Aborted" not in screen


def test_an_unreachable_broker_is_said_so_and_retried(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = top_env("qhpc_not-a-real-token")
    once = subprocess.run(
        [sys.executable, "-m", "qhpc.cli", "top", "--once", "--url", nowhere],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert once.returncode == 1
    assert f"broker at {nowhere}: unreachable" in once.stdout
    assert "Traceback" not in once.stdout + once.stderr

    terminal = Terminal(
        [sys.executable, "-m", "qhpc.cli", "top", "--url", nowhere, "--interval", "0.2"], env
    )
    try:
        terminal.wait_for("unreachable, retrying")
        assert interrupt(terminal) == 0
    finally:
        terminal.close()
    assert "Traceback" not in terminal.text()


def test_bad_input(served: Served, tmp_path: Path) -> None:
    def run(*args: str, token: str = served.token) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qhpc.cli", "top", "--once", "--url", served.url, *args],
            env=top_env(token), capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    refused = run(token="qhpc_wrong")
    assert refused.returncode == 1 and "401" in refused.stderr
    assert "qhpc_wrong" not in refused.stdout + refused.stderr  # the token is not echoed
    for interval in ("0", "nan", "soon"):
        bad = run("--interval", interval)
        assert bad.returncode == 2 and "--interval" in bad.stderr, (interval, bad.stderr)
    missing = run("--token-file", str(tmp_path / "no-such-file"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert "Traceback" not in refused.stderr + bad.stderr + missing.stderr
