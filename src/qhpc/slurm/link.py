"""The hooks' line to the broker: the few REST calls they make, through :mod:`qhpc.client`.

The hooks run once per job on the controller, so their start-up time is part of
every job's start: the REST client loads Qiskit only where a circuit is handled,
which the hooks never do, and the link skips the client's health probe (its first
call reports an unreachable broker just as well). The broker's answers become the
hooks' own errors: :class:`BrokerUnreachable` (no answer) and :class:`BrokerRefused`
(an error answer, with its status and detail), which decide whether a job is held,
requeued or refused.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from qhpc.client import ClientError, connect
from qhpc.slurm.errors import SlurmError

T = TypeVar("T")


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
        # No retries: a hook that waits on a broker delays the job's start; Slurm
        # retries the hook (requeue, a later epilog) on its own schedule.
        self._client = connect(url, token, timeout, retries=0, check=False)
        self.url = self._client.url

    def _call(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except ClientError as exc:
            if exc.status is None:  # the client's transport error is the cause
                cause = exc.__cause__
                reason = (str(cause) or type(cause).__name__) if cause else exc.detail
                raise BrokerUnreachable(
                    f"cannot reach the qhpc broker at {self.url}: {reason}"
                ) from None
            raise BrokerRefused(exc.status, exc.detail) from None

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
        return self._call(
            lambda: self._client.open_session(
                resource, deadline=deadline, duration_seconds=duration_seconds, user=user,
                account=account or None, mode=mode, slurm_job_id=slurm_job_id,
            )
        )  # fmt: skip

    def sessions(
        self, include_closed: bool = False, slurm_job_id: str | None = None
    ) -> list[dict[str, Any]]:
        return self._call(lambda: self._client.sessions(include_closed, slurm_job_id))

    def session(self, session_id: str) -> dict[str, Any]:
        return self._call(lambda: self._client.session(session_id))

    def sessions_of_job(
        self, slurm_job_id: str, include_closed: bool = False
    ) -> list[dict[str, Any]]:
        """Sessions the broker says belong to this Slurm job (filtered by the broker)."""
        found = self.sessions(include_closed, slurm_job_id=slurm_job_id)
        return [s for s in found if s.get("slurm_job_id") == slurm_job_id]

    def resource_type(self, name: str) -> str:
        """The resource's type (``aer``, ``ibm-quantum-system`` …), as QRMI's contract wants."""
        return str(self._call(lambda: self._client.resource(name)).get("type", "unknown"))

    def tag_session(self, session_id: str, slurm_job_id: str) -> dict[str, Any]:
        return self._call(lambda: self._client.tag_session(session_id, slurm_job_id))

    def close_session(self, session_id: str) -> bool:
        """Close it; False if it was closed already (the reaper, or an earlier epilog)."""
        try:
            self._call(lambda: self._client.close_session(session_id))
        except BrokerRefused as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def usage_by_job(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Usage totals per broker job id (a session's job id is its session id)."""
        rows = self._call(lambda: self._client.accounting(group_by="job", since=since))
        return {str(r["group"]): dict(r) for r in rows}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BrokerLink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
