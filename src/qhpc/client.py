"""Python client of the broker's REST API.

>>> client = connect("http://qpu-broker:8080", token)          # doctest: +SKIP
>>> job = client.submit("aer", [circuit], shots=1000)           # doctest: +SKIP
>>> client.wait(job["job_id"], timeout=60)                      # doctest: +SKIP
>>> counts = client.results(job["job_id"])[0].circuits[0].counts  # doctest: +SKIP

Every error answer (an RFC 9457 problem body) becomes a :class:`ClientError`
carrying the HTTP status and the server's detail; an unreachable broker is a
:class:`ClientError` too, with ``status`` ``None``.

Submissions (jobs, programs) carry a fresh ``Idempotency-Key`` each, and are retried
with that same key after a connection error, a timeout or a 5xx answer (up to
``retries`` times, with exponential backoff): the broker stores a job once per key, so
a retry after a lost answer returns the job the first attempt made instead of a second.

Plain dicts mirror the JSON the API returns, except results, which come back as
:class:`~qhpc.resources.SamplerResult` / :class:`~qhpc.resources.EstimatorResult`.

Qiskit and the resources room load only where a circuit, a payload or a result is
handled, so that a caller that only manages sessions (Slurm's hooks, once per job
on the controller) starts in a fraction of the time. QPUs on a broker
(``qhpc.connect(url, token).qpu("aer")``) come from :mod:`qhpc.program`, which
builds on this client.
"""

from __future__ import annotations

import base64
import io
import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from qhpc.envvars import SESSION_ENV, TOKEN_ENV, URL_ENV
from qhpc.errors import QhpcError
from qhpc.states import FINAL_STATES as FINAL_STATES  # a job is final once in one

if TYPE_CHECKING:
    from qiskit.circuit import QuantumCircuit

    from qhpc.resources import Payload, TaskResult

#: retries of a submission after a connection error, timeout or 5xx (same key each time)
DEFAULT_RETRIES = 4
#: first pause before a retry (s); doubled each time, with jitter, up to MAX_BACKOFF
DEFAULT_BACKOFF = 0.25
MAX_BACKOFF = 8.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
ClientT = TypeVar("ClientT", bound="Client")


def new_idempotency_key() -> str:
    """A fresh key for one logical submission (random, so never reused by accident)."""
    return uuid.uuid4().hex


class ClientError(QhpcError):
    """The broker refused a request (``status`` set) or could not be reached (``None``)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        type: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail
        self.status = status
        self.title = title
        self.type = type
        self.body = dict(body or {})
        prefix = f"{status} {title}: " if status is not None and title else ""
        super().__init__(prefix + detail)


def result_from_dict(data: Mapping[str, Any]) -> TaskResult:
    """A result from the broker's JSON (see :func:`qhpc.resources.payload.result_from_dict`)."""
    from qhpc.resources import PayloadError
    from qhpc.resources import result_from_dict as payload_result_from_dict

    try:
        return payload_result_from_dict(data)
    except PayloadError as exc:
        raise ClientError(f"the broker's answer holds a {exc}") from None


