"""A client of slurmrestd: submit a batch script to another site's Slurm and follow it.

This is the two-cluster path of the Quantum Inspire / SURF set-up: a centre's
gateway submits to the QPU site's Slurm over HTTP with a JSON Web Token,
without being part of that site's munge domain. Slurm 22.05 serves the REST
API versions v0.0.36-v0.0.38; qhpc speaks v0.0.38:

- ``POST /slurm/v0.0.38/job/submit`` with ``{"job": {...}, "script": "..."}``
  answers ``{"job_id": N, "errors": [], ...}``;
- ``GET /slurm/v0.0.38/job/N`` answers ``{"jobs": [{"job_state": ..., "exit_code": ...}]}``.

Every request carries ``X-SLURM-USER-NAME`` and ``X-SLURM-USER-TOKEN``; the
token comes from ``scontrol token username=U lifespan=S`` on the remote site.
Replies are validated with pydantic models of that schema, so a reply that is
not JSON, lacks a field or carries Slurm errors becomes one
:class:`RemoteSlurmError` whose message names the problem.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qhpc.slurm.chain import SLURM_FINAL_STATES
from qhpc.slurm.errors import SlurmError

API_VERSION = "v0.0.38"
USER_HEADER = "X-SLURM-USER-NAME"
TOKEN_HEADER = "X-SLURM-USER-TOKEN"
#: how slurmrestd 22.05 reports a token slurmctld refused: "Zero Bytes were transmitted
#: or received" on submission, "Unspecified error" (-1) when reading a job
TOKEN_REFUSED_ERRORS = frozenset({5005, -1})
#: ESLURM_JOB_HELD: how slurmrestd 22.05 reports, beside its id, a job submitted held
JOB_HELD = 2042
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class RemoteSlurmError(SlurmError):
    """slurmrestd could not be reached, refused a request, or answered something unusable."""


# --------------------------------------------------------------------------- the v0.0.38 schema


class _Lenient(BaseModel):
    # slurmrestd adds fields between releases (and the errors of 22.05 carry more
    # than the published schema): unknown fields are kept, never an error.
    model_config = ConfigDict(extra="allow")


class RestError(_Lenient):
    """One entry of a reply's ``errors`` array."""

    error: str | None = None
    error_number: int | None = None
    error_code: int | None = None  # what 22.05 actually sends for submission errors
    description: str | None = None
    source: str | None = None

    @property
    def number(self) -> int | None:
        return self.error_number if self.error_number is not None else self.error_code

    def describe(self) -> str:
        text = self.error or "unnamed error"
        details = [d for d in (self.description, self.source) if d and d != text]
        if self.number is not None:
            details.append(f"Slurm error {self.number}")
        return f"{text} ({'; '.join(details)})" if details else text


class SubmitReply(_Lenient):
    """``v0.0.38_job_submission_response``."""

    errors: list[RestError] = Field(default_factory=list)
    job_id: int | None = None
    step_id: str | None = None
    job_submit_user_msg: str | None = None


class UpdateReply(_Lenient):
    """The reply to ``POST job/N`` (an update): errors, if any."""

    errors: list[RestError] = Field(default_factory=list)


class RestJob(_Lenient):
    """The fields of ``v0.0.38_job_response_properties`` qhpc reads."""

    job_id: int
    job_state: str = Field(min_length=1)
    state_reason: str | None = None
    state_description: str | None = None
    exit_code: int | None = None
    name: str | None = None
    partition: str | None = None
    user_name: str | None = None


class JobsReply(_Lenient):
    """``v0.0.38_jobs_response``."""

    errors: list[RestError] = Field(default_factory=list)
    jobs: list[RestJob] = Field(default_factory=list)


class PingReply(_Lenient):
    errors: list[RestError] = Field(default_factory=list)
    pings: list[dict[str, Any]] = Field(default_factory=list)


