"""Operator drains: a resource taken out of service, with a reason and an end.

A drained resource shows QDMI's ``maintenance`` whatever its device says, starts no
new task, and keeps its queue: batch tasks and session tasks wait, and their ETAs
count the rest of the window (or are unknown while a drain has no end). Work that
runs when the drain begins finishes, unless the operator drains ``now``: then it is
stopped and queued again (nothing an operator does loses accepted work).

Drains live in the store (an operator's decision outlives a broker restart); this
room keeps the current ones in memory, where every executor decision reads them.
A drain with an end lapses by itself: :meth:`Drains.lapse` (called by the broker's
reaper each second) deletes the ones past their end.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from qhpc.broker.errors import BrokerError
from qhpc.store import DrainRecord, Store

log = logging.getLogger(__name__)

#: longest reason an operator may give (it is shown on every status and queue view)
MAX_REASON = 500
#: longest drain with an end (ten years: beyond it, say "until resumed")
MAX_DRAIN_SECONDS = 10 * 365 * 86400.0


class InvalidDrain(BrokerError):
    """A drain that cannot be: an end in the past, an empty reason (HTTP 422)."""


class NotDrained(BrokerError):
    """Resuming a resource that is not drained (HTTP 409)."""


@dataclass(frozen=True)
class DrainRequest:
    """What an operator asks: ``until`` is a UNIX time, None for "until resumed"."""

    reason: str
    until: float | None = None
    #: stop running work (it is queued again) instead of letting it finish
    now: bool = False

    def check(self, at: float) -> None:
        reason = self.reason.strip()
        if not reason:
            raise InvalidDrain("a drain needs a reason (it is shown to every user)")
        if len(reason) > MAX_REASON:
            raise InvalidDrain(f"a drain's reason is at most {MAX_REASON} characters")
        if not reason.isprintable():
            raise InvalidDrain("a drain's reason must be printable text on one line")
        if self.until is None:
            return
        if not math.isfinite(self.until):
            raise InvalidDrain("a drain's end must be a finite time")
        if self.until <= at:
            raise InvalidDrain(
                f"the drain would end {at - self.until:.0f} s in the past; "
                "give an end in the future, or none to drain until resumed"
            )
        if self.until - at > MAX_DRAIN_SECONDS:
            raise InvalidDrain("a drain with an end lasts at most ten years; give no end instead")


class Drains:
    """The drains in force, by resource (written under its own lock, read without)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        # Replaced whole on each change, so a reader never sees it half-changed.
        self._current: dict[str, DrainRecord] = {}

    def load(self) -> None:
        with self._lock:
            self._current = {d.resource: d for d in self._store.list_drains()}

    def active(self, resource: str, now: float) -> DrainRecord | None:
        """The drain of ``resource`` in force at ``now``, if any."""
        drain = self._current.get(resource)
        if drain is None or (drain.until is not None and drain.until <= now):
            return None
        return drain

    def all(self) -> list[DrainRecord]:
        return list(self._current.values())

    def begin(self, resource: str, request: DrainRequest, by: str, now: float) -> DrainRecord:
        request.check(now)
        drain = DrainRecord(resource, request.reason.strip(), now, request.until, by)
        with self._lock:
            self._store.set_drain(drain)
            self._current = {**self._current, resource: drain}
        log.warning(
            "resource %s drained by %s until %s: %s",
            resource, by, "resumed" if drain.until is None else f"{drain.until:.0f}", drain.reason,
        )  # fmt: skip
        return drain

    def end(self, resource: str, by: str) -> DrainRecord:
        with self._lock:
            if resource not in self._current:
                raise NotDrained(f"resource {resource} is not drained")
            ended = self._store.clear_drain(resource)
            self._current = {k: v for k, v in self._current.items() if k != resource}
        log.warning("resource %s resumed by %s", resource, by)
        assert ended is not None
        return ended

    def lapse(self, now: float) -> list[str]:
        """Delete the drains past their end; the resources they held."""
        with self._lock:
            over = [d for d in self._current.values() if d.until is not None and d.until <= now]
            for drain in over:
                self._store.clear_drain(drain.resource)
            if over:
                self._current = {
                    k: v for k, v in self._current.items() if k not in {d.resource for d in over}
                }
        for drain in over:
            log.warning("resource %s: drain ended (%s)", drain.resource, drain.reason)
        return [d.resource for d in over]
