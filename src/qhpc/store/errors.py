"""Typed errors of the store.

Callers catch :class:`NotFoundError` and :class:`ConflictError` to turn them into
404/409-style answers, :class:`PurgedError` into 410 Gone; anything else the database
says arrives as :class:`StoreError`.
Invalid arguments (an unknown state name, a task of another job) raise ``ValueError``:
they are programming mistakes, not conditions of the stored data.
"""

from __future__ import annotations

import time

from qhpc.errors import QhpcError


class StoreError(QhpcError):
    """The store could not do what was asked (bad URL, unreachable database, ...)."""


class NotFoundError(StoreError):
    """No row has the given id."""


class ConflictError(StoreError):
    """The request contradicts stored data: duplicate id, task already final, ..."""


class PurgedError(StoreError):
    """The job's results, output and sources were purged under the retention policy.

    Not a :class:`NotFoundError`: the job and its accounting are still there, only
    what was kept for a limited time is gone, and a caller should be told so.
    """

    def __init__(self, job_id: str, purged_at: float) -> None:
        self.job_id = job_id
        self.purged_at = purged_at
        day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(purged_at))
        super().__init__(
            f"the results, output and sources of job {job_id} were purged on {day}: the "
            "broker keeps them for a limited time (its accounting is kept)"
        )
