"""Files at rest are their owner's alone, whatever the umask (``qhpc.files``, docs/security.md).

Every test that creates files runs under umask 000, the most permissive a broker
could inherit: whatever comes out 0600/0700 there was made so on purpose. The
refusals of another user's files need root (to hand a file to ``nobody``).
"""

from __future__ import annotations

import logging
import os
import pwd
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qiskit.circuit import QuantumCircuit

from helpers import free_port, start_serve
from qhpc.api import private_state, write_secret
from qhpc.broker import Broker, BrokerConfig
from qhpc.broker.journal import DEAD_LETTER
from qhpc.files import (
    NotPrivateError,
    open_private,
    private_dir,
    private_file,
    secure_dir,
    write_private,
)
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask
from qhpc.slurm import hooks
from qhpc.slurm.settings import HookSettings
from qhpc.store import Store, StoreError

ROOT = os.geteuid() == 0
NEEDS_ROOT = pytest.mark.skipif(not ROOT, reason="handing a file to another user needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask0() -> Iterator[None]:
    previous = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def nobody() -> int:
    if not ROOT:
        pytest.skip("handing a file to another user needs root")
    return pwd.getpwnam("nobody").pw_uid


def test_private_dir_makes_every_missing_level_0700(tmp_path: Path, umask0: None) -> None:
    top = tmp_path / "a"
    private_dir(top / "b" / "c")
    assert [mode(p) for p in (top, top / "b", top / "b" / "c")] == [0o700] * 3
    # Under umask 000 a plain mkdir would have made it 0777: the helper is what differs.
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "plain") == 0o777


def test_an_own_open_directory_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="qhpc.files"):
        private_dir(data)
    assert mode(data) == 0o700
    assert "was mode 0755; tightened to 0700" in caplog.text


@pytest.mark.parametrize("where", ["/", "/tmp", "/var/lib"])
def test_a_shared_place_is_refused_never_tightened(where: str) -> None:
    before = mode(Path(where))
    if not before & 0o077:
        pytest.skip(f"{where} is already private on this host")
    with pytest.raises(NotPrivateError, match="chmod 700 it"):
        secure_dir(where)
    assert mode(Path(where)) == before


def test_a_sticky_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(NotPrivateError, match="sticky"):
        secure_dir(shared)
    assert mode(shared) == 0o1777


def test_another_users_directory_is_refused(tmp_path: Path, nobody: int) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, nobody, -1)
    with pytest.raises(NotPrivateError, match=f"owned by uid {nobody}"):
        secure_dir(theirs)
    assert mode(theirs) == 0o755


def test_private_files_are_0600_and_refuse_symlinks_and_other_owners(
    tmp_path: Path, umask0: None, nobody: int
) -> None:
    assert mode(private_file(tmp_path / "new" / "f")) == 0o600
    assert mode(tmp_path / "new") == 0o700
    loose = tmp_path / "loose"
    loose.write_text("old")
    loose.chmod(0o644)
    write_private(loose, "secret")
    assert mode(loose) == 0o600 and loose.read_text() == "secret"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="symbolic links"):  # ELOOP: never followed
        write_private(tmp_path / "link", "secret")
    assert not (tmp_path / "elsewhere").exists()
    planted = tmp_path / "planted"
    planted.write_text("")
    os.chown(planted, nobody, -1)
    with pytest.raises(NotPrivateError, match="owned by uid"):
        os.close(open_private(planted))


def test_sqlite_store_and_its_wal_and_shm_are_0600(tmp_path: Path, umask0: None) -> None:
    path = tmp_path / "state" / "qhpc.db"
    with Store.open(path):  # opening migrates: a write, so SQLite has made both
        wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
        assert wal.exists() and shm.exists()
        assert {p.name: mode(p) for p in (path, wal, shm)} == {
            "qhpc.db": 0o600, "qhpc.db-wal": 0o600, "qhpc.db-shm": 0o600,
        }  # fmt: skip
    assert mode(path.parent) == 0o700


def test_an_existing_loose_store_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    wal = Path(f"{path}-wal")
    wal.write_bytes(b"")
    wal.chmod(0o644)
    Store.open(path).close()
    assert mode(path) == 0o600 and (not wal.exists() or mode(wal) == 0o600)


