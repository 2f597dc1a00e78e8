"""The broker's measurements for Prometheus: what has to be counted as it happens.

Operators run Prometheus and Grafana beside Slurm; ``/metrics`` (the web room)
shows them one :class:`Telemetry`, which the broker creates and hands to its rooms.
It holds its own ``CollectorRegistry``: tests run many brokers in one process, and
prometheus_client's global registry would mix them (and refuse a second broker's
metrics by name).

Two kinds of figures, kept apart on purpose:

* *events* — what cannot be reconstructed later, so it is counted when it happens
  (this module): how long tasks waited and ran, how they ended, usage as it is
  booked, session steps, REST requests, the Slurm hooks' calls;
* *state* — what the broker knows at any moment (queues, resource states, open
  sessions, the journal's backlog, the runtime pool), read only when Prometheus
  scrapes (:mod:`~qhpc.broker.gauges`), so the hot path pays nothing for it.

The session hot path pays for three histogram observations and one counter
increment per step (~2.5 µs in all, each under prometheus_client's own lock, no
lock of ours): the label children are bound once per resource when the broker
starts, so a step looks them up in small dicts and allocates nothing.

Every label value comes from a bounded set: resource names from the operator's
config, task states, kinds and channels from the fixed tuples below, accounts and
centres capped at :data:`MAX_ACCOUNT_SERIES` (a user token without an account may
name one; past the cap they are summed under :data:`OTHER`). No job, task or session
id, and nothing else a tenant chooses freely, is ever a label.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.registry import Collector

from qhpc.broker.scheduler import QueuedTask
from qhpc.states import FINAL_STATES, TaskStatus
from qhpc.store import UsageRecord

#: the two kinds of task: a session's (priority, write-behind) and a batch job's
SESSION: Final = "session"
BATCH: Final = "batch"
KINDS: Final = (SESSION, BATCH)
#: how a session task reached the broker: the ZeroMQ fast path, a co-located
#: program's direct channel, or one REST request (and in-process callers of
#: ``Broker.submit_session_task``)
FASTPATH: Final = "fastpath"
DIRECT: Final = "direct"
REST: Final = "rest"
CHANNELS: Final = (FASTPATH, DIRECT, REST)
#: the Slurm hooks that reach the broker (their names in ``qhpc.slurm.hooks``), and
#: how their calls ended: done, refused by the broker (a 4xx), or failed (a 5xx)
PROLOG_SLURMCTLD: Final = "prolog-slurmctld"
EPILOG_SLURMCTLD: Final = "epilog-slurmctld"
SLURM_HOOKS: Final = (PROLOG_SLURMCTLD, EPILOG_SLURMCTLD)
HOOK_OK: Final = "ok"
HOOK_REFUSED: Final = "refused"
HOOK_ERROR: Final = "error"
HOOK_RESULTS: Final = (HOOK_OK, HOOK_REFUSED, HOOK_ERROR)
#: at most this many (account, centre) pairs get series of their own
MAX_ACCOUNT_SERIES: Final = 1000
#: the label value of what is summed past a cap, and of an unknown route or method;
#: parentheses keep it apart from every account name the API accepts
OTHER: Final = "(other)"
#: HTTP methods that get a label value of their own; any other is OTHER
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Bucket bounds (seconds), chosen for what each histogram sees: a step of a hybrid
# loop takes 0.1–10 ms on a simulator and up to seconds on a busy QPU; a batch task
# may wait hours.
STEP_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
WAIT_BUCKETS: Final = (
    0.0001, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0,
    3600.0, 4 * 3600.0, 12 * 3600.0, 24 * 3600.0,
)  # fmt: skip
RUN_BUCKETS: Final = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip
HTTP_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class BusyClock:
    """Seconds a resource has had a task of ours running, for ``rate()`` to turn into
    its busy fraction. The executor starts and stops it where ``running`` changes
    (under the broker's lock); a scrape reads it mid-task too, so a long task shows
    as busy while it runs, not in one lump when it ends. Real time (monotonic), not
    the broker's clock: a fraction of the wall clock is what it measures."""

    __slots__ = ("_since", "_total")

    def __init__(self) -> None:
        self._since: float | None = None
        self._total = 0.0

    def start(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def stop(self) -> None:
        if self._since is not None:
            self._total += time.monotonic() - self._since
            self._since = None

    def seconds(self) -> float:
        since = self._since
        return self._total + (0.0 if since is None else time.monotonic() - since)


class ResourceInstruments:
    """The label children of one resource, bound once (see the module docstring)."""

    def __init__(self, telemetry: Telemetry, resource: str) -> None:
        self.wait = {k: telemetry.task_wait.labels(resource, k) for k in KINDS}
        self.run = {k: telemetry.task_run.labels(resource, k) for k in KINDS}
        self.finished = {
            k: {s: telemetry.tasks_finished.labels(resource, k, str(s)) for s in FINAL_STATES}
            for k in KINDS
        }
        self.steps = {c: telemetry.session_steps.labels(resource, c) for c in CHANNELS}

    def ran(self, kind: str, waited: float, took: float, state: TaskStatus) -> None:
        """A task ran on the resource: ``waited`` since admission, ``took`` to run."""
        self.wait[kind].observe(max(0.0, waited))
        self.run[kind].observe(max(0.0, took))
        counter = self.finished[kind].get(state)
        if counter is not None:  # a final state (the runner never reports another)
            counter.inc()

    def never_ran(self, task: QueuedTask) -> None:
        """A queued task was taken out of the queue: it ends cancelled, unrun."""
        kind = SESSION if task.session_id is not None else BATCH
        self.finished[kind][TaskStatus.CANCELLED].inc()

    def step(self, channel: str, seconds: float) -> None:
        """A session task ended, ``seconds`` after its admission (the broker's clock)."""
        self.steps[channel].observe(max(0.0, seconds))


class Telemetry:
    """One broker's instruments and the registry ``/metrics`` renders."""

    def __init__(self, resources: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.task_wait = Histogram(
            "qhpc_task_wait_seconds",
            "Time from a task's admission to its start on the resource.",
            ["resource", "kind"], buckets=WAIT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.task_run = Histogram(
            "qhpc_task_run_seconds",
            "Wall time a task ran on the resource (all its shot chunks).",
            ["resource", "kind"], buckets=RUN_BUCKETS, registry=registry,
        )  # fmt: skip
        self.tasks_finished = Counter(
            "qhpc_tasks_finished",
            "Tasks that reached a final state (cancelled ones too, run or not).",
            ["resource", "kind", "state"], registry=registry,
        )  # fmt: skip
        self.session_steps = Histogram(
            "qhpc_session_step_seconds",
            "Time from a session task's admission to its end, by the channel it came on.",
            ["resource", "channel"], buckets=STEP_BUCKETS, registry=registry,
        )  # fmt: skip
        self.usage_shots = Counter(
            "qhpc_usage_shots",
            "Shots booked to accounts (usage records written to the store).",
            ["account", "centre"], registry=registry,
        )  # fmt: skip
        self.usage_qpu_seconds = Counter(
            "qhpc_usage_qpu_seconds",
            "QPU seconds booked to accounts (usage records written to the store).",
            ["account", "centre"], registry=registry,
        )  # fmt: skip
        self.http_requests = Histogram(
            "qhpc_http_request_duration_seconds",
            "REST requests by route template, method and status, and how long they took.",
            ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=registry,
        )  # fmt: skip
        self.slurm_hooks = Counter(
            "qhpc_slurm_hook_calls",
            "Calls of the Slurm hooks at the broker (session opened by PrologSlurmctld, "
            "closed by EpilogSlurmctld), by result.",
            ["hook", "result"], registry=registry,
        )  # fmt: skip
        for hook in SLURM_HOOKS:
            for result in HOOK_RESULTS:
                self.slurm_hooks.labels(hook, result)  # every series exists from the start
        self._resources = {name: ResourceInstruments(self, name) for name in resources}
        self._usage: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        self._usage_lock = threading.Lock()

    def resource(self, name: str) -> ResourceInstruments:
        return self._resources[name]

    def watch(self, collector: Collector) -> None:
        """Render ``collector`` (state read at scrape time) with the instruments."""
        self.registry.register(collector)

    def booked(self, records: Iterable[UsageRecord]) -> None:
        """Usage the store has just booked (exactly once per task, as the store does).

        Summed per (account, centre) first: a journal commit books up to a thousand
        session tasks, mostly of one account, and this runs on the journal's thread,
        which shares the interpreter with the hot path.
        """
        sums: dict[tuple[str, str | None], list[float]] = {}
        for record in records:
            total = sums.get((record.account, record.centre))
            if total is None:
                sums[record.account, record.centre] = [record.shots, record.qpu_seconds]
            else:
                total[0] += record.shots
                total[1] += record.qpu_seconds
        for (account, centre), (shot_count, seconds) in sums.items():
            shots, qpu_seconds = self._usage_of(account, centre or "")
            shots.inc(shot_count)
            qpu_seconds.inc(seconds)

    def _usage_of(self, account: str, centre: str) -> tuple[Counter, Counter]:
        key = (account, centre)
        with self._usage_lock:
            children = self._usage.get(key)
            if children is None:
                if len(self._usage) >= MAX_ACCOUNT_SERIES:
                    key = (OTHER, OTHER)
                    children = self._usage.get(key)
                if children is None:
                    children = (self.usage_shots.labels(*key), self.usage_qpu_seconds.labels(*key))
                    self._usage[key] = children
            return children

    def slurm_hook(self, hook: str, result: str) -> None:
        """One call of a Slurm hook ended with ``result`` (one of HOOK_RESULTS)."""
        if hook not in SLURM_HOOKS or result not in HOOK_RESULTS:
            raise ValueError(f"no Slurm hook outcome {hook!r}, {result!r}")
        self.slurm_hooks.labels(hook, result).inc()

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """A REST request ended; ``route`` is its template (never the raw path)."""
        method = method if method in HTTP_METHODS else OTHER
        self.http_requests.labels(route, method, str(status)).observe(max(0.0, seconds))
