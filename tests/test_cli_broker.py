"""`qhpc serve` as a real process, driven by the other CLI commands over loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qhpc.cli import main

BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port, fast = free_port(), free_port()
    token_file = tmp_path / "admin.token"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "qhpc.cli", "serve", "--db", str(tmp_path / "b.db"),
            "--port", str(port), "--fastpath", f"tcp://127.0.0.1:{fast}",
            "--admin-token-file", str(token_file), "--policy", "fifo",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={
            **{k: v for k, v in os.environ.items() if k != "QHPC_CONFIG"},
            "XDG_CONFIG_HOME": str(tmp_path),
        },
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"broker did not come up:\n{output}")
            time.sleep(0.1)
        assert (token_file.stat().st_mode & 0o777) == 0o600
        yield url, token_file.read_text().strip()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_submit_status_result_accounting_and_tokens(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, admin = served
    circuit = tmp_path / "bell.qasm"
    circuit.write_text(BELL)
    code, out, err = cli(
        ["token", "create", "--role", "user", "--subject", "alice", "--account", "chem",
         "--url", url, "--token", admin],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    alice = out.strip().splitlines()[-1]
    assert alice.startswith("qhpc_")
    auth = ["--url", url, "--token", alice]
    code, out, err = cli(
        ["submit", str(circuit), str(circuit), "-s", "200", "--json", *auth], capsys
    )
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    code, out, err = cli(["result", job_id, "--wait", "60", "--json", *auth], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 2
    assert sum(results[0]["circuits"][0]["counts"].values()) == 200
    code, out, _ = cli(["status", job_id, *auth], capsys)
    assert code == 0 and "completed" in out
    code, out, _ = cli(["queue", "aer", *auth], capsys)
    assert code == 0
    code, out, _ = cli(["accounting", "--json", *auth], capsys)
    assert code == 0
    rows = json.loads(out)
    assert rows[0]["group"] == "chem" and rows[0]["shots"] == 400

    code, _, err = cli(["status", job_id, "--url", url, "--token", "qhpc_wrong"], capsys)
    assert code == 1 and "unknown token" in err
    code, _, err = cli(["submit", str(circuit), "-r", "nope", *auth], capsys)
    assert code == 1 and "unknown resource 'nope'" in err