def test_another_users_readable_store_is_refused(tmp_path: Path, nobody: int) -> None:
    path = tmp_path / "theirs.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    os.chown(path, nobody, -1)
    with pytest.raises(StoreError, match="owned by uid"):
        Store.open(path)


def test_journal_segments_and_dead_letters_are_0600(tmp_path: Path, umask0: None) -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    with Store.open(tmp_path / "j.db") as store:
        registry = ResourceRegistry([ResourceSpec("null", "null", {})])
        broker = Broker(store, registry, BrokerConfig(policy="fifo", journal_commit_interval=3600))
        broker.start()
        log_dir = tmp_path / "j.db.journal"
        try:
            session, _ = broker.open_session(
                user="u", account="a", resource="null", deadline=time.time() + 600
            )
            broker.run_session_task(session.session_id, SamplerTask((circuit,), shots=3))
            segments = list(log_dir.glob("*.log"))
            assert segments and {mode(p) for p in segments} == {0o600}
            # The job ends behind the journal's back: the store refuses the task for good.
            store.set_job_state(session.session_id, "completed", finished_at=time.time())
            assert broker.journal.flush(30)
        finally:
            broker.stop()
            registry.close()
    assert mode(log_dir) == 0o700 and mode(log_dir / DEAD_LETTER) == 0o600


def test_a_loose_journal_directory_is_tightened_at_start(tmp_path: Path) -> None:
    log_dir = tmp_path / "k.db.journal"
    log_dir.mkdir(mode=0o755)
    (log_dir / DEAD_LETTER).write_bytes(b"")
    (log_dir / DEAD_LETTER).chmod(0o644)
    with Store.open(tmp_path / "k.db") as store:
        registry = ResourceRegistry([ResourceSpec("null", "null", {})])
        broker = Broker(store, registry, BrokerConfig(policy="fifo"))
        broker.start()
        broker.stop()
        registry.close()
    assert mode(log_dir) == 0o700 and mode(log_dir / DEAD_LETTER) == 0o600


def test_token_files_are_0600(tmp_path: Path, umask0: None) -> None:
    fresh = tmp_path / "tokens" / "admin.token"
    write_secret(fresh, "qhpc_secret")
    old = tmp_path / "old.token"
    old.write_text("stale")
    old.chmod(0o666)
    write_secret(old, "qhpc_secret")
    assert (mode(fresh), mode(fresh.parent), mode(old)) == (0o600, 0o700, 0o600)
    assert old.read_text() == "qhpc_secret\n"


def test_the_slurm_hooks_log_is_0600(tmp_path: Path, umask0: None) -> None:
    spool = private_dir(tmp_path / "spool")
    settings = HookSettings(broker_url="http://127.0.0.1:1", fastpath="", token="t",
                            spool_dir=spool, run_dir=tmp_path / "run")  # fmt: skip
    hooks._log(settings, "job 1: a line", stream=open(os.devnull, "w"))  # noqa: SIM115
    assert (spool / hooks.LOG_NAME).read_text().endswith("job 1: a line\n")
    assert mode(spool / hooks.LOG_NAME) == 0o600


def test_a_servers_data_dir_is_made_private_before_the_store_opens(
    tmp_path: Path, umask0: None
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    store = data / "qhpc.db"
    sqlite3.connect(store).close()
    store.chmod(0o644)
    previous = os.umask(0o000)
    try:
        private_state(str(store))
        assert os.umask(0o000) == 0o077  # the server's second line of defence
    finally:
        os.umask(previous)
    Store.open(store).close()
    assert (mode(data), mode(store)) == (0o700, 0o600)
    private_state(f"sqlite:///{tmp_path}/fresh/x.db")
    assert mode(tmp_path / "fresh") == 0o700
    private_state("postgresql://u@127.0.0.1/db")  # no files of ours: nothing to check


def test_serve_refuses_a_data_dir_it_cannot_tighten(tmp_path: Path, nobody: int) -> None:
    data = tmp_path / "theirs"
    data.mkdir(mode=0o755)
    os.chown(data, nobody, -1)
    process = start_serve(tmp_path, free_port(), db=data / "b.db", stdout=subprocess.PIPE)
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2, output.decode()
    assert f"owned by uid {nobody}" in output.decode()
    assert not (data / "b.db").exists() and mode(data) == 0o755
