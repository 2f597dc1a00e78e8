"""Idempotent submission: one ``Idempotency-Key`` of one principal makes at most one job.

A client that sent a submission and lost the answer (timeout, dropped connection,
a 5xx from a proxy) cannot know whether the job was stored. Sent again with the
same key and the same body, the submission answers with the job the first one
made instead of storing a second; with the same key and another body it is refused
(:class:`IdempotencyKeyReused`), since a key names one logical submission.

Keys are scoped to the principal (:func:`scope_of`): the same key from two tenants
names two unrelated submissions, and neither can learn anything about the other's.
The key is stored with its job in one transaction (``Store.create_job`` /
``create_program``); two concurrent first uses race on the key's primary key, the
loser's job is rolled back and it answers with the winner's job (:meth:`Keys.store_once`).

Keys live ``BrokerConfig.idempotency_ttl`` seconds (24 h by default: far longer than
any client's retries). Expiry is lazy: an expired key is ignored and replaced on
reuse, and expired rows are purged at most every :data:`PURGE_INTERVAL` seconds, by
the submission that notices.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from qhpc.errors import QhpcError
from qhpc.security import Principal
from qhpc.store import ConflictError, IdempotencyRecord, JobRecord, Store

log = logging.getLogger(__name__)

#: how long a key names its submission (seconds)
IDEMPOTENCY_TTL = 24 * 3600.0
#: expired keys are purged at most this often (seconds)
PURGE_INTERVAL = 3600.0


class IdempotencyKeyReused(QhpcError):
    """An ``Idempotency-Key`` sent again with a different request (HTTP 409)."""


def scope_of(principal: Principal) -> str:
    """Whose keys these are: the principal's role, centre and subject.

    Not the token id, so a retry after a token rotation still finds its key; JSON,
    so that no choice of names makes two principals' scopes equal.
    """
    return json.dumps([str(principal.role), principal.centre, principal.subject])


@dataclass(frozen=True)
class Idempotency:
    """The key a principal sent with one submission, and a hash of that submission."""

    scope: str
    key: str
    #: hex digest of the canonical request (kind of submission and body)
    request_hash: str


class Keys:
    """The broker's idempotency keys: replay, claim with a new job, purge expired ones."""

    def __init__(self, store: Store, clock: Callable[[], float], ttl: float) -> None:
        if not ttl > 0:
            raise ValueError(f"idempotency_ttl must be positive, got {ttl}")
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._lock = threading.Lock()
        self._last_purge = float("-inf")

    def prior(self, idempotency: Idempotency | None) -> JobRecord | None:
        """The job an earlier submission with this key made, or None if there was none.

        IdempotencyKeyReused if that submission had another body; the message names
        neither body.
        """
        if idempotency is None:
            return None
        found = self._store.find_idempotency(idempotency.scope, idempotency.key, self._clock())
        if found is None:
            return None
        if found.request_hash != idempotency.request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new submission"
            )
        return self._store.get_job(found.job_id)

    def store_once(
        self,
        idempotency: Idempotency | None,
        job_id: str,
        now: float,
        create: Callable[[IdempotencyRecord | None], None],
    ) -> JobRecord | None:
        """Runs ``create`` (which stores job ``job_id`` with the given key record).

        Returns None when the job was stored, or the job of a concurrent submission
        with the same key that committed first (this one's job is then not stored).
        """
        if idempotency is None:
            create(None)
            return None
        self._purge_now_and_then(now)
        record = IdempotencyRecord(
            scope=idempotency.scope, key=idempotency.key,
            request_hash=idempotency.request_hash, job_id=job_id, created_at=now,
            expires_at=now + self._ttl,
        )  # fmt: skip
        try:
            create(record)
        except ConflictError:
            winner = self.prior(idempotency)
            if winner is None:
                raise  # not the key: a conflict of the job itself
            return winner
        return None

    def _purge_now_and_then(self, now: float) -> None:
        with self._lock:
            if now - self._last_purge < PURGE_INTERVAL:
                return
            self._last_purge = now
        removed = self._store.purge_idempotency(now)
        if removed:
            log.info("purged %d expired idempotency key(s)", removed)
