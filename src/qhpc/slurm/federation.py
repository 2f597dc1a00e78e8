"""Federated submission: a batch job to another site's Slurm, with a QPU session there.

A centre's gateway submits its users' jobs to the QPU site's Slurm through
slurmrestd (:mod:`qhpc.slurm.rest`). With a :class:`CentreSession`, it first
opens a session at that site's broker with the *centre's* token, booked to one
of its users, and hands the job only the session token (``QHPC_SESSION`` …):
the centre's token never leaves the gateway. Following the job to its end
closes the session at once instead of at its deadline.

- :func:`submit_remote` does the whole round (open, submit, follow, close) and
  reports each step to a callback as a :data:`FederationEvent`; the command
  line (``qhpc slurm submit --remote``) only prints them;
- :func:`rest_client` and :func:`job_environment` prepare its inputs: a
  slurmrestd client with a JWT (else one from ``scontrol token``) and the
  job's environment.

The broker is reached with :class:`~qhpc.slurm.link.BrokerLink`, as the hooks
reach it: plain HTTP, none of the client library's Qiskit start-up.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qhpc.envvars import FASTPATH_ENV, RESOURCE_ENV, SESSION_ENV, SESSION_ID_ENV, URL_ENV
from qhpc.slurm.errors import SlurmError
from qhpc.slurm.jobinfo import licence_name
from qhpc.slurm.link import BrokerLink
from qhpc.slurm.rest import (
    DEFAULT_PATH,
    RemoteJob,
    RemoteSlurmError,
    SlurmRestClient,
    token_from_scontrol,
)

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RemoteSubmission:
    """What slurmrestd gets: the batch script and its ``sbatch`` settings."""

    script: str
    name: str
    working_directory: str = "/tmp"
    #: the job's whole environment (slurmrestd passes none of ours); default a plain PATH
    environment: Mapping[str, str] | None = None
    partition: str | None = None
    #: None: with a session, the session's QPU licence; "": none at all
    licenses: str | None = None
    time_limit_minutes: int | None = None
    account: str | None = None


@dataclass(frozen=True)
class CentreSession:
    """A session to open at the remote site's broker for the job."""

    broker: str  # the broker's REST URL, as the job on the remote site reaches it
    token: str  # the centre's token: opens the session here, never sent with the job
    resource: str
    user: str | None = None  # the centre's user the session is booked to
    account: str | None = None  # broker account to charge
    fastpath: str | None = None  # the fast-path endpoint as the job reaches it
    #: how long the session lasts if the job has no time limit (the limit otherwise)
    fallback_seconds: float = 3600.0

    def seconds_for(self, submission: RemoteSubmission) -> float:
        minutes = submission.time_limit_minutes
        return float(minutes * 60) if minutes else self.fallback_seconds


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class SessionOpened:
    broker: str
    session: Mapping[str, Any]

    @property
    def message(self) -> str:
        s = self.session
        return (
            f"opened session {s['session_id']} on {s['resource']} at {self.broker} for "
            f"{s['user']} (centre {s.get('centre') or '-'}, account {s['account']})"
        )


@dataclass(frozen=True)
class JobSubmitted:
    job_id: int
    url: str
    user: str

    @property
    def message(self) -> str:
        return f"submitted batch job {self.job_id} to {self.url} as {self.user}"


@dataclass(frozen=True)
class JobChanged:
    job: RemoteJob

    @property
    def message(self) -> str:
        return self.job.describe()


@dataclass(frozen=True)
class SessionClosed:
    session_id: str

    @property
    def message(self) -> str:
        return f"closed session {self.session_id}"


@dataclass(frozen=True)
class SessionLeftOpen:
    """Closing failed; the session's deadline ends it. A warning, not an error: the
    job's outcome matters more."""

    session_id: str
    reason: str

    @property
    def message(self) -> str:
        return f"could not close session {self.session_id}: {self.reason}"


FederationEvent = SessionOpened | JobSubmitted | JobChanged | SessionClosed | SessionLeftOpen
OnEvent = Callable[[FederationEvent], None]


@dataclass(frozen=True)
class RemoteSubmitResult:
    job_id: int
    #: the session opened for the job (its ``token`` included), if one was
    session: Mapping[str, Any] | None = None
    #: the job's final state, if :func:`submit_remote` followed it
    job: RemoteJob | None = None

    def to_dict(self) -> dict[str, Any]:
        """The job (final, if followed) and the session's id; never the session token."""
        data = job_dict(self.job) if self.job is not None else {"job_id": self.job_id}
        if self.session:
            data["session_id"] = self.session["session_id"]
        return data


def job_dict(job: RemoteJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id, "state": job.state, "reason": job.reason,
        "exit_code": job.exit_code, "signal": job.signal, "name": job.name,
        "partition": job.partition,
    }  # fmt: skip


# --------------------------------------------------------------------------- the round


