"""`qhpc serve` as a real process, driven by the other CLI commands over loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port, run_cli, start_serve, wait_healthy

BELL = (
    'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\n'
    "h q[0];\ncx q[0],q[1];\nmeasure q -> c;\n"
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    token_file = tmp_path / "admin.token"
    process = start_serve(tmp_path, port, db=tmp_path / "b.db", stdout=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
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


def test_submit_status_result_accounting_and_tokens(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, admin = served
    circuit = tmp_path / "bell.qasm"
    circuit.write_text(BELL)

    def token_file(name: str, secret: str) -> str:  # never a token as an argument
        path = tmp_path / f"{name}.token"
        path.write_text(secret + "\n")
        return str(path)

    code, out, err = run_cli(
        ["token", "create", "--role", "user", "--subject", "alice", "--account", "chem",
         "--url", url, "--token-file", token_file("admin", admin)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    alice = out.strip().splitlines()[-1]
    assert alice.startswith("qhpc_")
    # --out: the secret goes to a 0600 file (not stdout), whatever the umask.
    previous = os.umask(0o000)
    try:
        code, out, err = run_cli(
            ["token", "create", "--role", "user", "--subject", "bob", "--url", url,
             "--token-file", token_file("admin", admin), "--out", str(tmp_path / "bob.token")],
            capsys,
        )  # fmt: skip
    finally:
        os.umask(previous)
    assert code == 0, err
    bob = (tmp_path / "bob.token").read_text().strip()
    assert bob.startswith("qhpc_") and bob not in out
    assert (tmp_path / "bob.token").stat().st_mode & 0o777 == 0o600
    auth = ["--url", url, "--token-file", token_file("alice", alice)]
    code, out, err = run_cli(
        ["submit", str(circuit), str(circuit), "-s", "200", "--json", *auth], capsys
    )
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    code, out, err = run_cli(["result", job_id, "--wait", "60", "--json", *auth], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 2
    assert sum(results[0]["circuits"][0]["counts"].values()) == 200
    code, out, _ = run_cli(["status", job_id, *auth], capsys)
    assert code == 0 and "completed" in out
    code, out, _ = run_cli(["queue", "aer", *auth], capsys)
    assert code == 0
    code, out, _ = run_cli(["accounting", "--json", *auth], capsys)
    assert code == 0
    rows = json.loads(out)
    assert rows[0]["group"] == "chem" and rows[0]["shots"] == 400

    wrong = ["--url", url, "--token-file", token_file("wrong", "qhpc_wrong")]
    code, _, err = run_cli(["status", job_id, *wrong], capsys)
    assert code == 1 and "unknown token" in err
    # a token as an argument would be in /proc/PID/cmdline for every user to read
    code, _, err = run_cli(["status", job_id, "--url", url, "--token", alice], capsys)
    assert code == 2 and "No such option: --token" in " ".join(err.split())
    missing = str(tmp_path / "missing.token")
    code, _, err = run_cli(["status", job_id, "--url", url, "--token-file", missing], capsys)
    assert code == 2 and f"cannot read {missing}" in "".join(err.split("\n"))
    code, _, err = run_cli(["submit", str(circuit), "-r", "nope", *auth], capsys)
    assert code == 1 and "unknown resource 'nope'" in err


def test_serve_decode_limits_are_checked_by_name_and_value() -> None:
    import typer

    from qhpc.cli.serve import _decode_limits
    from qhpc.resources import DEFAULT_LIMITS

    assert _decode_limits(None) == DEFAULT_LIMITS
    chosen = _decode_limits(["max_operations=2000000", "max_seconds=2.5"])
    assert (chosen.max_operations, chosen.max_seconds) == (2_000_000, 2.5)
    for bad, why in [
        (["max_opertions=5"], "unknown decode limit 'max_opertions'"),
        (["max_operations=lots"], "needs a number"),
        (["max_operations=1.5"], "needs a number"),
        (["max_seconds=0"], "positive finite"),
        (["max_seconds=inf"], "positive finite"),
        (["max_seconds=nan"], "positive finite"),
    ]:
        with pytest.raises(typer.BadParameter, match=why):
            _decode_limits(bad)


def test_an_operator_drains_and_resumes_a_resource(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, admin = served
    (tmp_path / "ops.token").write_text(admin + "\n")
    auth = ["--url", url, "--token-file", str(tmp_path / "ops.token")]
    code, out, err = run_cli(
        ["resources", "drain", "aer", "--reason", "cryostat warm-up", "--for", "600", *auth],
        capsys,
    )
    assert code == 0, err
    assert "aer: drained until" in out and "cryostat warm-up" in out
    circuit = tmp_path / "bell.qasm"
    circuit.write_text(BELL)
    code, out, err = run_cli(
        ["submit", str(circuit), "-s", "10", "--account", "ops", "--json", *auth], capsys
    )
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    code, out, _ = run_cli(["queue", "aer", "--json", *auth], capsys)
    assert json.loads(out)["entries"][0]["eta_seconds"] > 590
    # a second drain replaces the first: until resumed, so the ETA is not known
    code, out, err = run_cli(
        ["resources", "drain", "aer", "--reason", "until further notice", "--json", *auth], capsys
    )
    assert code == 0 and json.loads(out)["until"] is None, err
    code, out, _ = run_cli(["queue", "aer", *auth], capsys)
    assert "unknown" in out
    code, out, err = run_cli(["resources", "resume", "aer", *auth], capsys)
    assert code == 0 and "aer: resumed" in out, err
    code, out, err = run_cli(["result", job_id, "--wait", "60", "--json", *auth], capsys)
    assert code == 0, err
    # bad input: one clear line, exit 1 (refused) or 2 (usage); nothing changed
    refused = [
        (["resources", "resume", "aer"], "aer is not drained"),
        (["resources", "drain", "nope", "--reason", "x"], "unknown resource 'nope'"),
        (["resources", "drain", "aer", "--reason", "x", "--until", "1000"], "in the past"),
    ]
    for args, message in refused:
        code, _, err = run_cli([*args, *auth], capsys)
        assert code == 1 and message in err, (args, err)
    code, _, err = run_cli(
        ["resources", "drain", "aer", "--reason", "x", "--until", "soon", *auth], capsys
    )
    assert code == 2 and "ISO 8601" in " ".join(err.split())
    code, _, err = run_cli(
        ["resources", "drain", "aer", "--reason", "x", "--for", "5", "--until", "4e9", *auth],
        capsys,
    )
    assert code == 2 and "not both" in " ".join(err.split())


def test_submit_qir_files_to_a_served_broker(
    served: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``qhpc submit`` reads .ll and .bc locally and sends each as QPY carrying its QIR;
    the broker's decoding workers check that QIR against the gates before queueing."""
    from qir_samples import bell_module

    url, admin = served
    admin_file = tmp_path / "admin.qhpc"
    admin_file.write_text(admin + "\n")
    code, out, err = run_cli(
        ["token", "create", "--role", "user", "--subject", "carol", "--account", "qir",
         "--url", url, "--token-file", str(admin_file)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    user_file = tmp_path / "carol.token"
    user_file.write_text(out.strip().splitlines()[-1] + "\n")
    module = bell_module()
    (tmp_path / "bell.ll").write_text(module.ir())
    (tmp_path / "bell.bc").write_bytes(module.bitcode())
    auth = ["--url", url, "--token-file", str(user_file)]
    code, out, err = run_cli(
        ["submit", str(tmp_path / "bell.ll"), str(tmp_path / "bell.bc"), "-s", "100", "--json",
         *auth],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    code, out, err = run_cli(["result", job_id, "--wait", "60", "--json", *auth], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 2
    for result in results:
        counts = result["circuits"][0]["counts"]
        assert set(counts) <= {"00", "11"} and sum(counts.values()) == 100
    (tmp_path / "bad.ll").write_text(module.ir().replace("__quantum__qis__h", "__quantum__qis__q"))
    code, _, err = run_cli(["submit", str(tmp_path / "bad.ll"), *auth], capsys)
    assert code == 1 and "unknown intrinsic" in " ".join(err.split())
