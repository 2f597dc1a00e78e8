"""The hooks' line to the broker: the few REST calls they make, and nothing heavy.

The hooks run once per job on the controller, so their start-up time is part of
every job's start: this talks to the broker with ``httpx`` directly instead of
:mod:`qhpc.client`, which imports Qiskit (~0.7 s) for circuits the hooks never send.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from qhpc.slurm.errors import SlurmError


class BrokerUnreachable(SlurmError):
    """The broker did not answer (connection refused, timeout)."""


class BrokerRefused(SlurmError):
    """The broker answered with an error (its problem detail is the message)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"broker refused ({status}): {detail}")


class BrokerLink:
    """REST calls of the hooks, with the admin (or centre) token."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
        )

    def _call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        try:
            response = self._http.request(method, "/v1" + path, json=json, params=params)
        except httpx.TransportError as exc:
            raise BrokerUnreachable(
                f"cannot reach the qhpc broker at {self.url}: {exc or type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail"))
            except (ValueError, AttributeError):
                detail = response.text[:300] or response.reason_phrase
            raise BrokerRefused(response.status_code, detail)
        return response.json() if response.content else None

    def open_session(
        self,
        resource: str,
        *,
        deadline: float | None = None,
        duration_seconds: float | None = None,
        user: str | None = None,
        account: str | None = None,
        slurm_job_id: str | None = None,
        mode: str = "multiplex",
    ) -> dict[str, Any]:
        """Open a session; the answer's ``token`` is the session token (shown once).

        The hooks give a ``deadline`` and the Slurm job; a centre submitting to
        another site (:mod:`qhpc.slurm.federation`) gives a duration and the user,
        before the job exists. Unset fields are left to the broker's defaults.
        """
        body: dict[str, Any] = {"resource": resource, "mode": mode}
        given = {
            "deadline": deadline, "duration_seconds": duration_seconds, "user": user,
            "account": account or None, "slurm_job_id": slurm_job_id,
        }  # fmt: skip
        body.update({name: value for name, value in given.items() if value is not None})
        return dict(self._call("POST", "/sessions", json=body))

    def sessions(
        self, include_closed: bool = False, slurm_job_id: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"include_closed": include_closed}
        if slurm_job_id is not None:
            params["slurm_job_id"] = slurm_job_id
        return list(self._call("GET", "/sessions", params=params))

    def session(self, session_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/sessions/{session_id}"))

    def sessions_of_job(
        self, slurm_job_id: str, include_closed: bool = False
    ) -> list[dict[str, Any]]:
        """Sessions the broker says belong to this Slurm job (filtered by the broker)."""
        found = self.sessions(include_closed, slurm_job_id=slurm_job_id)
        return [s for s in found if s.get("slurm_job_id") == slurm_job_id]

    def close_session(self, session_id: str) -> bool:
        """Close it; False if it was closed already (the reaper, or an earlier epilog)."""
        try:
            self._call("DELETE", f"/sessions/{session_id}")
        except BrokerRefused as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def usage_by_job(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Usage totals per broker job id (a session's job id is its session id)."""
        params: dict[str, Any] = {"group_by": "job"}
        if since is not None:
            params["since"] = since
        rows = self._call("GET", "/accounting", params=params)["rows"]
        return {str(r["group"]): dict(r) for r in rows}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrokerLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
