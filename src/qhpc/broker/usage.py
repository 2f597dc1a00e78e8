"""Decayed QPU usage per account, the ``U`` of fair share.

Pure bookkeeping: times are passed in. Usage decays exponentially with a
half-life, so old consumption weighs less. Each account keeps one value and
the time it refers to, so recording and reading are O(1). Safe to share
between threads: executors record while the scheduler takes snapshots.
"""

from __future__ import annotations

import math
import threading

from qhpc.broker.scheduler import PolicyError

WEEK = 7 * 24 * 3600.0


class UsageTracker:
    """Exponentially decayed QPU seconds per account."""

    def __init__(self, half_life: float = WEEK) -> None:
        if not (half_life > 0 and math.isfinite(half_life)):
            raise PolicyError(f"half_life must be a positive number of seconds, got {half_life!r}")
        self.half_life = float(half_life)
        self._accounts: dict[str, tuple[float, float]] = {}  # account -> (value, as of)
        self._lock = threading.Lock()

    def _decay(self, seconds: float) -> float:
        return math.exp2(-seconds / self.half_life)

    def record(self, account: str, qpu_seconds: float, at: float) -> None:
        """Charge ``qpu_seconds`` to ``account`` at time ``at``."""
        if not qpu_seconds >= 0:
            raise ValueError(f"qpu_seconds must be non-negative, got {qpu_seconds!r}")
        with self._lock:
            value, since = self._accounts.get(account, (0.0, at))
            if at >= since:
                self._accounts[account] = (value * self._decay(at - since) + qpu_seconds, at)
            else:
                # Records may arrive out of order (tasks end on several resources); decay
                # is linear, so an older charge is folded in already decayed to the later
                # time.
                self._accounts[account] = (value + qpu_seconds * self._decay(since - at), since)

    def usage(self, account: str, now: float) -> float:
        """The account's decayed usage at ``now`` (0 for an unknown account)."""
        value, since = self._accounts.get(account, (0.0, now))
        return value * self._decay(now - since)

    def snapshot(self, now: float) -> dict[str, float]:
        """Decayed usage of every account seen, as a ``SchedulingView.usage`` mapping."""
        with self._lock:
            accounts = dict(self._accounts)
        return {
            account: value * self._decay(now - since)
            for account, (value, since) in sorted(accounts.items())
        }

    def accounts(self) -> list[str]:
        with self._lock:
            return sorted(self._accounts)
