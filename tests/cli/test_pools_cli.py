"""Pools from the command line: a real `qhpc serve` with a pool in its config, driven by
`qhpc submit -r POOL` and `qhpc pools` over loopback; a bad pool stops `serve` at once."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port, run_cli, start_serve, wait_healthy

CONFIG = """
[resources.small]
type = "emulator"
device = "line-5"
noise = false
seed = 1

[resources.big]
type = "emulator"
device = "line-7"
noise = false
seed = 1

[pools.sims]
members = ["small", "big"]
"""


def ghz(qubits: int) -> str:
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{qubits}];", f"creg c[{qubits}];"]
    lines += ["h q[0];", *(f"cx q[0], q[{i}];" for i in range(1, qubits)), "measure q -> c;"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[str]]:
    config = tmp_path / "resources.toml"
    config.write_text(CONFIG)
    port = free_port()
    process = start_serve(
        tmp_path, port, "--config", str(config), db=tmp_path / "b.db", stdout=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield ["--url", url, "--token-file", str(tmp_path / "admin.token")]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_submit_to_a_pool_and_list_the_pools(
    served: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide = tmp_path / "ghz6.qasm"
    wide.write_text(ghz(6))
    submit = ["submit", str(wide), "-r", "sims", "-s", "50", "--account", "chem", "--json"]
    code, out, err = run_cli([*submit, *served], capsys)
    assert code == 0, err
    job = json.loads(out)
    assert (job["resource"], job["pool"]) == ("big", "sims")  # small has 5 qubits
    code, out, err = run_cli(["result", job["job_id"], "--wait", "60", "--json", *served], capsys)
    assert code == 0, err
    assert sum(json.loads(out)[0]["circuits"][0]["counts"].values()) == 50

    code, out, err = run_cli(["pools", "--json", *served], capsys)
    assert code == 0, err
    (pool,) = json.loads(out)
    assert pool["name"] == "sims" and pool["policy"] == "lowest-eta"
    assert [m["name"] for m in pool["members"]] == ["small", "big"]
    code, out, err = run_cli(["pools", *served], capsys)
    assert code == 0, err
    assert "sims" in out and "small" in out and "big" in out and "idle" in out

    too_wide = tmp_path / "ghz9.qasm"
    too_wide.write_text(ghz(9))
    code, _, err = run_cli(
        ["submit", str(too_wide), "-r", "sims", "--account", "chem", *served], capsys
    )
    err = " ".join(err.split())
    assert code == 1 and "no member of pool 'sims' fits" in err
    assert "small: circuit needs 9 qubits" in err
    code, _, err = run_cli(
        ["submit", str(wide), "-r", "simz", "--account", "chem", *served], capsys
    )
    assert code == 1 and "pools: sims" in " ".join(err.split())


def test_a_broker_without_pools_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    process = start_serve(tmp_path, port, db=tmp_path / "b.db", stdout=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        auth = ["--url", url, "--token-file", str(tmp_path / "admin.token")]
        code, out, err = run_cli(["pools", *auth], capsys)
        assert code == 0, err
        assert "no pools configured" in out
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_serve_refuses_a_bad_pool_naming_file_pool_and_key(tmp_path: Path) -> None:
    config = tmp_path / "resources.toml"
    config.write_text(CONFIG.replace('["small", "big"]', '["small", "huge"]'))
    process = start_serve(
        tmp_path, free_port(), "--config", str(config), db=tmp_path / "b.db",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0

    def squeezed(text: str) -> str:  # rich wraps long lines, a long path anywhere
        return "".join(text.split())

    text = squeezed(output.decode())
    assert squeezed(f"pool 'sims', key 'members': {config}: unknown member 'huge'") in text
    assert squeezed("configured resources: big, small") in text
