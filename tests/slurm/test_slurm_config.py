"""`qhpc slurm config`: licences, hook wrappers, plugstack, GRES and the private settings file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli
from qhpc.slurm import (
    SlurmConfigError,
    SlurmConfigRequest,
    load_settings,
    write_config,
)

RESOURCES = """
[resources.sim]
type = "aer"

[resources.emu]
type = "emulator"
time_scale = 1000
"""


def _request(tmp_path: Path, **overrides: object) -> SlurmConfigRequest:
    fields: dict[str, object] = {
        "resources": ["sim", "emu"], "broker_url": "http://10.0.0.5:8080",
        "token": "qhpc_secret", "out_dir": tmp_path / "out", "hooks_dir": tmp_path / "hooks",
        "spool_dir": tmp_path / "spool",
        "run_dir": tmp_path / "run", "slurm_user": "no-such-user-qhpc",
    }  # fmt: skip
    fields.update(overrides)
    return SlurmConfigRequest(**fields)  # type: ignore[arg-type]


def _conf_lines(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_licences_hooks_and_settings(tmp_path: Path) -> None:
    written = write_config(_request(tmp_path, sessions={"emu": 1}, sessions_per_qpu=3))
    out = tmp_path / "out"
    conf = _conf_lines(out / "qhpc.conf")
    assert conf["Licenses"] == "qpu_sim:3,qpu_emu:1"
    assert conf["PrologFlags"] == "Alloc"
    for key, hook in [
        ("PrologSlurmctld", "prolog-slurmctld"), ("EpilogSlurmctld", "epilog-slurmctld"),
        ("Prolog", "prolog"), ("Epilog", "epilog"), ("TaskProlog", "task-prolog"),
    ]:  # fmt: skip
        wrapper = Path(conf[key])
        assert wrapper == (tmp_path / "hooks").resolve() / hook
        assert wrapper.stat().st_mode & 0o777 == 0o755
        assert f"-m qhpc.slurm.hooks {hook}" in wrapper.read_text()
    assert "GresTypes" not in conf
    assert "CliFilterPlugins" not in conf
    task_wrapper = (tmp_path / "hooks" / "task-prolog").read_text()
    assert "--settings" not in task_wrapper  # the job's user never reads the credential
    assert f"--run-dir {tmp_path / 'run'}" in task_wrapper
    assert "qhpc_secret" not in "".join(p.read_text() for p in written.files if p.suffix != ".toml")

    assert sorted(p.name for p in out.iterdir()) == ["qhpc.conf"]  # what `apply` takes
    settings_path = tmp_path / "hooks" / "hooks.toml"
    assert stat.S_IMODE(settings_path.stat().st_mode) == 0o600
    settings = load_settings(settings_path)
    assert settings.token == "qhpc_secret"
    assert settings.fastpath == "tcp://10.0.0.5:5555"
    assert settings.spool_dir == tmp_path / "spool"
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    assert not (out / "plugstack.conf").exists()
    assert any("plugstack" in note for note in written.notes)


def test_plugstack_and_gres(tmp_path: Path) -> None:
    so = Path("/usr/lib/qhpc/qhpc_qpu.so")
    write_config(
        _request(tmp_path, spank_plugin=so, gres_node="node1", sessions_per_qpu=4, cli_filter=True)
    )
    out = tmp_path / "out"
    assert (out / "plugstack.conf").read_text() == f"required {so} allowed=sim,emu\n"
    gres = (out / "gres.conf").read_text().splitlines()
    assert "NodeName=node1 Name=qpu Type=sim Count=4 Flags=CountOnly" in gres
    assert "NodeName=node1 Name=qpu Type=emu Count=4 Flags=CountOnly" in gres
    conf = _conf_lines(out / "qhpc.conf")
    assert "GresTypes" not in conf  # the base config's business
    assert conf["CliFilterPlugins"] == "cli_filter/lua"


def test_wrapper_runs_the_hooks_module(tmp_path: Path) -> None:
    write_config(_request(tmp_path))
    wrapper = tmp_path / "hooks" / "task-prolog"
    done = subprocess.run(
        [str(wrapper)], env={"SLURM_JOB_ID": "7", "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "")  # no QPU asked: nothing exported
    done = subprocess.run(
        [str(wrapper)],
        env={"SLURM_JOB_ID": "7", "SLURM_JOB_QPU": "sim", "PATH": os.environ["PATH"]},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1  # --qpu but nothing handed over: Python says why
    assert done.stdout.startswith("print qhpc: error: no QPU session for job 7 on sim")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"resources": ["sim-1"]}, "cannot be Slurm licences"),
        ({"resources": []}, "names no resources"),
        ({"sessions": {"nope": 2}}, "unknown resource"),
        ({"sessions": {"sim": 0}}, "at least 1"),
    ],
)
def test_bad_requests_name_the_problem(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(SlurmConfigError, match=message):
        write_config(_request(tmp_path, **overrides))
    assert not (tmp_path / "out" / "qhpc.conf").exists()


def test_cli_writes_from_the_resource_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "resources.toml"
    config.write_text(RESOURCES)
    token = tmp_path / "admin.token"
    token.write_text("qhpc_admin\n")
    code, out, err = run_cli(
        ["slurm", "config", "--config", str(config), "--token-file", str(token),
         "--out", str(tmp_path / "out"), "--hooks-dir", str(tmp_path / "hooks"),
         "--spool-dir", str(tmp_path / "spool"),
         "--sessions", "emu=5", "--broker", "http://127.0.0.1:9999",
         "--fastpath", "tcp://127.0.0.1:7777", "--slurm-user", "no-such-user-qhpc"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "qhpc.conf" in out
    assert _conf_lines(tmp_path / "out" / "qhpc.conf")["Licenses"] == "qpu_sim:2,qpu_emu:5"
    settings = load_settings(tmp_path / "hooks" / "hooks.toml")
    assert (settings.broker_url, settings.fastpath, settings.token) == (
        "http://127.0.0.1:9999", "tcp://127.0.0.1:7777", "qhpc_admin",
    )  # fmt: skip


def test_cli_needs_a_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QHPC_TOKEN", raising=False)
    config = tmp_path / "resources.toml"
    config.write_text(RESOURCES)
    code, _, err = run_cli(
        ["slurm", "config", "--config", str(config), "--out", str(tmp_path / "out")], capsys
    )
    assert code != 0
    assert "token" in err


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the check applies to root only")


@needs_root
def test_root_refuses_hooks_that_run_code_others_can_change(tmp_path: Path) -> None:
    """Root's Prolog would exec the wrapper's interpreter: one in a directory others may
    write to (a developer's venv) is refused, naming the path and what is wrong."""
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    python = open_dir / "python"
    python.symlink_to(sys.executable)
    with pytest.raises(SlurmConfigError) as refused:
        write_config(_request(tmp_path, python=str(python)))
    message = str(refused.value)
    assert str(python) in message and "writable by group or others (mode 0777)" in message
    assert "--python" in message
    assert not (tmp_path / "hooks").exists()  # nothing written
    written = write_config(_request(tmp_path, python=str(python), python_given=True))
    assert any(note.startswith("warning:") and str(python) in note for note in written.notes)
    assert str(python) in (tmp_path / "hooks" / "prolog").read_text()


@needs_root
def test_unsafe_path_checks_owner_and_mode_up_to_the_root(tmp_path: Path) -> None:
    from qhpc.slurm.config import unsafe_path

    assert unsafe_path(Path(sys.executable)) is None  # this checkout's root-owned venv
    safe = tmp_path / "a" / "b"
    safe.mkdir(parents=True)
    assert unsafe_path(safe) is None
    os.chown(tmp_path / "a", 65534, 65534)
    problem = unsafe_path(safe) or ""
    assert problem.startswith(f"{tmp_path / 'a'} is owned by") and "uid 65534" in problem
    os.chown(tmp_path / "a", 0, 0)
    (tmp_path / "a").chmod(0o775)
    assert "writable by group or others (mode 0775)" in (unsafe_path(safe) or "")
    (tmp_path / "a").chmod(0o1777)  # sticky: others cannot rename root's entries
    assert unsafe_path(safe) is None


def test_a_symlink_at_the_spool_path_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / "spool").symlink_to(elsewhere)
    written = write_config(_request(tmp_path))
    assert any("spool directory" in n and "symlink" in n for n in written.notes)
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755