def circuit_text(circuit: QuantumCircuit | str | bytes) -> str:
    """How a circuit travels in JSON: source text as is, binary data (QPY, QIR bitcode)
    as base64, a QuantumCircuit as base64 QPY."""
    if isinstance(circuit, str):
        return circuit
    if isinstance(circuit, bytes):
        return base64.b64encode(circuit).decode("ascii")
    from qiskit import qpy

    buffer = io.BytesIO()
    qpy.dump(circuit, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def payload_text(payload: Payload) -> str:
    from qhpc.resources import encode_payload

    return base64.b64encode(encode_payload(payload)).decode("ascii")


class _Operations:
    """What operators, centres and Slurm's hooks ask of a broker besides jobs: drains,
    admission, sessions tied to Slurm jobs, reservations, accounts, accounting, tokens.
    A part of :class:`Client` (kept apart to keep each class readable)."""

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        raise NotImplementedError  # Client's

    def admission(self, name: str, licences: int | None = None) -> dict[str, Any]:
        """How many sessions the broker's admission controller lets hold the resource
        (``licences``: how many Slurm has for it, if the caller knows)."""
        params = None if licences is None else {"licences": licences}
        return dict(self._request("GET", f"/resources/{name}/admission", params=params))

    def drain(
        self, name: str, reason: str, *, until: float | None = None,
        for_seconds: float | None = None, now: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """Take a resource out of service (admin); neither end given: until resumed."""
        body: dict[str, Any] = {"reason": reason, "now": now}
        if until is not None:
            body["until"] = until
        if for_seconds is not None:
            body["for_seconds"] = for_seconds
        return dict(self._request("POST", f"/resources/{name}/drain", json=body))

    def resume(self, name: str) -> dict[str, Any]:
        """End a resource's drain (admin)."""
        return dict(self._request("POST", f"/resources/{name}/resume"))

    def tag_session(self, session_id: str, slurm_job_id: str) -> dict[str, Any]:
        """Tie an open session to the Slurm job that will use it (admin, centre)."""
        body = {"slurm_job_id": slurm_job_id}
        return dict(self._request("PATCH", f"/sessions/{session_id}", json=body))

    def reservations(
        self, resource: str | None = None, include_past: bool = False
    ) -> list[dict[str, Any]]:
        params = {"resource": resource, "include_past": include_past}
        return list(self._request("GET", "/reservations", params=params))

    def create_reservation(
        self, resource: str, account: str, start: float, end: float, allow_backfill: bool = False
    ) -> dict[str, Any]:
        body = {
            "resource": resource, "account": account, "start": start, "end": end,
            "allow_backfill": allow_backfill,
        }  # fmt: skip
        return dict(self._request("POST", "/reservations", json=body))

    def delete_reservation(self, reservation_id: str) -> None:
        self._request("DELETE", f"/reservations/{reservation_id}")

    def accounts(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/accounts"))

    def account(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/accounts/{name}"))

    def set_account(self, name: str, shares: float, centre: str | None = None) -> dict[str, Any]:
        body = _compact({"shares": shares, "centre": centre})
        return dict(self._request("PUT", f"/accounts/{name}", json=body))

    def accounting(
        self, group_by: str = "account", since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        params = {"group_by": group_by, "since": since, "until": until}
        return list(self._request("GET", "/accounting", params=params)["rows"])

    def create_token(
        self,
        role: str,
        subject: str,
        account: str | None = None,
        centre: str | None = None,
        ttl_seconds: float | None = None,
        resource: str | None = None,
    ) -> dict[str, Any]:
        """Issue a token (admin); the answer's ``token`` is the secret, shown once."""
        body = {
            "role": role, "subject": subject, "account": account, "centre": centre,
            "ttl_seconds": ttl_seconds, "resource": resource,
        }  # fmt: skip
        return dict(self._request("POST", "/tokens", json=_compact(body)))

    def tokens(
        self, subject: str | None = None, include_revoked: bool = False
    ) -> list[dict[str, Any]]:
        params = {"subject": subject, "include_revoked": include_revoked}
        return list(self._request("GET", "/tokens", params=params))

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/tokens/{token_id}")


class Client(_Operations):
    """A connection to one broker with one token; use :func:`connect` to make one."""

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        *,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        self._http = http
        self.url = url
        self.retries = retries
        self.backoff = backoff

    # -- plumbing ----------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if idempotency_key is not None:
            extra["headers"] = {IDEMPOTENCY_HEADER: idempotency_key}
        # Only a request with a key is retried: without one, a retry of a POST whose
        # answer was lost could store a second job.
        retries = self.retries if idempotency_key is not None else 0
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                response = self._http.request(
                    method, "/v1" + path, json=json, params=query, **extra
                )
            except httpx.TransportError as exc:
                if last:
                    raise ClientError(f"cannot reach broker at {self.url}: {exc}") from exc
                self._pause(attempt, None)
                continue
            if response.status_code >= 500 and not last:
                self._pause(attempt, response.headers.get("retry-after"))
                continue
            if response.status_code >= 400:
                raise _error_of(response)
            if response.status_code == 204 or not response.content:
                return None
            return response.json()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _pause(self, attempt: int, retry_after: str | None) -> None:
        pause = min(self.backoff * 2**attempt, MAX_BACKOFF) * random.uniform(0.5, 1.0)
        if retry_after is not None and retry_after.isdigit():
            # The server's hint, within reason: a retry must not hang a client for hours.
            pause = max(pause, min(float(retry_after), MAX_BACKOFF))
        time.sleep(pause)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- system and resources ----------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/health"))

    def version(self) -> dict[str, Any]:
        return dict(self._request("GET", "/version"))

    def resources(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/resources"))

    def resource(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/resources/{name}"))

    def pools(self) -> list[dict[str, Any]]:
        """Every pool with its members: state, queue length, open sessions, ETA."""
        return list(self._request("GET", "/pools"))

    def queue(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/resources/{name}/queue"))

    # -- jobs --------------------------------------------------------------------------
    def submit(
        self,
        resource: str,
        circuits: Sequence[QuantumCircuit | str | bytes],
        shots: int,
        priority: int = 0,
        account: str | None = None,
        name: str | None = None,
        *,
        user: str | None = None,
        seed: int | None = None,
        split_circuits: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit circuits (one task, or one per circuit with ``split_circuits``).

        ``idempotency_key`` names this submission (default: a fresh one); a caller that
        repeats a submission after losing its answer passes the key it used before.
        """
        if isinstance(circuits, str | bytes) or not isinstance(circuits, Sequence):
            circuits = [circuits]  # one circuit (text, bytes or a QuantumCircuit)
        body = {
            "resource": resource, "circuits": [circuit_text(c) for c in circuits],
            "shots": shots, "priority": priority, "account": account, "name": name,
            "user": user, "seed": seed, "split_circuits": split_circuits,
        }  # fmt: skip
        return self._submit("/jobs", body, idempotency_key)

    def submit_payloads(
        self,
        resource: str,
        payloads: Sequence[Payload],
        priority: int = 0,
        account: str | None = None,
        name: str | None = None,
        *,
        user: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit ready-made payloads (sampler or estimator tasks), one task each."""
        body = {
            "resource": resource, "payloads": [payload_text(p) for p in payloads],
            "priority": priority, "account": account, "name": name, "user": user,
        }  # fmt: skip
        return self._submit("/jobs", body, idempotency_key)

    def _submit(self, path: str, body: Mapping[str, Any], key: str | None) -> dict[str, Any]:
        key = key or new_idempotency_key()
        return dict(self._request("POST", path, json=_compact(body), idempotency_key=key))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/jobs/{job_id}"))

    def jobs(
        self,
        state: str | None = None,
        resource: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        params = {"state": state, "resource": resource, "limit": limit, "offset": offset}
        return list(self._request("GET", "/jobs", params=params))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/jobs/{job_id}"))

    def results(self, job_id: str) -> list[TaskResult | None]:
        """Results by task index; ``None`` for a task without one (see :meth:`job`)."""
        answer = self._request("GET", f"/jobs/{job_id}/results")
        return [
            None if t["result"] is None else result_from_dict(t["result"]) for t in answer["tasks"]
        ]

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll the job with growing pauses until it is final; returns it.

        Raises :class:`TimeoutError` if it is not final after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while True:
            job = self.job(job_id)
            if job["state"] in FINAL_STATES:
                return job
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id} is still {job['state']} after {timeout} s")
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 1.5, 2.0)

    def task(self, task_id: str, wait: float = 0.0) -> dict[str, Any]:
        """One task; ``wait`` > 0 lets the broker hold the answer until it is final."""
        params = {"wait": wait} if wait > 0 else None
        budget = None if wait <= 0 else wait + (self._http.timeout.read or 30.0)
        return dict(self._request("GET", f"/tasks/{task_id}", params=params, timeout=budget))

    # -- sessions ----------------------------------------------------------------------
    def open_session(
        self,
        resource: str,
        *,
        duration_seconds: float | None = None,
        deadline: float | None = None,
        user: str | None = None,
        account: str | None = None,
        mode: str = "multiplex",
        slurm_job_id: str | None = None,
    ) -> dict[str, Any]:
        """Open a session; the answer's ``token`` is the session token (shown once)."""
        body = {
            "resource": resource, "duration_seconds": duration_seconds, "deadline": deadline,
            "user": user, "account": account, "mode": mode, "slurm_job_id": slurm_job_id,
        }  # fmt: skip
        return dict(self._request("POST", "/sessions", json=_compact(body)))

    def sessions(
        self, include_closed: bool = False, slurm_job_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Sessions this token may see; ``slurm_job_id`` keeps one Slurm job's."""
        params = {"include_closed": include_closed, "slurm_job_id": slurm_job_id}
        return list(self._request("GET", "/sessions", params=params))

    def session(self, session_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/sessions/{session_id}"))

    def close_session(self, session_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/sessions/{session_id}"))

    def submit_session_task(
        self,
        session_id: str,
        circuits: Sequence[QuantumCircuit | str | bytes] | None = None,
        shots: int | None = None,
        *,
        payload: Payload | None = None,
    ) -> str:
        """Queue one task in a session (needs this session's token); returns its id."""
        if payload is not None:
            body: dict[str, Any] = {"payloads": [payload_text(payload)]}
        else:
            body = {"circuits": [circuit_text(c) for c in circuits or ()], "shots": shots}
        answer = self._request("POST", f"/sessions/{session_id}/tasks", json=body)
        return str(answer["task_id"])

    # -- hybrid jobs (programs run next to the QPU) -------------------------------------
    def submit_program(
        self,
        resource: str,
        *,
        source: str | None = None,
        entry_point: str | None = None,
        args: Mapping[str, Any] | None = None,
        account: str | None = None,
        name: str | None = None,
        timeout: float | None = None,
        max_iterations: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a hybrid job: program ``source``, or a server-side ``entry_point``."""
        body = {
            "resource": resource, "source": source, "entry_point": entry_point,
            "args": None if args is None else dict(args), "account": account, "name": name,
            "timeout": timeout, "max_iterations": max_iterations,
        }  # fmt: skip
        return self._submit("/programs", body, idempotency_key)

    def program(self, job_id: str) -> dict[str, Any]:
        """A hybrid job's program section (status, message, return value, timings)."""
        program = self.job(job_id).get("program")
        if not isinstance(program, dict):
            raise ClientError(f"job {job_id} is not a hybrid job (it has no program)")
        return program

    def offers_programs(self) -> bool:
        """Whether this broker runs hybrid programs (and so server-side stacks)."""
        try:
            self._request("GET", "/programs")
        except ClientError as exc:
            if exc.status == 405:  # the route exists; it only takes POST
                return True
            if exc.status == 404:
                return False
            raise
        return True


def _compact(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _error_of(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return ClientError(
            str(body["detail"]),
            status=response.status_code,
            title=body.get("title"),
            type=body.get("type"),
            body=body,
        )
    text = response.text[:500] or response.reason_phrase
    return ClientError(text, status=response.status_code, title=response.reason_phrase)


def connect(
    url: str | None = None,
    token: str | None = None,
    timeout: float = 30,
    *,
    retries: int = DEFAULT_RETRIES,
    check: bool = True,
) -> Client:
    """A client of the broker at ``url`` (``http://host:port``) using ``token``.

    ``retries`` bounds the retries of a submission (see the module doc); 0 sends each
    submission once.

    Unset, ``url`` is ``$QHPC_URL`` and ``token`` is ``$QHPC_TOKEN``, else
    ``$QHPC_SESSION`` (what a Slurm job holding a session gets), so a program
    written for a session needs no arguments. Checks that the broker answers
    (``/v1/health``) so a wrong URL fails here, with a :class:`ClientError`
    naming it, rather than at the first real call; ``check=False`` skips that round
    trip for a caller whose first call tells it as much.
    """
    return open_client(Client, url, token, timeout, retries=retries, check=check)


def open_client(
    kind: type[ClientT],
    url: str | None,
    token: str | None,
    timeout: float,
    *,
    retries: int = DEFAULT_RETRIES,
    check: bool = True,
) -> ClientT:
    """:func:`connect`, making a ``kind`` of :class:`Client` (a subclass that adds
    calls, as ``qhpc.program``'s connection adds ``qpu()``)."""
    url = url or os.environ.get(URL_ENV)
    token = token or os.environ.get(TOKEN_ENV) or os.environ.get(SESSION_ENV)
    if not url:
        raise ClientError(f"no broker URL: pass one or set {URL_ENV}")
    if not token:
        raise ClientError(f"no token: pass one or set {TOKEN_ENV} (or {SESSION_ENV})")
    base = url.rstrip("/").removesuffix("/v1")
    http = httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        timeout=timeout,
    )
    client = kind(http, base, retries=retries)
    if check:
        try:
            client.health()
        except ClientError:
            http.close()
            raise
    return client
