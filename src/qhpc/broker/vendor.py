"""Vendor jobs a session submitted through the vendor proxy: who owns them, what they used.

The proxy (``qhpc.proxy``, served under ``/v1/proxy``) forwards a Slurm job's vendor
SDK calls with the broker's credential. This room books what went through, in the
store's usage table, so accounting, fair share and Slurm's AdminComment see it:

- a submission (a 2xx answer to ``POST <jobs>``) books one usage row, task id
  ``vendor:<resource>:<vendor job id>``, on the session's job (its id is the session
  id), for the session's user, account and centre, 0 QPU seconds, 0 shots and 0
  circuits, at the time of the submission;
- a later answer about that job that carries its QPU seconds (IBM: ``usage.
  quantum_seconds`` of ``GET /v1/jobs/{id}/metrics``) raises the row's QPU seconds
  to that figure (never lowers them; the same figure twice books nothing more) and
  charges the rise to the account's fair-share usage and to ``/metrics``.

The row is also the job's owner of record: only the session that submitted a vendor
job may reach ``<jobs>/{id}/…`` through the proxy (:meth:`VendorJobs.owner`), so a
session cannot read another tenant's results although all share one vendor account.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from qhpc.broker.telemetry import Telemetry
from qhpc.broker.usage import UsageTracker
from qhpc.store import Store, UsageRecord

log = logging.getLogger(__name__)

#: the task-id prefix of usage rows booked for vendor jobs
VENDOR_TASK_PREFIX = "vendor:"


def vendor_task_id(resource: str, vendor_job_id: str) -> str:
    """The usage row's key for one vendor job of one resource."""
    return f"{VENDOR_TASK_PREFIX}{resource}:{vendor_job_id}"


class VendorJobs:
    """Books vendor jobs and their QPU seconds (the broker's ``vendor_jobs``)."""

    def __init__(
        self,
        store: Store,
        usage: UsageTracker,
        telemetry: Telemetry,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._usage = usage
        self._telemetry = telemetry
        self._clock = clock

    def submitted(self, session_id: str, vendor_job_id: str) -> UsageRecord:
        """Book a job the session submitted on its resource; ConflictError if that vendor
        job id of that resource is booked already (to this or another session)."""
        session = self._store.get_session(session_id)
        record = UsageRecord(
            task_id=vendor_task_id(session.resource, vendor_job_id), job_id=session_id,
            user=session.user, account=session.account, centre=session.centre,
            resource=session.resource, session_id=session_id, qpu_seconds=0.0, shots=0,
            circuits=0, finished_at=self._clock(),
        )  # fmt: skip
        self._store.book_usage(record)
        log.info(
            "vendor job %s submitted on %s by session %s (account %s)",
            vendor_job_id, session.resource, session_id, session.account,
        )  # fmt: skip
        return record

    def owner(self, resource: str, vendor_job_id: str) -> str | None:
        """The session that submitted this vendor job through the proxy; None if none did."""
        record = self._store.usage_record(vendor_task_id(resource, vendor_job_id))
        return None if record is None else record.session_id

    def used(self, resource: str, vendor_job_id: str, qpu_seconds: float) -> float:
        """The vendor reports ``qpu_seconds`` for the job; books the rise, returns it."""
        raised = self._store.raise_usage(vendor_task_id(resource, vendor_job_id), qpu_seconds)
        if raised is None:
            return 0.0
        record, delta = raised
        if delta > 0:
            now = self._clock()
            self._usage.record(record.account, delta, now)
            self._telemetry.booked([replace(record, qpu_seconds=delta)])
            log.info(
                "vendor job %s on %s used %.3f QPU s (account %s)",
                vendor_job_id, resource, record.qpu_seconds, record.account,
            )  # fmt: skip
        return delta