Reply = TypeVar("Reply", bound=_Lenient)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RemoteJob:
    """A job on the remote cluster as slurmrestd reports it."""

    job_id: int
    state: str
    reason: str = ""
    #: the batch script's exit status (slurmrestd sends the raw wait status)
    exit_code: int | None = None
    #: the signal that ended it, if one did
    signal: int | None = None
    name: str = ""
    partition: str = ""

    @classmethod
    def from_rest(cls, job: RestJob) -> RemoteJob:
        code = signal = None
        if job.exit_code is not None and job.exit_code >= 0:
            code, signal = (job.exit_code >> 8) & 0xFF, (job.exit_code & 0x7F) or None
        reason = job.state_reason if job.state_reason not in (None, "None") else ""
        return cls(
            job.job_id, job.job_state, reason or "", code, signal,
            job.name or "", job.partition or "",
        )  # fmt: skip

    @property
    def final(self) -> bool:
        return self.state in SLURM_FINAL_STATES

    @property
    def exit_status(self) -> int:
        """What a local command should exit with to mirror this (final) job."""
        if self.signal:
            return 128 + self.signal
        if self.exit_code:
            return self.exit_code
        return 0 if self.state == "COMPLETED" else 1

    def describe(self) -> str:
        text = f"job {self.job_id}: {self.state}"
        if self.reason:
            text += f" ({self.reason})"
        if self.final and self.exit_code is not None:
            text += f", exit code {self.exit_code}"
            if self.signal:
                text += f", signal {self.signal}"
        return text


# --------------------------------------------------------------------------- tokens


