"""The journal's committer process (qhpc.store.committer): the same commits as the
store's own call, made in a child, and every way the child can fail is a transient
store error that a retry with a fresh child gets past."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_store import done, job_with_tasks, make_task

from qhpc.broker.journal import DEAD_LETTER, InProcess, Journal, _read_segment, writer_for
from qhpc.store import CommitterProcess, ConflictError, Store, StoreError
from qhpc.store.committer import CommitFailed


@pytest.fixture
def committer(store: Store) -> Iterator[CommitterProcess]:
    url = store.reopen_url()
    assert url is not None
    process = CommitterProcess(url)
    yield process
    process.close()


def test_a_batch_committed_by_the_child_is_what_the_store_would_have_stored(
    store: Store, committer: CommitterProcess
) -> None:
    one, _ = job_with_tasks("s-a", 0, kind="session", session_id="sa")
    two, _ = job_with_tasks("s-b", 0, kind="session", session_id="sb", centre=None)
    store.create_job(one, [])
    store.create_job(two, [])
    batch = [
        (make_task(one, 0), done(10.0)),
        (make_task(two, 0), done(11.0, state="cancelled", qpu=0.0)),
        (make_task(one, 1), done(12.0, state="failed", qpu=0.5)),
    ]
    booked = committer.record_finished_tasks(batch)
    assert [(u.task_id, u.centre, u.qpu_seconds) for u in booked] == [
        ("s-a.0", "jsc", 1.5),
        ("s-a.1", "jsc", 0.5),
    ]
    assert [t.state for t in store.tasks_of_job("s-a")] == ["completed", "failed"]
    assert store.task_result("s-a.0") == b"result\x00"
    assert committer.is_stored("s-b.0") and not committer.is_stored("s-b.9")
    # The store's typed refusals arrive as the same types, so the journal tells a
    # permanent refusal (dead letter) from a transient one (retry) as before.
    with pytest.raises(ConflictError):
        committer.record_finished_tasks([(make_task(one, 0), done())], relaxed=False)
    store.set_job_state("s-b", "completed", finished_at=20.0)
    with pytest.raises(ConflictError, match="completed"):
        committer.record_finished_tasks([(make_task(two, 1), done())])
    assert len(store.usage()) == 2


def test_a_killed_child_is_a_transient_error_and_the_next_call_starts_a_new_one(
    store: Store, committer: CommitterProcess
) -> None:
    job, _ = job_with_tasks("s", 0, kind="session", session_id="s")
    store.create_job(job, [])
    committer.record_finished_tasks([(make_task(job, 0), done())])
    first = committer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while committer.pid is not None:  # the parent sees it gone once it has exited
        assert time.monotonic() < deadline
        time.sleep(0.01)
    booked = committer.record_finished_tasks([(make_task(job, 1), done())])
    assert [u.task_id for u in booked] == ["s.1"]
    assert committer.pid not in (None, first)


def test_a_hung_child_is_killed_after_the_answer_limit_and_replaced(
    store: Store, store_url: str
) -> None:
    job, _ = job_with_tasks("s", 0, kind="session", session_id="s")
    store.create_job(job, [])
    url = store.reopen_url()
    assert url is not None
    committer = CommitterProcess(url, answer_seconds=1.0)
    try:
        committer.record_finished_tasks([(make_task(job, 0), done())])
        hung = committer.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer in time"):
            committer.record_finished_tasks([(make_task(job, 1), done())])
        assert time.monotonic() - started < 10
        assert committer.pid is None  # killed, not left stopped
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)
        # The batch that timed out may or may not have been stored (it was not: the
        # child was stopped before it read it); the retry stores it once either way.
        booked = committer.record_finished_tasks([(make_task(job, 1), done())])
        assert [u.task_id for u in booked] == ["s.1"]
    finally:
        committer.close()


def test_a_store_the_child_cannot_open_fails_each_call_and_a_new_child_tries_again(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    committer = CommitterProcess(str(blocker / "store.db"), answer_seconds=30)
    try:
        for _ in range(2):
            with pytest.raises(StoreError, match="cannot open the store"):
                committer.is_stored("t")
            assert committer.pid is None  # that child is gone: the next call starts anew
        blocker.unlink()  # the store can be opened now (a database that came back)
        blocker.mkdir()
        assert committer.is_stored("t") is False
    finally:
        committer.close()


def test_the_child_gets_no_secret_on_its_command_line_and_none_of_qhpcs_variables(
    store: Store, committer: CommitterProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QHPC_TOKEN", "secret-token-of-the-broker")
    monkeypatch.setenv("PGAPPNAME", "kept-for-libpq")
    committer.close()  # the next call starts a child under the patched environment
    assert not committer.is_stored("nothing")
    pid = committer.pid
    assert pid is not None
    cmdline = [arg for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
    # The URL (with its password) travels on the pipe: the command line is fixed.
    assert cmdline == [os.fsencode(sys.executable), b"-m", b"qhpc.store.commit_child"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {item.split(b"=", 1)[0] for item in environ if item}
    assert not any(name.startswith(b"QHPC_") for name in names)
    assert b"PGAPPNAME" in names  # libpq's settings (PGPASSFILE, PGSSL*, …) reach it


@pytest.mark.postgres
def test_a_password_in_a_pgpass_file_reaches_the_child(tmp_path: Path) -> None:
    """The documented set-up: the URL has no password, libpq reads it from PGPASSFILE
    (deploy/systemd/qhpc.service) — the child must see that file too."""
    with_password = os.environ.get("QHPC_TEST_POSTGRES_URL")
    if not with_password:
        pytest.skip("QHPC_TEST_POSTGRES_URL is unset")
    from sqlalchemy.engine import make_url

    url = make_url(with_password)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{url.host}:{url.port}:{url.database}:{url.username}:{url.password}\n")
    pgpass.chmod(0o600)
    bare = f"postgresql://{url.username}@{url.host}:{url.port}/{url.database}"
    previous = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(pgpass)
    try:
        with Store.open(bare) as store:
            reopen = store.reopen_url()
            assert reopen is not None
            assert ":" not in reopen.split("://", 1)[1].split("@", 1)[0]  # no password in it
            committer = CommitterProcess(reopen, answer_seconds=30)
            try:
                assert committer.is_stored("no-such-task") is False  # it could open the store
            finally:
                committer.close()
    finally:
        if previous is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = previous


def test_a_record_the_store_refuses_outright_is_not_a_retried_store_error(
    store: Store, committer: CommitterProcess
) -> None:
    job, _ = job_with_tasks("s", 0, kind="session", session_id="s")
    store.create_job(job, [])
    bogus = replace(done(), state="paused")  # not a final state: the store refuses it
    with pytest.raises(CommitFailed, match="paused") as refused:
        committer.record_finished_tasks([(make_task(job, 0), bogus)])
    assert not isinstance(refused.value, StoreError)
    assert committer.record_finished_tasks([(make_task(job, 1), done())])  # still serving


def test_the_journal_dead_letters_what_the_committer_cannot_store(
    store: Store, committer: CommitterProcess, tmp_path: Path
) -> None:
    """As in process: one bad task is kept in the dead letters, the rest are stored,
    and the journal does not retry the batch for ever."""
    job, _ = job_with_tasks("s", 0, kind="session", session_id="s")
    store.create_job(job, [])
    log_dir = tmp_path / "journal"
    journal = Journal(store, lambda _: None, log_dir=log_dir, writer=committer)
    try:
        journal.append(make_task(job, 0), done())
        journal.append(make_task(job, 1), replace(done(), state="paused"))
        journal.append(make_task(job, 2), done())
        assert journal.flush(30)
        assert journal.uncommitted == 0
    finally:
        journal.stop()
    assert [t.index for t in store.tasks_of_job("s")] == [0, 2]
    dead = _read_segment(log_dir / DEAD_LETTER)
    assert [(t.index, o.state) for t, o in dead] == [(1, "paused")]


def test_the_journal_commits_in_a_child_unless_the_store_lives_in_memory(tmp_path: Path) -> None:
    with Store.open(":memory:") as memory:
        assert memory.reopen_url() is None
        assert isinstance(writer_for(memory), InProcess)
    with Store.open(tmp_path / "file.db") as on_disk:
        writer = writer_for(on_disk)
        try:
            assert isinstance(writer, CommitterProcess)
        finally:
            writer.close()
        assert isinstance(writer_for(on_disk, in_process=True), InProcess)
