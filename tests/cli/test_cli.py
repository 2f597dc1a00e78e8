from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli

BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q -> c;
"""


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QHPC_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "200")


def test_run_prints_counts_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bell.qasm"
    path.write_text(BELL)
    code, out, _ = run_cli(["run", str(path), "--resource", "aer", "--shots", "500"], capsys)
    assert code == 0
    assert "00" in out and "11" in out and "probability" in out
    code, out, _ = run_cli(
        ["run", str(path), "-r", "qx", "-s", "300", "--json", "--seed", "1"], capsys
    )
    assert code == 0
    data = json.loads(out)
    assert data["resource"] == "qx"
    assert sum(data["circuits"][0]["counts"].values()) == 300


def test_resources_list_and_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["resources", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["aer", "emulator", "qx"]
    assert all(r["state"] == "idle" for r in rows)
    code, out, _ = run_cli(["resources"], capsys)
    assert code == 0 and "emulator" in out and "line-5" in out
    code, out, _ = run_cli(["resources", "target", "emulator", "--json"], capsys)
    assert code == 0
    target = json.loads(out)["target"]
    assert target["num_qubits"] == 5
    assert target["basis_gates"] == ["id", "rz", "sx", "x", "cz"]
    code, out, _ = run_cli(["resources", "target", "emulator"], capsys)
    assert code == 0 and "two_qubit_error" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resources", "target", "nope"], "unknown resource 'nope'"),
        (["run", "{bell}", "-r", "nope"], "unknown resource 'nope'"),
        (["run", "{bell}", "-s", "0"], "shots must be positive"),
        (["run", "{bell}", "-r", "emulator", "-s", "1000000"], "exceeds the maximum"),
        (["run", "{bad}"], "line 5, column 6"),
        (["run", "{wide}", "-r", "emulator"], "needs 6 qubits but 'line-5' has 5"),
        (["run", "{missing}"], "cannot read"),
        (["resources", "--config", "{missing}"], "cannot read config file"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_1(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bell.qasm").write_text(BELL)
    (tmp_path / "bad.qasm").write_text(BELL.replace("h q[0];", "h q[0;"))
    wide = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[6];\ncreg c[6];\nmeasure q -> c;\n'
    (tmp_path / "wide.qasm").write_text(wide)
    files = {
        "bell": tmp_path / "bell.qasm",
        "bad": tmp_path / "bad.qasm",
        "wide": tmp_path / "wide.qasm",
        "missing": tmp_path / "missing.toml",
    }
    resolved = [a.format(**files) for a in args]
    code, out, err = run_cli(resolved, capsys)
    assert code == 1
    assert "error:" in err
    assert message in " ".join(err.split())
    assert "Traceback" not in err + out


def test_demo_runs_on_embedded_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["demo", "--shots", "200", "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    steps = report["resources"]
    assert {s["resource"] for s in steps} == {"aer", "emulator"}
    bell = [s for s in steps if s["title"] == "Bell state"]
    assert all(set(s["circuits"][0]["counts"]) >= {"00", "11"} for s in bell)
    estimates = [s for s in steps if s["kind"] == "estimator"]
    aer_zz = next(s for s in estimates if s["resource"] == "aer")["values"][0][0]
    assert aer_zz == pytest.approx(1.0)
    broker = report["broker"]
    assert {j["account"]: j["state"] for j in broker["jobs"]} == {
        "chem": "completed",
        "phys": "completed",
    }
    hybrid = broker["hybrid"]
    assert hybrid["status"] == "completed", hybrid["message"]
    assert hybrid["return_value"]["best_cut"] == 4  # the ring's maximum cut
    assert hybrid["return_value"]["expected_cut"] > 2.5  # QAOA p=1 on a 4-ring reaches 3
    booked = {row["group"]: row for row in broker["accounting"]}
    assert booked["chem"]["tasks"] == 6
    # three batch tasks, one session task, and every QPU call of the hybrid program
    assert booked["phys"]["tasks"] == 4 + hybrid["qpu_calls"]


def test_run_reads_qir_text_and_bitcode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qir_samples import TYPED_TELEPORT, bell_module

    module = bell_module()
    (tmp_path / "bell.ll").write_text(module.ir())
    (tmp_path / "bell.bc").write_bytes(module.bitcode())
    (tmp_path / "teleport.ll").write_text(TYPED_TELEPORT)
    for name in ("bell.ll", "bell.bc"):
        code, out, err = run_cli(
            ["run", str(tmp_path / name), "-r", "aer", "-s", "200", "--json", "--seed", "3"],
            capsys,
        )
        assert code == 0, err
        assert set(json.loads(out)["circuits"][0]["counts"]) <= {"00", "11"}
    code, out, err = run_cli(["run", str(tmp_path / "teleport.ll"), "--json"], capsys)
    assert code == 0, err
    assert {k[:2] for k in json.loads(out)["circuits"][0]["counts"]} == {"01"}
    (tmp_path / "bad.ll").write_text(module.ir().replace("ret void", "ret vid"))
    code, _, err = run_cli(["run", str(tmp_path / "bad.ll")], capsys)
    assert code != 0 and "invalid qir circuit at line" in " ".join(err.split())