def token_from_scontrol(user: str, lifespan: int = 3600, timeout: float = 15.0) -> str:
    """A JWT for ``user`` from ``scontrol token`` (run where the remote cluster's key is)."""
    command = ["scontrol", "token", f"username={user}", f"lifespan={lifespan}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise RemoteSlurmError(
            "no token given and scontrol is not installed: pass --token-file FILE or set SLURM_JWT"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise RemoteSlurmError(f"`{' '.join(command)}` gave no answer in {timeout:.0f} s") from exc
    for line in done.stdout.splitlines():
        name, _, value = line.strip().partition("=")
        if name == "SLURM_JWT" and value:
            return value
    detail = (done.stderr or done.stdout).strip().splitlines()
    reason = detail[-1] if detail else f"exit code {done.returncode}"
    raise RemoteSlurmError(
        f"`{' '.join(command)}` gave no token: {reason} (it works as root or SlurmUser on a "
        "cluster with AuthAltTypes=auth/jwt; otherwise pass --token-file FILE or set SLURM_JWT)"
    )


# --------------------------------------------------------------------------- the client


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "reply"
    return f"{where}: {error['msg'].lower()}"


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")


class SlurmRestClient:
    """slurmrestd at ``url`` acting as ``user`` with the JWT ``token``."""

    def __init__(
        self,
        url: str,
        user: str,
        token: str,
        *,
        version: str = API_VERSION,
        timeout: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise RemoteSlurmError(f"slurmrestd URL {url!r} must start with http:// or https://")
        if not user:
            raise RemoteSlurmError("a slurmrestd request needs a user name (X-SLURM-USER-NAME)")
        if not token:
            raise RemoteSlurmError("a slurmrestd request needs a token (X-SLURM-USER-TOKEN)")
        self.url = url.rstrip("/")
        self.user = user
        self.version = version
        self._http = httpx.Client(
            base_url=self.url,
            headers={USER_HEADER: user, TOKEN_HEADER: token, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SlurmRestClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _path(self, tail: str) -> str:
        return f"/slurm/{self.version}/{tail}"

    def _request(
        self, method: str, tail: str, model: type[Reply], body: Mapping[str, Any] | None = None
    ) -> tuple[int, Reply]:
        path = self._path(tail)
        what = f"{method} {path}"
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise RemoteSlurmError(
                f"slurmrestd at {self.url} did not answer {what} in time"
            ) from exc
        except httpx.HTTPError as exc:
            raise RemoteSlurmError(f"cannot reach slurmrestd at {self.url}: {exc}") from exc
        status = response.status_code
        if status in (401, 403):
            raise RemoteSlurmError(
                f"slurmrestd at {self.url} refused user {self.user!r} (HTTP {status}): it takes "
                f"{USER_HEADER} + {TOKEN_HEADER} only when started with -a rest_auth/jwt and "
                "SLURM_JWT=daemon, and the token must be valid for that user"
            )
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            hint = ""
            if status == 404:
                hint = (
                    f"; this slurmrestd may not serve API {self.version} (Slurm 22.05 serves "
                    "v0.0.36-v0.0.38; start it with -s openapi/v0.0.38)"
                )
            kind = response.headers.get("content-type", "no content type")
            raise RemoteSlurmError(
                f"slurmrestd at {self.url} answered {what} with HTTP {status} and a body that "
                f"is not JSON ({kind}): {_snippet(response.text)}{hint}"
            ) from None
        if not isinstance(data, dict):
            raise RemoteSlurmError(
                f"slurmrestd at {self.url} answered {what} with a JSON {type(data).__name__}, "
                "not an object"
            )
        try:
            reply = model.model_validate(data)
        except ValidationError as exc:
            raise RemoteSlurmError(
                f"slurmrestd at {self.url} answered {what} with a reply that does not match "
                f"the {self.version} schema: {_first_problem(exc)}"
            ) from exc
        return status, reply

    def _raise_errors(self, action: str, status: int, errors: list[RestError]) -> None:
        if errors:
            text = "; ".join(error.describe() for error in errors)
            hint = ""
            if any(error.number in TOKEN_REFUSED_ERRORS for error in errors):
                hint = (
                    " — this is how slurmrestd reports a token slurmctld refused: check that "
                    f"it is valid, unexpired and issued for user {self.user!r}"
                )
            raise RemoteSlurmError(f"slurmrestd at {self.url} could not {action}: {text}{hint}")
        if status >= 400:
            raise RemoteSlurmError(
                f"slurmrestd at {self.url} could not {action}: HTTP {status} without an error list"
            )

    def ping(self) -> list[dict[str, Any]]:
        """The controllers slurmrestd talks to (``GET …/ping``)."""
        status, reply = self._request("GET", "ping", PingReply)
        self._raise_errors("ping the controller", status, reply.errors)
        return reply.pings

    def submit(
        self,
        script: str,
        *,
        name: str,
        working_directory: str,
        environment: Mapping[str, str] | None = None,
        partition: str | None = None,
        licenses: str | None = None,
        time_limit_minutes: int | None = None,
        account: str | None = None,
        extra: Mapping[str, Any] | None = None,
        hold: bool = False,
    ) -> int:
        """Submit ``script`` as a batch job; the remote job id.

        ``environment`` is the job's whole environment (slurmrestd does not pass
        the caller's); it defaults to a plain ``PATH``. ``extra`` adds further
        ``v0.0.38_job_properties`` fields as they are. ``hold``: the job waits
        (``JobHeldUser``) until :meth:`release`.
        """
        if not script.startswith("#!"):
            raise RemoteSlurmError("a batch script must start with an interpreter line (#!…)")
        job: dict[str, Any] = {
            "name": name,
            "current_working_directory": working_directory,
            "environment": dict(environment) if environment else {"PATH": DEFAULT_PATH},
        }
        optional = {
            "partition": partition, "licenses": licenses,
            "time_limit": time_limit_minutes, "account": account,
        }  # fmt: skip
        job.update({key: value for key, value in optional.items() if value not in (None, "")})
        if hold:
            job["hold"] = True
        job.update(extra or {})
        status, reply = self._request(
            "POST", "job/submit", SubmitReply, {"job": job, "script": script}
        )
        # A held job is reported as an "error" (ESLURM_JOB_HELD) beside its id: it is news.
        errors = [e for e in reply.errors if not (hold and e.number == JOB_HELD)]
        self._raise_errors(f"submit job {name!r}", status, errors)
        if reply.job_id is None:
            raise RemoteSlurmError(
                f"slurmrestd at {self.url} accepted job {name!r} but its reply has no job_id"
            )
        return reply.job_id

    def release(self, job_id: int) -> None:
        """Let a held job start (``POST job/N`` with ``{"hold": false}``, as 22.05 takes it)."""
        status, reply = self._request("POST", f"job/{job_id}", UpdateReply, {"hold": False})
        self._raise_errors(f"release job {job_id}", status, reply.errors)

    def cancel(self, job_id: int) -> None:
        """Cancel a job (``DELETE job/N``)."""
        status, reply = self._request("DELETE", f"job/{job_id}", UpdateReply)
        self._raise_errors(f"cancel job {job_id}", status, reply.errors)

    def job(self, job_id: int) -> RemoteJob:
        """The job's current state."""
        status, reply = self._request("GET", f"job/{job_id}", JobsReply)
        self._raise_errors(f"read job {job_id}", status, reply.errors)
        for job in reply.jobs:
            if job.job_id == job_id:
                return RemoteJob.from_rest(job)
        raise RemoteSlurmError(f"slurmrestd at {self.url} reported no job {job_id}")

    def wait(
        self,
        job_id: int,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        on_change: Callable[[RemoteJob], None] | None = None,
    ) -> RemoteJob:
        """Poll the job until it reaches a final state; ``on_change`` sees each new state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[str, str] | None = None
        while True:
            job = self.job(job_id)
            if on_change is not None and (job.state, job.reason) != last:
                on_change(job)
            last = (job.state, job.reason)
            if job.final:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise RemoteSlurmError(
                    f"{job.describe()} — still not finished after {timeout:.0f} s"
                )
            time.sleep(poll)
