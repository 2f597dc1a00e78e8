"""The Slurm hooks against a real broker on loopback, with Slurm's environment faked.

Each hook is called as Slurm would call it — its environment as a mapping,
``scontrol show job`` replaced by a stub — so the whole hand-over (controller →
node → task) and the close-and-book epilog run without a cluster.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import free_port, start_serve, stop_process, wait_healthy
from qhpc.slurm import (
    HookSettings,
    hooks,
    job_from_env,
    join_accounting,
    parse_show_job,
    parse_time_limit,
    parse_usage_comment,
    qpus_in_licences,
    slurm_accounting,
    usage_comment,
)
from qhpc.slurm.errors import HookSettingsError
from qhpc.slurm.handover import handover_path, read_handover
from qhpc.slurm.settings import load_settings

RESOURCES = '[resources.sim]\ntype = "aer"\n'


class Broker:
    def __init__(self, url: str, fastpath: str, admin: str) -> None:
        self.url, self.fastpath, self.admin = url, fastpath, admin

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        return httpx.get(self.url + "/v1" + path, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    home = tmp_path_factory.mktemp("broker")
    config = home / "resources.toml"
    config.write_text(RESOURCES)
    port, fastpath = free_port(), f"tcp://127.0.0.1:{free_port()}"
    process = start_serve(
        home, port, "--config", str(config), "--fastpath", fastpath,
        db=home / "b.db", stdout=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield Broker(url, fastpath, (home / "admin.token").read_text().strip())
    finally:
        stop_process(process, timeout=30)


def _settings(tmp_path: Path, broker: Broker, **overrides: object) -> HookSettings:
    fields: dict[str, object] = {
        "broker_url": broker.url, "fastpath": broker.fastpath, "token": broker.admin,
        "spool_dir": tmp_path / "spool", "run_dir": tmp_path / "run", "handover_wait_s": 0.3,
    }  # fmt: skip
    fields.update(overrides)
    (tmp_path / "spool").mkdir(exist_ok=True, mode=0o700)
    return HookSettings(**fields)  # type: ignore[arg-type]


def _show(
    limit: str = "00:10:00", account: str = "chem", licences: str = "(null)"
) -> hooks.ShowJob:
    def show(job_id: str) -> Mapping[str, str]:
        return {"JobId": job_id, "TimeLimit": limit, "Account": account, "Licenses": licences}

    return show


def _env(job_id: str, **extra: str) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": job_id, "SLURM_JOB_USER": "alice",
        "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()),
    }  # fmt: skip
    env.update(extra)
    return env


def _task_prolog(env: Mapping[str, str], run_dir: Path) -> tuple[int, dict[str, str], str]:
    out = io.StringIO()
    code = hooks.task_prolog(env, run_dir, out)
    exports = {}
    for line in out.getvalue().splitlines():
        if line.startswith("export "):
            name, value = line.removeprefix("export ").split("=", 1)
            exports[name] = value
    return code, exports, out.getvalue()


def test_session_handed_over_used_closed_and_booked(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, broker)
    env = _env("101", SLURM_JOB_LICENSES="qpu_sim:1", SPANK_SLURM_JOB_QPU="sim")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    spool = handover_path(settings.spool_dir, "101")
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600
    controller = read_handover(spool)
    assert controller is not None and controller.ok, controller

    session = broker.get(f"/sessions/{controller.session_id}").json()
    assert session["slurm_job_id"] == "101"
    assert (session["user"], session["account"], session["resource"]) == ("alice", "chem", "sim")
    assert 590 < session["deadline"] - session["opened_at"] <= 600

    node_env = _env("101", SPANK_SLURM_JOB_QPU="sim")  # the node's Prolog sees no licences
    assert hooks.prolog(node_env, settings, show=_show()) == 0
    private = handover_path(settings.run_dir, "101")
    assert stat.S_IMODE(private.stat().st_mode) == 0o400
    assert private.stat().st_uid == os.getuid()

    code, exports, text = _task_prolog(_env("101", SLURM_JOB_QPU="sim"), settings.run_dir)
    assert code == 0
    assert set(exports) == {
        "QHPC_URL", "QHPC_FASTPATH", "QHPC_RESOURCE", "QHPC_SESSION", "QHPC_SESSION_ID",
        "QRMI_JOB_QPU_RESOURCES", "QRMI_JOB_QPU_TYPES", "QHPC_PROXY",
    }  # fmt: skip
    assert exports["QHPC_PROXY"] == exports["QHPC_URL"].rstrip("/") + "/v1/proxy/sim"
    assert exports["QHPC_SESSION"] == controller.token
    assert broker.admin not in text

    from qhpc.session import QPU

    for name, value in exports.items():
        monkeypatch.setenv(name, value)
    qpu = QPU.from_env(timeout=60)
    try:
        assert qpu.run(_bell(), shots=100)  # counts come back through the session
    finally:
        qpu.close()

    comments: list[tuple[str, str]] = []
    epilog_env = _env("101", SLURM_JOB_LICENSES="qpu_sim:1")
    assert (
        hooks.epilog_slurmctld(
            epilog_env, settings, write_comment=lambda j, t: comments.append((j, t))
        )
        == 0
    )
    assert broker.get(f"/sessions/{controller.session_id}").json()["closed_at"] is not None
    ((job_id, comment),) = comments
    booked = parse_usage_comment(comment)
    assert job_id == "101" and booked is not None
    assert (booked["resource"], booked["shots"], booked["tasks"]) == ("sim", 100, 1)
    assert booked["qpu_seconds"] > 0
    assert not spool.exists()

    # the token of a finished job no longer works, with a message that says why
    refused = broker.get("/sessions", token=controller.token)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]

    assert hooks.epilog(node_env, settings) == 0
    assert not private.exists()


def _bell() -> object:
    from qiskit import QuantumCircuit

    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


def test_job_without_qpu_passes_through(tmp_path: Path, broker: Broker) -> None:
    settings = _settings(tmp_path, broker)
    env = _env("102", SLURM_JOB_LICENSES="matlab:1")

    def no_scontrol(job_id: str) -> Mapping[str, str]:
        raise AssertionError("a job without a QPU needs no scontrol call")

    before = broker.get("/sessions").json()
    assert hooks.prolog_slurmctld(env, settings, show=no_scontrol) == 0
    assert hooks.prolog(_env("102"), settings, show=lambda j: {"Licenses": "(null)"}) == 0
    assert _task_prolog(_env("102"), settings.run_dir) == (0, {}, "")
    assert hooks.epilog_slurmctld(env, settings, write_comment=_no_comment) == 0
    assert broker.get("/sessions").json() == before
    assert not list(settings.spool_dir.glob("job-*"))


def _no_comment(job_id: str, text: str) -> None:
    raise AssertionError("nothing to book for a job without a QPU")


@pytest.mark.parametrize(
    ("env_extra", "message"),
    [
        ({"SPANK_SLURM_JOB_QPU": "nope", "SLURM_JOB_LICENSES": "qpu_nope:1"}, "unknown resource"),
        (
            {"SPANK_SLURM_JOB_QPU": "sim", "SLURM_JOB_LICENSES": "qpu_emu:1"},
            "--qpu=sim but the job holds licence(s) qpu_emu",
        ),
        ({"SLURM_JOB_LICENSES": "qpu_sim:1,qpu_emu:1"}, "licences of several QPUs"),
        ({"SPANK_SLURM_JOB_QPU": "sim", "SLURM_JOB_LICENSES": ""}, "-L qpu_sim"),
        (
            {"SPANK_SLURM_JOB_QPU": "sim,emu", "SLURM_JOB_LICENSES": "qpu_sim:1"},
            "needs a licence of each QPU: add -L qpu_emu:1",
        ),
        ({"SPANK_SLURM_JOB_QPU": "sim,sim", "SLURM_JOB_LICENSES": "qpu_sim:2"}, "sim named twice"),
        # all or none: sim's session is opened, nope's is refused, sim's is closed again
        (
            {"SPANK_SLURM_JOB_QPU": "sim,nope", "SLURM_JOB_LICENSES": "qpu_sim:1,qpu_nope:1"},
            "unknown resource",
        ),
    ],
)
def test_bad_qpu_requests_fail_the_job_with_a_message(
    tmp_path: Path, broker: Broker, env_extra: dict[str, str], message: str
) -> None:
    settings = _settings(tmp_path, broker)
    env = _env("103", **env_extra)
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    node_env = {k: v for k, v in env.items() if k != "SLURM_JOB_LICENSES"}
    licences = env_extra.get("SLURM_JOB_LICENSES") or "(null)"
    assert hooks.prolog(node_env, settings, show=_show(licences=licences)) == 0
    code, exports, text = _task_prolog(_env("103"), settings.run_dir)
    assert (code, exports) == (1, {})
    assert text.startswith("print qhpc: error: no QPU session")
    assert message in text
    assert hooks.epilog_slurmctld(env, settings, write_comment=_no_comment) == 0


def test_broker_down_fails_the_job_fast_with_a_message(tmp_path: Path, broker: Broker) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    settings = _settings(tmp_path, broker, broker_url=down, broker_timeout_s=2.0)
    env = _env("104", SPANK_SLURM_JOB_QPU="sim", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    assert hooks.prolog(env, settings, show=_show()) == 0
    code, _, text = _task_prolog(_env("104", SLURM_JOB_QPU="sim"), settings.run_dir)
    assert code == 1
    assert f"the qhpc broker at {down} is unreachable" in text
    assert broker.admin not in (settings.spool_dir / hooks.LOG_NAME).read_text()
    # the epilog retries, then gives up without failing (the job is over anyway)
    assert hooks.epilog_slurmctld(env, settings, attempts=2, pause_s=0.01) == 0


def test_prolog_waits_for_a_late_controller_and_gives_up_cleanly(
    tmp_path: Path, broker: Broker
) -> None:
    settings = _settings(tmp_path, broker, handover_wait_s=5.0)
    env = _env("105", SPANK_SLURM_JOB_QPU="sim", SLURM_JOB_LICENSES="qpu_sim:1")
    naps: list[float] = []

    def nap(seconds: float) -> None:  # the controller finishes while the node waits
        naps.append(seconds)
        if len(naps) == 3:
            hooks.prolog_slurmctld(env, settings, show=_show())

    assert hooks.prolog(env, settings, show=_show(), sleep=nap) == 0
    code, exports, _ = _task_prolog(_env("105"), settings.run_dir)
    assert code == 0 and exports["QHPC_RESOURCE"] == "sim"
    assert len(naps) == 3
    assert hooks.epilog_slurmctld(env, settings, write_comment=lambda j, t: None) == 0

    lonely = _settings(tmp_path, broker, handover_wait_s=0.0)
    assert hooks.prolog(_env("106", SPANK_SLURM_JOB_QPU="sim"), lonely, show=_show()) == 0
    code, _, text = _task_prolog(_env("106"), lonely.run_dir)
    assert code == 1 and "the controller's hook left none" in text


def test_epilog_after_the_reaper_closed_the_session(tmp_path: Path, broker: Broker) -> None:
    settings = _settings(tmp_path, broker)
    env = _env("107", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    handover = read_handover(handover_path(settings.spool_dir, "107"))
    assert handover is not None and handover.session_id
    closed = httpx.delete(
        f"{broker.url}/v1/sessions/{handover.session_id}",
        headers={"Authorization": f"Bearer {broker.admin}"}, timeout=10,
    )  # fmt: skip
    assert closed.status_code == 200
    comments: list[str] = []
    assert hooks.epilog_slurmctld(env, settings, write_comment=lambda j, t: comments.append(t)) == 0
    assert comments == ["qhpc:resource=sim,qpu_s=0.000,shots=0,tasks=0"]


def _post(broker: Broker, path: str, body: dict[str, object], token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(broker.url + "/v1" + path, json=body, headers=headers, timeout=10)


def test_epilog_books_only_the_jobs_own_sessions(tmp_path: Path, broker: Broker) -> None:
    """Sessions that merely name the job (another user's, another centre's) are not
    closed and not booked into its AdminComment."""
    settings = _settings(tmp_path, broker)
    env = _env("113", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    handover = read_handover(handover_path(settings.spool_dir, "113"))
    assert handover is not None and handover.session_id

    def token(role: str, subject: str, **extra: str) -> str:
        body = {"role": role, "subject": subject, "account": "chem", **extra}
        made = _post(broker, "/tokens", body, broker.admin)
        assert made.status_code == 201, made.text
        return str(made.json()["token"])

    mallory = token("user", "mallory")
    session = {"resource": "sim", "duration_seconds": 600, "slurm_job_id": "113", "account": "chem"}
    refused = _post(broker, "/sessions", session, mallory)
    assert refused.status_code == 403 and "slurm_job_id" in refused.json()["detail"]
    other_user = _post(broker, "/sessions", session | {"user": "mallory"}, broker.admin)
    other_centre = _post(
        broker, "/sessions", session | {"user": "alice"}, token("centre", "gw", centre="north")
    )
    assert other_user.status_code == other_centre.status_code == 201
    forged = [other_user.json()["session_id"], other_centre.json()["session_id"]]

    comments: list[str] = []
    assert hooks.epilog_slurmctld(env, settings, write_comment=lambda j, t: comments.append(t)) == 0
    assert broker.get(f"/sessions/{handover.session_id}").json()["closed_at"] is not None
    for session_id in forged:
        assert broker.get(f"/sessions/{session_id}").json()["closed_at"] is None
    assert comments == ["qhpc:resource=sim,qpu_s=0.000,shots=0,tasks=0"]
    log = (settings.spool_dir / hooks.LOG_NAME).read_text()
    assert all(f"ignored session {s}" in log for s in forged)
    listed = broker.get("/sessions?slurm_job_id=113").json()
    assert sorted(s["session_id"] for s in listed) == sorted(forged)


@pytest.mark.parametrize("flaw", ["symlink", "world-writable", "group-writable", "foreign"])
def test_prolog_refuses_an_unsafe_run_directory(tmp_path: Path, broker: Broker, flaw: str) -> None:
    """Root writes files for users in the run directory: one another user could plant
    or swap files in (or a symlink to one) is refused, and the job fails with a reason."""
    if flaw == "foreign" and os.geteuid() != 0:
        pytest.skip("handing a directory to another user needs root")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o711)
    run_dir = tmp_path / "run"
    if flaw == "symlink":
        run_dir.symlink_to(elsewhere)
    else:
        run_dir.mkdir()
        run_dir.chmod({"world-writable": 0o1777, "group-writable": 0o771}.get(flaw, 0o711))
        if flaw == "foreign":
            os.chown(run_dir, 65534, 65534)
    settings = _settings(tmp_path, broker, run_dir=run_dir)
    env = _env("114", SPANK_SLURM_JOB_QPU="sim", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    assert hooks.prolog(env, settings, show=_show()) == 0
    assert list(elsewhere.iterdir()) == []
    assert not any(p.name.startswith("job-") for p in run_dir.iterdir())
    assert "refusing the run directory" in (settings.spool_dir / hooks.LOG_NAME).read_text()
    code, exports, text = _task_prolog(_env("114", SLURM_JOB_QPU="sim"), run_dir)
    assert (code, exports) == (1, {})
    assert "the run directory is unsafe" in text
    assert hooks.epilog(env, settings) == 0
    assert hooks.epilog_slurmctld(env, settings, write_comment=lambda j, t: None) == 0


def test_handover_owner_and_mode_are_set_on_the_open_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never by path: a name swapped for a symlink between write and chown would hand
    root's chown/chmod to whatever it points at."""

    def by_path(*args: object, **kwargs: object) -> None:
        raise AssertionError("ownership or mode set by path")

    monkeypatch.setattr(os, "chown", by_path)
    monkeypatch.setattr(os, "chmod", by_path)
    (tmp_path / "run").mkdir(mode=0o711)
    target = handover_path(tmp_path / "run", "115")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    target.symlink_to(victim)  # replaced, never followed
    hooks.write_handover(
        target, hooks.Handover(job_id="115", resource="sim", error="x"),
        uid=os.getuid(), gid=os.getgid(),
    )  # fmt: skip
    assert not target.is_symlink() and victim.read_text() == "keep"
    assert stat.S_IMODE(target.stat().st_mode) == 0o400
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_node_settings_without_the_token(tmp_path: Path, broker: Broker) -> None:
    """Several hosts: a node's hooks.toml holds no token (it stays on the controller);
    the node's Prolog and Epilog work with it, the controller's hooks refuse it."""
    settings = _settings(tmp_path, broker)
    env = _env("116", SPANK_SLURM_JOB_QPU="sim", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    node = tmp_path / "node.toml"
    node.write_text(
        f'spool_dir = "{settings.spool_dir}"\nrun_dir = "{settings.run_dir}"\n'
        "handover_wait_s = 1.0\n"
    )
    assert hooks.main(["prolog", "--settings", str(node)], env=env) == 0
    code, exports, _ = _task_prolog(_env("116"), settings.run_dir)
    assert code == 0 and exports["QHPC_RESOURCE"] == "sim"
    assert hooks.main(["epilog", "--settings", str(node)], env=env) == 0
    assert not handover_path(settings.run_dir, "116").exists()
    with pytest.raises(HookSettingsError, match="'broker_url' must be a non-empty string"):
        load_settings(node)
    assert hooks.epilog_slurmctld(env, settings, write_comment=lambda j, t: None) == 0


def test_task_prolog_keeps_broker_text_on_its_line(tmp_path: Path) -> None:
    """The TaskProlog's stdout is commands to slurmstepd, one per line: an error text
    (from the broker) or a value with a line break must not add an ``export``."""
    from qhpc.slurm.handover import Handover, write_handover

    evil = "refused\nexport LD_PRELOAD=/tmp/x.so\runset PATH\x1b[2J"
    write_handover(handover_path(tmp_path, "117"), Handover("117", "sim", error=evil))
    code, exports, text = _task_prolog(_env("117"), tmp_path)
    assert (code, exports) == (1, {})
    assert text.count("\n") == 1 and text.startswith("print qhpc: error: refused export LD_")
    bad = Handover("118", "sim", session_id="s", token="qhpc_t\nexport X=1", url="http://b",
                   fastpath="tcp://b:5555", deadline=1.0)  # fmt: skip
    write_handover(handover_path(tmp_path, "118"), bad)
    code, exports, text = _task_prolog(_env("118"), tmp_path)
    assert (code, exports) == (1, {})
    assert text.count("\n") == 1 and "QHPC_SESSION hold control characters" in text


def test_task_prolog_of_a_qpu_job_without_handover_fails(tmp_path: Path) -> None:
    code, _, text = _task_prolog(_env("108", SLURM_JOB_QPU="sim"), tmp_path)
    assert code == 1
    assert "nothing was handed over" in text


def test_settings_error_never_fails_the_node(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert hooks.main(["prolog", "--settings", str(missing)], env=_env("109")) == 0


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:01:00", 60), ("1-02:03:04", 93784), ("05:30", 330), ("7", 420), ("UNLIMITED", None)],
)
def test_time_limits(text: str, seconds: float | None) -> None:
    assert parse_time_limit(text) == seconds


@given(st.integers(0, 365), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_time_limit_round_trip(days: int, hours: int, minutes: int, seconds: int) -> None:
    text = f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"
    assert parse_time_limit(text) == ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def test_licences_and_show_job() -> None:
    assert qpus_in_licences("qpu_sim:1,matlab:2,qpu_emu*3,qpu_sim:1") == ["sim", "emu"]
    assert qpus_in_licences("") == qpus_in_licences(None) == []
    line = (
        "JobId=42 JobName=my job UserId=alice(1001) GroupId=alice(1001) Account=chem "
        "TimeLimit=00:05:00 Licenses=qpu_sim:1 Command=/home/alice/run me.sh AdminComment=x"
    )
    record = parse_show_job(line)
    assert record["JobName"] == "my job"
    assert record["Command"] == "/home/alice/run me.sh"
    job = job_from_env({"SLURM_JOB_ID": "42"}, record)
    assert (job.user, job.uid, job.account, job.licensed_qpus) == ("alice", 1001, "chem", ("sim",))
    assert job.time_limit_s == 300
    assert job.qpu() == "sim"


def test_usage_comment_round_trip() -> None:
    text = usage_comment(resources=["sim", "sim"], qpu_seconds=1.23456, shots=4000, tasks=7)
    assert text == "qhpc:resource=sim,qpu_s=1.235,shots=4000,tasks=7"
    assert " " not in text
    assert parse_usage_comment(text) == {
        "resource": "sim", "qpu_seconds": 1.235, "shots": 4000, "tasks": 7
    }  # fmt: skip
    assert parse_usage_comment("set by an admin") is None


def test_accounting_join() -> None:
    sessions = [
        {"session_id": "s1", "slurm_job_id": "12", "resource": "sim", "user": "alice",
         "account": "chem"},
        {"session_id": "s2", "slurm_job_id": "3", "resource": "sim", "user": "bob",
         "account": "phys"},
        {"session_id": "s3", "slurm_job_id": None, "resource": "sim", "user": "carol",
         "account": "x"},
    ]  # fmt: skip
    usage = {"s1": {"qpu_seconds": 2.5, "shots": 100, "tasks": 4}}
    sacct = [
        {"job_id": 12, "user": "alice", "account": "chem", "state": {"current": "COMPLETED"},
         "time": {"elapsed": 9},  # sacct --json of 22.05 nests the AdminComment:
         "comment": {"administrator": "qhpc:resource=sim,qpu_s=2.500,shots=100,tasks=4",
                     "job": None, "system": None}},
        {"job_id": 13, "user": "dave", "state": {"current": "COMPLETED"}, "admin_comment": ""},
    ]  # fmt: skip
    rows = join_accounting(sessions, usage, sacct)
    assert [r["slurm_job_id"] for r in rows] == ["3", "12"]
    three, twelve = rows
    assert (twelve["qpu_seconds"], twelve["sacct_qpu_seconds"], twelve["in_sacct"]) == (
        2.5, 2.5, True,
    )  # fmt: skip
    assert (twelve["state"], twelve["elapsed_s"]) == ("COMPLETED", 9)
    assert (three["qpu_seconds"], three["state"], three["in_sacct"]) == (0.0, None, False)


def test_slurm_accounting_against_the_broker(tmp_path: Path, broker: Broker) -> None:
    settings = _settings(tmp_path, broker)
    env = _env("110", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    assert hooks.epilog_slurmctld(env, settings, write_comment=lambda j, t: None) == 0
    asked: list[list[str]] = []

    def sacct(ids: object) -> list[dict[str, object]]:
        asked.append(list(ids))  # type: ignore[call-overload]
        return [{"job_id": 110, "state": {"current": "COMPLETED"},
                 "admin_comment": "qhpc:resource=sim,qpu_s=0.000,shots=0,tasks=0"}]  # fmt: skip

    rows = slurm_accounting(broker.url, broker.admin, sacct=sacct)
    assert "110" in asked[0]
    (row,) = [r for r in rows if r["slurm_job_id"] == "110"]
    assert (row["user"], row["resource"], row["in_sacct"]) == ("alice", "sim", True)
    assert json.dumps(rows)  # plain data for --json


def test_unexpected_error_in_the_controller_prolog_still_fails_the_job_fast(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, broker)
    path = tmp_path / "hooks.toml"
    path.write_text(settings.to_toml())

    def broken(env: Mapping[str, str], settings: HookSettings) -> int:
        raise KeyError("session_id")

    monkeypatch.setattr(hooks, "prolog_slurmctld", broken)
    env = _env("111", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.main(["prolog-slurmctld", "--settings", str(path)], env=env) == 0
    assert hooks.prolog(env, settings, show=_show()) == 0
    code, _, text = _task_prolog(_env("111"), settings.run_dir)
    assert code == 1 and "KeyError in qhpc's PrologSlurmctld" in text


def test_licence_alone_gets_a_session_on_the_node(tmp_path: Path, broker: Broker) -> None:
    """-L qpu_sim without --qpu: the node's Prolog learns of the QPU from scontrol only."""
    settings = _settings(tmp_path, broker)
    controller_env = _env("112", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(controller_env, settings, show=_show()) == 0
    asked: list[str] = []

    def show(job_id: str) -> Mapping[str, str]:
        asked.append(job_id)
        return _show(licences="qpu_sim:1")(job_id)

    assert hooks.prolog(_env("112"), settings, show=show) == 0  # no licences in its env
    assert asked == ["112"]
    code, exports, _ = _task_prolog(_env("112"), settings.run_dir)  # no SLURM_JOB_QPU either
    assert code == 0 and exports["QHPC_RESOURCE"] == "sim"
    assert hooks.epilog_slurmctld(controller_env, settings, write_comment=lambda j, t: None) == 0


def test_a_hetjob_task_finds_its_components_handover() -> None:
    from qhpc.slurm.hooks import component_job_ids

    leader = {"SLURM_JOB_ID": "361", "SLURM_HET_SIZE": "2", "SLURM_JOB_ID_HET_GROUP_0": "361",
              "SLURM_JOB_ID_HET_GROUP_1": "362", "SLURM_JOB_NODELIST_HET_GROUP_0": "vm",
              "SLURM_JOB_NODELIST_HET_GROUP_1": "qpu0"}  # fmt: skip
    # as measured on Slurm 22.05: a task sees the leader's id and its own node list
    assert component_job_ids({**leader, "SLURM_JOB_NODELIST": "qpu0"}) == ["362", "361"]
    assert component_job_ids({**leader, "SLURM_JOB_NODELIST": "vm"}) == ["361", "362"]
    assert component_job_ids({"SLURM_JOB_ID": "7"}) == ["7"]
    # junk in variables a user can set: only digits count, and at most 64 components
    hostile = {"SLURM_JOB_ID": "7", "SLURM_HET_SIZE": "99999999", "SLURM_JOB_ID_HET_GROUP_0":
               "../../etc", "SLURM_JOB_NODELIST": "x"}  # fmt: skip
    assert component_job_ids(hostile) == ["7"]


def test_each_qpu_of_a_job_gets_its_vendor_proxy_url_and_never_a_credential() -> None:
    one = hooks.Handover("120", "heron", session_id="s1", token="qhpc_a", url="https://b:8080/",
                   fastpath="tcp://b:5555")  # fmt: skip
    assert one.exports()["QHPC_PROXY"] == "https://b:8080/v1/proxy/heron"
    assert not any(name.startswith("QHPC_PROXY_") for name in one.exports())
    two = hooks.Handover("121", "heron", session_id="s1", token="qhpc_a", url="https://b:8080",
                   fastpath="tcp://b:5555", others=[{"resource": "ibm eagle",
                   "session_id": "s2", "token": "qhpc_b"}])  # fmt: skip
    exports = two.exports()
    assert exports["QHPC_PROXY"] == exports["QHPC_PROXY_HERON"] == "https://b:8080/v1/proxy/heron"
    assert exports["QHPC_PROXY_IBM_EAGLE"] == "https://b:8080/v1/proxy/ibm%20eagle"
    proxies = {k: v for k, v in exports.items() if k.startswith("QHPC_PROXY")}
    assert all(v.startswith("https://b:8080/v1/proxy/") for v in proxies.values())


def _centre_session(broker: Broker, job_id: str, centre: str = "north") -> dict[str, object]:
    """A federated centre's session, opened and then tied to its (held) Slurm job."""
    headers = {"Authorization": f"Bearer {broker.admin}"}
    httpx.put(f"{broker.url}/v1/accounts/{centre}-acc", headers=headers, timeout=10,
              json={"shares": 1.0, "centre": centre}).raise_for_status()  # fmt: skip
    token = httpx.post(f"{broker.url}/v1/tokens", headers=headers, timeout=10, json={
        "role": "centre", "subject": f"{centre}-gw", "centre": centre,
        "account": f"{centre}-acc"}).json()["token"]  # fmt: skip
    mine = {"Authorization": f"Bearer {token}"}
    opened = httpx.post(f"{broker.url}/v1/sessions", headers=mine, timeout=10, json={
        "resource": "sim", "user": "carol", "duration_seconds": 600}).json()  # fmt: skip
    httpx.patch(f"{broker.url}/v1/sessions/{opened['session_id']}", headers=mine, timeout=10,
                json={"slurm_job_id": job_id}).raise_for_status()  # fmt: skip
    return dict(opened)


def test_a_federated_centres_session_is_adopted_not_doubled(tmp_path: Path, broker: Broker) -> None:
    centre = _centre_session(broker, "301")
    # the site maps centre north to the Slurm user its gateway submits as ("alice" here)
    settings = _settings(tmp_path, broker, federated_users={"north": "alice"})
    env = _env("301", SLURM_JOB_LICENSES="qpu_sim:1")
    assert hooks.prolog_slurmctld(env, settings, show=_show()) == 0
    handover = read_handover(handover_path(settings.spool_dir, "301"))
    assert handover is not None and handover.adopted and handover.ok
    assert handover.session_id == centre["session_id"] and handover.token is None
    sessions = broker.get("/sessions?slurm_job_id=301").json()
    assert [s["session_id"] for s in sessions] == [centre["session_id"]]  # no second one
    assert hooks.prolog(_env("301"), settings, show=_show(licences="qpu_sim:1")) == 0
    # the job carries the centre's session in its own environment: nothing exported
    code, exports, printed = _task_prolog(_env("301"), settings.run_dir)
    assert (code, exports, printed) == (0, {}, "")


def test_a_session_tied_by_a_centre_the_site_does_not_map_is_not_adopted(
    tmp_path: Path, broker: Broker
) -> None:
    intruder = _centre_session(broker, "302", centre="south")
    settings = _settings(tmp_path, broker, federated_users={"north": "alice"})
    assert hooks.prolog_slurmctld(_env("302", SLURM_JOB_LICENSES="qpu_sim:1"), settings,
                                  show=_show()) == 0  # fmt: skip
    handover = read_handover(handover_path(settings.spool_dir, "302"))
    assert handover is not None and not handover.adopted and handover.token is not None
    assert handover.session_id != intruder["session_id"]  # the job's own, as without federation