def rest_client(
    remote: str,
    user: str | None = None,
    token: str | None = None,
    lifespan: int = 3600,
    on_note: Callable[[str], None] | None = None,
) -> SlurmRestClient:
    """A slurmrestd client as ``user`` (default: the login name); without ``token``,
    one made by ``scontrol token`` for ``lifespan`` seconds (``on_note`` hears so)."""
    name = user or os.environ.get("USER") or getpass.getuser()
    if not token:
        if on_note is not None:
            on_note(f"no --token-file and no SLURM_JWT: asking `scontrol token` for user {name}")
        token = token_from_scontrol(name, lifespan)
    return SlurmRestClient(remote, name, token)


def job_environment(
    pairs: Sequence[str], exports: Sequence[str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The job's environment: a plain PATH, the ``exports`` taken from ``environ`` (default
    this process's), then the ``NAME=VALUE`` ``pairs``."""
    environ = os.environ if environ is None else environ
    environment = {"PATH": DEFAULT_PATH}
    for name in exports:
        if name not in environ:
            raise RemoteSlurmError(f"--export {name}: {name} is not set here")
        environment[name] = environ[name]
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise RemoteSlurmError(f"--env expects NAME=VALUE, got {pair!r}")
        environment[name] = value
    return environment


def session_exports(centre: CentreSession, session: Mapping[str, Any]) -> dict[str, str]:
    """What the job needs to use the session, and nothing of the centre's."""
    exports = {
        URL_ENV: centre.broker,
        RESOURCE_ENV: str(session["resource"]),
        SESSION_ENV: str(session["token"]),
        SESSION_ID_ENV: str(session["session_id"]),
    }
    if centre.fastpath:
        exports[FASTPATH_ENV] = centre.fastpath
    return exports


def submit_remote(
    rest: SlurmRestClient,
    submission: RemoteSubmission,
    *,
    session: CentreSession | None = None,
    wait: bool = False,
    poll: float = 1.0,
    timeout: float | None = None,
    on_event: OnEvent | None = None,
    link_factory: Callable[[str, str], BrokerLink] = BrokerLink,
) -> RemoteSubmitResult:
    """Submit ``submission`` through ``rest``; with ``session``, open it first and give
    the job its token; with ``wait``, follow the job to its end and close the session.

    Without ``wait`` the session stays open for the job (its deadline ends it). If
    submitting or following fails, the session is closed before the error goes on:
    no job will use it.
    """
    emit = on_event or (lambda _: None)
    environment = dict(submission.environment or {"PATH": DEFAULT_PATH})
    link: BrokerLink | None = None
    opened: Mapping[str, Any] | None = None
    if session is not None:
        link = link_factory(session.broker, session.token)
        try:
            opened = link.open_session(
                session.resource, duration_seconds=session.seconds_for(submission),
                user=session.user, account=session.account,
            )  # fmt: skip
        except BaseException:
            link.close()
            raise
        environment.update(session_exports(session, opened))
        emit(SessionOpened(session.broker, opened))
    # With a session the job asks for the QPU's licence (the site's limit holds for
    # centres too) and is held until the session is tied to it, so the site's hooks
    # adopt the centre's session (booked to the centre's user) instead of opening theirs.
    licenses = submission.licenses
    if session is not None and licenses is None:
        licenses = f"{licence_name(session.resource)}:1"
    try:
        job_id = rest.submit(
            submission.script, name=submission.name,
            working_directory=submission.working_directory, environment=environment,
            partition=submission.partition, licenses=licenses,
            time_limit_minutes=submission.time_limit_minutes, account=submission.account,
            hold=link is not None,
        )  # fmt: skip
        emit(JobSubmitted(job_id, rest.url, rest.user))
        if link is not None and opened is not None:
            _tie(rest, link, str(opened["session_id"]), job_id)
        if not wait:
            if link is not None:
                link.close()  # the session stays open: the job is yet to use it
            return RemoteSubmitResult(job_id, opened)
        final = rest.wait(
            job_id, poll=poll, timeout=timeout, on_change=lambda job: emit(JobChanged(job))
        )
    except BaseException:
        if link is not None and opened is not None:
            _close(link, opened, emit, report_success=False)
        raise
    if link is not None and opened is not None:
        _close(link, opened, emit, report_success=True)
    return RemoteSubmitResult(job_id, opened, final)


def _tie(rest: SlurmRestClient, link: BrokerLink, session_id: str, job_id: int) -> None:
    """Tie the session to the held job, then let the job start; a job that cannot be tied
    is cancelled (it would otherwise run on a session of the site's hooks, booked to the
    gateway user), and the error goes on."""
    try:
        link.tag_session(session_id, str(job_id))
    except BaseException:
        with contextlib.suppress(Exception):  # the tie's error is the one to report
            rest.cancel(job_id)
        raise
    rest.release(job_id)


def _close(
    link: BrokerLink, session: Mapping[str, Any], emit: OnEvent, *, report_success: bool
) -> None:
    # On the failure path only a failed close is reported: the error that follows says
    # what went wrong, and the session's closing is not news there.
    session_id = str(session["session_id"])
    try:
        link.close_session(session_id)
        if report_success:
            emit(SessionClosed(session_id))
    except SlurmError as exc:
        emit(SessionLeftOpen(session_id, str(exc)))
    finally:
        link.close()
