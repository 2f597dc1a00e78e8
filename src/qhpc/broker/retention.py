"""Retention: what jobs carried is kept for a while, then purged; accounting stays.

A centre keeps its users' results, program output and program sources (task
payloads included) for a set number of days after a job ended, and their accounting
for ever (see ``qhpc.store``'s ``_maintenance.py`` for what is which).
:func:`purge_expired` is the one way to purge, used by the broker's schedule
(:class:`Purger`, a thread of its own, every ``interval`` seconds) and by ``qhpc
store purge``. It works in the store's bounded batches and pauses between them, so a
large backlog never holds SQLite's write lock for long and never delays a
submission by more than one batch; it runs off the hot path, on its own thread.

``keep_days=None`` keeps everything for ever (the default of a ``BrokerConfig``);
``qhpc serve`` keeps 30 days unless told otherwise (``--keep-results-days``, 0 for
ever), see docs/store.md.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from qhpc.store import PurgeReport, Store

log = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True)
class Retention:
    """How long jobs' results, output and sources are kept, and how purging is paced."""

    #: days after a job ended that what it carried is kept; None: for ever
    keep_days: float | None = None
    #: seconds between two purges of the broker's schedule
    interval: float = 3600.0
    #: seconds from the broker's start to its first purge (start-up is not slowed)
    first_delay: float = 60.0
    #: one batch (one transaction): at most this many jobs, and about this many tasks
    max_jobs: int = 100
    max_tasks: int = 2000
    #: seconds between two batches, in which other writers get the store
    pause: float = 0.05

    def __post_init__(self) -> None:
        if self.keep_days is not None and not (0 < self.keep_days < math.inf):
            raise ValueError(
                f"results are kept a positive, finite number of days (or None: for ever), "
                f"not {self.keep_days}"
            )
        for name in ("interval", "first_delay", "pause"):
            value = getattr(self, name)
            if not (0 <= value < math.inf) or (name == "interval" and value == 0):
                raise ValueError(f"retention {name} must be a finite number of seconds > 0")
        if self.max_jobs < 1 or self.max_tasks < 1:
            raise ValueError("a purge batch holds at least one job and one task")

    def cutoff(self, now: float) -> float | None:
        """Jobs that ended before this are due; None when everything is kept."""
        return None if self.keep_days is None else now - self.keep_days * DAY


def purge_expired(
    store: Store,
    retention: Retention,
    now: float,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> PurgeReport:
    """Purges every job that is due at ``now``, batch by batch; the totals.

    ``dry_run`` only counts. ``stop`` ends the loop between two batches (what was
    purged stays purged; the rest waits for the next run).
    """
    cutoff = retention.cutoff(now)
    if cutoff is None:
        return PurgeReport()
    if dry_run:
        return store.purgeable(cutoff)
    total = PurgeReport()
    pause = stop if stop is not None else threading.Event()
    while True:
        batch = store.purge_jobs(
            cutoff, now, max_jobs=retention.max_jobs, max_tasks=retention.max_tasks
        )
        total += batch
        if batch.jobs == 0 or pause.wait(retention.pause):
            return total


class Purger:
    """The broker's schedule: :func:`purge_expired` every ``interval`` seconds until
    ``stopped`` is set; a purge that fails is logged and tried again next time."""

    def __init__(
        self,
        store: Store,
        retention: Retention,
        clock: Callable[[], float],
        stopped: threading.Event,
    ) -> None:
        self.store = store
        self.retention = retention
        self.clock = clock
        self.stopped = stopped
        #: what the last purge did, and when it ended (for operators and metrics)
        self.last: PurgeReport | None = None
        self.last_at: float | None = None

    def run(self) -> None:
        log.info(
            "retention: results, output and sources of jobs are kept %g days after they "
            "end, then purged (checked every %g s); accounting is kept",
            self.retention.keep_days, self.retention.interval,
        )  # fmt: skip
        delay = min(self.retention.first_delay, self.retention.interval)
        while not self.stopped.wait(delay):
            delay = self.retention.interval
            self.run_once()

    def run_once(self) -> PurgeReport | None:
        started = time.monotonic()
        try:
            report = purge_expired(self.store, self.retention, self.clock(), stop=self.stopped)
        except Exception:
            log.exception("retention: the purge failed; next try in %g s", self.retention.interval)
            return None
        self.last, self.last_at = report, self.clock()
        if report.jobs:
            log.info(
                "retention: purged %d job(s), %d task(s), %d bytes in %.1f s",
                report.jobs, report.tasks, report.bytes, time.monotonic() - started,
            )  # fmt: skip
        return report
