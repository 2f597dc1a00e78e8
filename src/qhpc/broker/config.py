"""How a broker is set up: policy, limits, runtime pool, journal (one frozen record).

Every number here has a documented default; ``qhpc serve`` options and tests replace
single fields with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from qhpc.broker.chunking import DEFAULT_CHUNK_SECONDS
from qhpc.broker.idempotency import IDEMPOTENCY_TTL
from qhpc.broker.journal import COMMIT_INTERVAL
from qhpc.broker.output import DEFAULT_OUTPUT_LIMIT
from qhpc.broker.retention import Retention
from qhpc.broker.steering import AdmissionSettings
from qhpc.resources import DEFAULT_LIMITS, MAX_PAYLOAD_BYTES, DecodeLimits
from qhpc.runtime import Limits
from qhpc.store import Store


@dataclass(frozen=True)
class BrokerConfig:
    policy: str = "fairshare"
    starvation_limit: float = 60.0
    #: batch tasks start only if they end before a session's next task is expected
    session_backfill: bool = True
    #: a batch task longer than this (estimated device seconds) runs as shot chunks,
    #: and waiting session tasks may run between them; None: tasks run whole
    chunk_seconds: float | None = DEFAULT_CHUNK_SECONDS
    fairshare_half_life: float = 7 * 24 * 3600.0
    max_tasks_per_job: int = 10_000
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    #: budgets of decoding tenants' circuits (docs/security.md); the decoding happens
    #: in worker processes bounded by them (qhpc.resources.decoding)
    decode_limits: DecodeLimits = DEFAULT_LIMITS
    #: longest one task may run on a resource unless its config says otherwise
    #: (``max_task_seconds``); past it the task is stopped and fails. None: no limit
    max_task_seconds: float | None = 600.0
    #: warm spare processes of the runtime pool of hybrid programs (created on first use)
    runtime_pool_size: int = 2
    #: largest program source a hybrid job may carry
    max_program_bytes: int = 1 << 20
    program_default_timeout: float = 3600.0
    program_max_timeout: float = 7 * 24 * 3600.0
    program_limits: Limits = field(default_factory=Limits)
    #: bytes kept of each of a program's stdout and stderr, truncation marker included
    #: (written to the store while the program runs; see output.py)
    program_output_limit: int = DEFAULT_OUTPUT_LIMIT
    #: server-side programs offered besides the registered ones: name → "module:function"
    entry_points: dict[str, str] = field(default_factory=dict)
    #: where the journal logs finished session tasks before their results are released
    #: (see journal.py); default: ``<db file>.journal`` next to an SQLite store, a
    #: per-store directory in the user data directory for PostgreSQL, none in memory
    journal_dir: str | None = None
    #: how long the journal gathers finished session tasks into one commit (seconds)
    journal_commit_interval: float = COMMIT_INTERVAL
    #: run the journal's commits on the broker's own interpreter instead of a committer
    #: process (qhpc.store.committer); a store only this process can open (in memory)
    #: always commits in process
    commit_in_process: bool = False
    #: how long an Idempotency-Key names its submission (see idempotency.py)
    idempotency_ttl: float = IDEMPOTENCY_TTL
    #: how long jobs' results, output and sources are kept (see retention.py); the
    #: default keeps them for ever, ``qhpc serve`` 30 days
    retention: Retention = field(default_factory=Retention)
    #: how sessions' duty cycles are measured and how many sessions each QPU admits
    #: (``Broker.admission``, steering.py): latency target, prior, licence total
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)


def journal_dir(store: Store, configured: str | None) -> Path | None:
    """Where the journal's log lives (see :attr:`BrokerConfig.journal_dir`)."""
    if configured is not None:
        return Path(configured)
    url = store.url
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :] + ".journal")
    if store.backend == "sqlite":
        return None  # in memory: nothing survives a crash anyway
    from platformdirs import user_data_path

    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return user_data_path("qhpc") / "journal" / digest
