"""The federated submission round (:func:`qhpc.slurm.submit_remote`) against fakes of
slurmrestd and the remote broker: the order of its steps, what the job gets, and that
the session is closed whichever way the round ends.

The same round over real HTTP (a loopback slurmrestd stand-in and a served broker)
is in test_slurm_rest.py, through the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from qhpc.slurm import (
    CentreSession,
    FederationEvent,
    JobChanged,
    JobSubmitted,
    RemoteJob,
    RemoteSlurmError,
    RemoteSubmission,
    SessionClosed,
    SessionLeftOpen,
    SessionOpened,
    SlurmError,
    job_environment,
    submit_remote,
)
from qhpc.slurm.link import BrokerLink

SESSION = {
    "session_id": "s-1", "resource": "aer", "token": "qhpc_session_secret", "user": "alice",
    "centre": "north", "account": "north-chem",
}  # fmt: skip
CENTRE = CentreSession(
    "http://qpu-site:8080", "qhpc_centre_secret", "aer", user="alice", account="north-chem",
    fastpath="tcp://qpu-site:5555", fallback_seconds=900,
)  # fmt: skip


@dataclass
class FakeRest:
    """slurmrestd as submit_remote sees it: submit, then states until a final one."""

    states: list[RemoteJob] = field(default_factory=list)
    fail_submit: bool = False
    url: str = "http://remote:6820"
    user: str = "north-gw"
    submitted: list[dict[str, Any]] = field(default_factory=list)

    def submit(self, script: str, **options: Any) -> int:
        if self.fail_submit:
            raise RemoteSlurmError("slurmrestd refused: Invalid partition name specified")
        self.submitted.append({"script": script, **options})
        return 41

    released: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    def release(self, job_id: int) -> None:
        self.released.append(job_id)

    def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)

    def wait(
        self, job_id: int, *, poll: float, timeout: float | None,
        on_change: Callable[[RemoteJob], None] | None = None,
    ) -> RemoteJob:  # fmt: skip
        for job in self.states:
            if on_change is not None:
                on_change(job)
        return self.states[-1]


@dataclass
class FakeLink:
    """The remote broker: opens SESSION, records what was asked and closed."""

    url: str
    token: str
    close_fails: bool = False
    tie_fails: bool = False
    tied: list[tuple[str, str]] = field(default_factory=list)
    opened: list[dict[str, Any]] = field(default_factory=list)
    closed_sessions: list[str] = field(default_factory=list)
    closed: bool = False

    def open_session(self, resource: str, **fields: Any) -> dict[str, Any]:
        self.opened.append({"resource": resource, **fields})
        return dict(SESSION)

    def tag_session(self, session_id: str, slurm_job_id: str) -> dict[str, Any]:
        if self.tie_fails:
            raise SlurmError("the broker refused it: session s-1 is closed")
        self.tied.append((session_id, slurm_job_id))
        return {**SESSION, "slurm_job_id": slurm_job_id}

    def close_session(self, session_id: str) -> bool:
        if self.close_fails:
            raise SlurmError("cannot reach the qhpc broker at http://qpu-site:8080")
        self.closed_sessions.append(session_id)
        return True

    def close(self) -> None:
        self.closed = True


def run(
    rest: FakeRest, *, session: CentreSession | None = CENTRE, wait: bool = True,
    close_fails: bool = False, time_limit: int | None = 30, tie_fails: bool = False,
    licenses: str | None = None,
) -> tuple[Any, list[FederationEvent], list[FakeLink]]:  # fmt: skip
    events: list[FederationEvent] = []
    links: list[FakeLink] = []

    def link(url: str, token: str) -> BrokerLink:
        links.append(FakeLink(url, token, close_fails, tie_fails))
        return links[-1]  # type: ignore[return-value]

    submission = RemoteSubmission(
        "#!/bin/sh\ntrue\n", "job.sh", environment={"PATH": "/bin", "A": "b"},
        partition="qpu", time_limit_minutes=time_limit, licenses=licenses,
    )  # fmt: skip
    result = submit_remote(
        rest, submission, session=session, wait=wait, on_event=events.append,  # type: ignore[arg-type]
        link_factory=link,
    )  # fmt: skip
    return result, events, links


def done(state: str = "COMPLETED", code: int = 0) -> RemoteJob:
    return RemoteJob(41, state, exit_code=code)


def test_the_round_opens_submits_follows_and_closes_in_that_order() -> None:
    rest = FakeRest([RemoteJob(41, "PENDING", "Priority"), done("FAILED", 4)])
    result, events, (link,) = run(rest)
    assert [type(e) for e in events] == [
        SessionOpened, JobSubmitted, JobChanged, JobChanged, SessionClosed,
    ]  # fmt: skip
    assert [e.message for e in events] == [
        "opened session s-1 on aer at http://qpu-site:8080 for alice (centre north, "
        "account north-chem)",
        "submitted batch job 41 to http://remote:6820 as north-gw",
        "job 41: PENDING (Priority)",
        "job 41: FAILED, exit code 4",
        "closed session s-1",
    ]
    assert result.job.exit_status == 4
    assert result.to_dict()["session_id"] == "s-1"
    assert (link.url, link.token) == ("http://qpu-site:8080", "qhpc_centre_secret")
    assert link.opened == [{
        "resource": "aer", "duration_seconds": 1800.0, "user": "alice", "account": "north-chem",
    }]  # fmt: skip
    assert link.closed_sessions == ["s-1"] and link.closed


def test_the_job_gets_the_session_token_and_never_the_centres() -> None:
    rest = FakeRest([done()])
    result, _, _ = run(rest, time_limit=None)
    environment = rest.submitted[0]["environment"]
    assert environment == {
        "PATH": "/bin", "A": "b", "QHPC_URL": "http://qpu-site:8080", "QHPC_RESOURCE": "aer",
        "QHPC_SESSION": "qhpc_session_secret", "QHPC_SESSION_ID": "s-1",
        "QHPC_FASTPATH": "tcp://qpu-site:5555",
    }  # fmt: skip
    assert "qhpc_centre_secret" not in repr(rest.submitted)
    assert "qhpc_session_secret" not in repr(result.to_dict())


def test_without_a_time_limit_the_session_lasts_the_fallback() -> None:
    _, _, (link,) = run(FakeRest([done()]), time_limit=None)
    assert link.opened[0]["duration_seconds"] == 900


def test_without_wait_the_session_stays_open_for_the_job() -> None:
    result, events, (link,) = run(FakeRest(), wait=False)
    assert [type(e) for e in events] == [SessionOpened, JobSubmitted]
    assert result.job is None and result.to_dict() == {"job_id": 41, "session_id": "s-1"}
    assert link.closed_sessions == [] and link.closed  # the connection, not the session


def test_a_failed_submission_closes_the_session_and_raises() -> None:
    events: list[FederationEvent] = []
    links: list[FakeLink] = []

    def link(url: str, token: str) -> BrokerLink:
        links.append(FakeLink(url, token))
        return links[-1]  # type: ignore[return-value]

    with pytest.raises(RemoteSlurmError, match="Invalid partition"):
        submit_remote(
            FakeRest(fail_submit=True), RemoteSubmission("x", "x"), session=CENTRE,  # type: ignore[arg-type]
            on_event=events.append, link_factory=link,
        )  # fmt: skip
    assert links[0].closed_sessions == ["s-1"] and links[0].closed
    assert [type(e) for e in events] == [SessionOpened]  # the error says the rest


def test_a_session_that_will_not_close_is_a_warning_not_a_failure() -> None:
    result, events, _ = run(FakeRest([done()]), close_fails=True)
    assert isinstance(events[-1], SessionLeftOpen)
    assert events[-1].message.startswith("could not close session s-1: cannot reach")
    assert result.job.exit_status == 0


def test_without_a_session_only_the_job_goes() -> None:
    rest = FakeRest([done()])
    result, events, links = run(rest, session=None)
    assert links == [] and [type(e) for e in events] == [JobSubmitted, JobChanged]
    assert rest.submitted[0]["environment"] == {"PATH": "/bin", "A": "b"}
    assert result.to_dict()["state"] == "COMPLETED" and "session_id" not in result.to_dict()


def test_job_environment() -> None:
    assert job_environment(["A=b", "C=d=e"], ["HOME"], {"HOME": "/home/a"}) == {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/a", "A": "b", "C": "d=e",
    }  # fmt: skip
    with pytest.raises(RemoteSlurmError, match="--export HOME: HOME is not set here"):
        job_environment([], ["HOME"], {})
    with pytest.raises(RemoteSlurmError, match="--env expects NAME=VALUE, got 'A'"):
        job_environment(["A"], [], {})


def test_a_submission_without_an_environment_gets_a_plain_path() -> None:
    rest = FakeRest([done()])
    submit_remote(rest, RemoteSubmission("#!/bin/sh\n", "j"), session=None)  # type: ignore[arg-type]
    assert rest.submitted[0]["environment"] == {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def test_a_centres_job_is_held_until_its_session_is_tied_to_it() -> None:
    rest = FakeRest([done()])
    _, _, (link,) = run(rest)
    (submitted,) = rest.submitted
    # the site's licence limit holds for a centre's job, without -L too
    assert submitted["hold"] is True and submitted["licenses"] == "qpu_aer:1"
    assert link.tied == [("s-1", "41")] and rest.released == [41] and rest.cancelled == []
    rest = FakeRest([done()])
    run(rest, licenses="qpu_aer:2,matlab:1")
    assert rest.submitted[0]["licenses"] == "qpu_aer:2,matlab:1"  # a -L given is kept


def test_a_job_its_session_cannot_be_tied_to_is_cancelled_and_the_session_closed() -> None:
    rest = FakeRest([done()])
    with pytest.raises(SlurmError, match="session s-1 is closed"):
        run(rest, tie_fails=True)
    assert rest.cancelled == [41] and rest.released == []


def test_without_a_session_the_job_is_neither_held_nor_given_a_licence() -> None:
    rest = FakeRest([done()])
    run(rest, session=None)
    assert rest.submitted[0]["hold"] is False and rest.submitted[0]["licenses"] is None


def test_an_empty_licence_list_asks_for_none() -> None:
    rest = FakeRest([done()])
    run(rest, licenses="")
    assert rest.submitted[0]["licenses"] == ""  # the REST client leaves it out
