"""The broker's state for Prometheus, read when it scrapes, never on the hot path.

Queues, resource states, open sessions, the journal's backlog and the runtime pool
are all things the broker knows at any moment, so instead of updating a gauge on
every change (on the session hot path, under the broker's lock) they are read once
per scrape by :class:`BrokerCollector`, which ``Telemetry.watch`` renders with the
instruments of :mod:`~qhpc.broker.telemetry`. A scrape holds the broker's lock for
one pass over the queues (microseconds for queues of thousands), and asks each
resource for its state outside the lock: a remote device may take a while to
answer, and one that does not answer shows no state rather than failing the scrape.

A resource's state is the broker's view (``Broker.resource_status``, handed in as
``status``): a drained resource shows ``maintenance`` whatever its device says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from qhpc.broker.executor import ResourceExecutor, Shared
from qhpc.broker.journal import Journal
from qhpc.broker.sessions import Sessions
from qhpc.broker.telemetry import BATCH, SESSION
from qhpc.resources import ResourceState, ResourceStatus
from qhpc.runtime import PoolStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceFigures:
    name: str
    #: None: the device did not say (its status call failed)
    state: ResourceState | None
    queued_batch: int
    queued_session: int
    busy_seconds: float
    open_sessions: int


@dataclass(frozen=True)
class BrokerFigures:
    resources: tuple[ResourceFigures, ...]
    journal_tasks: int
    journal_seconds: float
    pool_spares: int
    programs_running: int
    #: None: the store could not say (it is unreachable)
    store_bytes: int | None = None


class BrokerCollector(Collector):
    """Reads :class:`BrokerFigures` at each scrape and renders them as metrics."""

    def __init__(
        self,
        *,
        shared: Shared,
        executors: Mapping[str, ResourceExecutor],
        sessions: Sessions,
        journal: Journal,
        status: Callable[[str], ResourceStatus],
        pool_stats: Callable[[], PoolStats | None],
        clock: Callable[[], float],
        store_size: Callable[[], int] | None = None,
    ) -> None:
        self.store_size = store_size
        self.shared = shared
        self.executors = executors
        self.sessions = sessions
        self.journal = journal
        self.status = status
        self.pool_stats = pool_stats
        self.clock = clock

    def figures(self) -> BrokerFigures:
        states = {name: self._state(name) for name in self.executors}
        rows = []
        with self.shared.cond:
            open_by_resource: dict[str, int] = {}
            for session in self.sessions.open.values():
                open_by_resource[session.resource] = open_by_resource.get(session.resource, 0) + 1
            for name, executor in self.executors.items():
                in_session = sum(1 for t in executor.queue.values() if t.session_id is not None)
                rows.append(
                    ResourceFigures(
                        name=name, state=states[name],
                        queued_batch=len(executor.queue) - in_session, queued_session=in_session,
                        busy_seconds=executor.busy.seconds(),
                        open_sessions=open_by_resource.get(name, 0),
                    )
                )  # fmt: skip
        tasks, seconds = self.journal.lag(self.clock())
        pool = self.pool_stats()
        return BrokerFigures(
            resources=tuple(rows), journal_tasks=tasks, journal_seconds=seconds,
            pool_spares=pool.spares if pool else 0, programs_running=pool.running if pool else 0,
            store_bytes=self._store_bytes(),
        )  # fmt: skip

    def _store_bytes(self) -> int | None:
        if self.store_size is None:
            return None
        try:
            return self.store_size()
        except Exception as error:  # the database away must not fail the scrape
            log.warning("metrics: the store's size is unknown: %s", error)
            return None

    def _state(self, name: str) -> ResourceState | None:
        try:
            return self.status(name).state
        except Exception as error:  # an unreachable device must not fail the scrape
            log.warning("metrics: the state of resource %s is unknown: %s", name, error)
            return None

    def describe(self) -> Iterator[Metric]:
        # Names only: the registry checks them at registration, without a first read.
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        families = _families()
        state, queued, busy, sessions, journal_tasks, journal_seconds, spares, running = families
        for row in figures.resources:
            for candidate in ResourceState:
                state.add_metric([row.name, str(candidate)], float(row.state is candidate))
            queued.add_metric([row.name, BATCH], row.queued_batch)
            queued.add_metric([row.name, SESSION], row.queued_session)
            busy.add_metric([row.name], row.busy_seconds)
            sessions.add_metric([row.name], row.open_sessions)
        journal_tasks.add_metric([], figures.journal_tasks)
        journal_seconds.add_metric([], figures.journal_seconds)
        spares.add_metric([], figures.pool_spares)
        running.add_metric([], figures.programs_running)
        yield from families
        if figures.store_bytes is not None:
            size = GaugeMetricFamily(
                "qhpc_store_size_bytes",
                "Bytes the store takes (SQLite file and WAL; PostgreSQL: the store's tables "
                "and indexes); grows until old results are purged (docs/store.md).",
            )
            size.add_metric([], figures.store_bytes)
            yield size


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily,
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
]:  # fmt: skip
    """Empty families of the metrics above, in the order ``collect`` fills them."""
    return (
        GaugeMetricFamily(
            "qhpc_resource_state",
            "1 for the state a resource is in (QDMI's words), 0 for the others; all 0 "
            "while its device does not answer.",
            labels=["resource", "state"],
        ),
        GaugeMetricFamily(
            "qhpc_queued_tasks",
            "Tasks waiting in a resource's queue, by kind (session or batch).",
            labels=["resource", "kind"],
        ),
        CounterMetricFamily(
            "qhpc_resource_busy_seconds",
            "Seconds a resource has had a task of this broker running; rate() is its "
            "busy fraction.",
            labels=["resource"],
        ),
        GaugeMetricFamily(
            "qhpc_open_sessions", "Sessions open on a resource.", labels=["resource"]
        ),
        GaugeMetricFamily(
            "qhpc_journal_uncommitted_tasks",
            "Session tasks that have finished but are not committed to the store yet.",
        ),
        GaugeMetricFamily(
            "qhpc_journal_lag_seconds",
            "How long ago the oldest uncommitted session task finished (0 when none).",
        ),
        GaugeMetricFamily(
            "qhpc_runtime_pool_spares",
            "Warm spare processes waiting for hybrid programs (0 before the first program).",
        ),
        GaugeMetricFamily(
            "qhpc_runtime_programs_running", "Hybrid programs running in the runtime pool."
        ),
    )
