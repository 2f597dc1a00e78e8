"""Each session's duty cycle: the fraction of its time a session keeps the QPU busy.

Slurm admits jobs that hold a session per QPU; how many may hold one at once without
slowing each other's iterations past a target depends on how much of its time each
session spends on the QPU (docs/benchmarks.md: latency ≈ 1 + Σ others' duty / 2).
:class:`DutyCycles` measures that figure for every session, and the admission
controller (:mod:`~qhpc.broker.admission_control`) turns it into a count.

A session's duty cycle is an exponentially weighted ratio, in time, of its tasks' QPU
seconds over its wall time *minus the time its tasks waited in the queue*. The waits
are taken out on purpose: on a crowded QPU a session's tasks wait, its wall time
stretches, and a plain ratio over wall time would fall — the controller would read
contention as a lighter load and admit more sessions the worse latency got. Without
the waits the figure is what the session asks of the QPU (service over service plus
think time), whatever the other sessions do. Weighting in time (``half_life``) lets a
session that changes its rhythm, or stops sending, be seen as it is now.

Pure bookkeeping (times are passed in, O(1) per finished task): the broker calls
:meth:`DutyCycles.finished` when a session task ends (on the hot path: a few float
operations) and :meth:`DutyCycles.forget` when the session closes; the simulator of
the study does the same. The measurement starts at the session's first task, so the
time a program takes to start up does not count as thinking. A session is *measured*
once ``min_tasks`` of its tasks have finished; until then the controller uses a
prior: the median duty cycle of recent sessions (:meth:`DutyCycles.prior`).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from qhpc.broker.scheduler import PolicyError

#: how fast old behaviour is forgotten: a minute of a session's life weighs half as much
#: as now (a VQE iteration of a few seconds: some twenty iterations in the window)
DUTY_HALF_LIFE = 60.0
#: tasks a session must have finished before its duty cycle counts as measured
MIN_TASKS = 3
#: how many recently closed sessions the prior for unmeasured ones is the median of
PRIOR_HISTORY = 20


@dataclass(frozen=True)
class SessionDuty:
    """One session's measured duty cycle at a given time (None: not measured yet)."""

    session_id: str
    duty: float | None
    tasks: int

    @property
    def measured(self) -> bool:
        return self.duty is not None


class _Meter:
    """Decayed sums of one session, as of ``at``."""

    __slots__ = ("at", "busy", "covered", "group", "tasks", "wall")

    def __init__(self, at: float, group: str) -> None:
        self.at = at
        #: whose prior the session informs (the broker's: its resource)
        self.group = group
        #: decayed QPU seconds
        self.busy = 0.0
        #: decayed wall seconds, waits in the queue taken out
        self.wall = 0.0
        #: waits before this time are taken out already, or overlapped the session's own
        #: running task (a pipelining client: it was using the QPU, not waiting for it)
        self.covered = at
        self.tasks = 0


class DutyCycles:
    """Learns each session's duty cycle from its finished tasks (see the module docstring).

    Not thread-safe on its own: the broker calls it under its lock.
    """

    def __init__(
        self,
        half_life: float = DUTY_HALF_LIFE,
        min_tasks: int = MIN_TASKS,
        history: int = PRIOR_HISTORY,
    ) -> None:
        if not (half_life > 0 and math.isfinite(half_life)):
            raise PolicyError(f"half_life must be a positive number of seconds, got {half_life!r}")
        if min_tasks < 1:
            raise PolicyError(f"min_tasks must be at least 1, got {min_tasks!r}")
        if history < 1:
            raise PolicyError(f"history must be at least 1, got {history!r}")
        self.half_life = float(half_life)
        self.min_tasks = min_tasks
        self._rate = math.log(2) / self.half_life
        self._meters: dict[str, _Meter] = {}
        self._history_size = history
        #: per group, the last measured duty cycles of closed sessions, newest last
        self._history: dict[str, deque[float]] = {}

    # -- events ------------------------------------------------------------------------
    def finished(
        self,
        session_id: str,
        *,
        submitted_at: float,
        started_at: float,
        finished_at: float,
        qpu_seconds: float,
        group: str = "",
    ) -> None:
        """A task of ``session_id`` submitted, started and finished at these times, having
        used ``qpu_seconds`` of the device. Times that are not numbers are ignored (a
        task with no start never used the QPU). ``group`` (the session's resource, say)
        is the prior the session informs, fixed by its first task."""
        if not (math.isfinite(submitted_at) and math.isfinite(finished_at)):
            return
        meter = self._meters.get(session_id)
        if meter is None:
            meter = self._meters[session_id] = _Meter(submitted_at, group)
        now = max(meter.at, finished_at)
        self._advance(meter, now)
        meter.busy += qpu_seconds if qpu_seconds > 0 else 0.0
        if math.isfinite(started_at):
            # Take out the part of its wait not already taken out nor overlapping the
            # session's own earlier task; its weight is as old as the wait is.
            begin, end = max(submitted_at, meter.covered), min(started_at, now)
            if end > begin:
                rate = self._rate
                weight = (math.exp(-rate * (now - end)) - math.exp(-rate * (now - begin))) / rate
                meter.wall = max(0.0, meter.wall - weight)
        meter.covered = max(meter.covered, finished_at)
        meter.tasks += 1

    def forget(self, session_id: str, now: float) -> None:
        """The session closed: its last measured duty cycle joins the prior's history."""
        meter = self._meters.pop(session_id, None)
        if meter is not None:
            duty = self._duty(meter, now)
            if duty is not None:
                history = self._history.get(meter.group)
                if history is None:
                    history = self._history[meter.group] = deque(maxlen=self._history_size)
                history.append(duty)

    # -- reads -------------------------------------------------------------------------
    def duty(self, session_id: str, now: float) -> SessionDuty:
        """The session's duty cycle at ``now`` (unmeasured if it has too few tasks)."""
        meter = self._meters.get(session_id)
        if meter is None:
            return SessionDuty(session_id, None, 0)
        return SessionDuty(session_id, self._duty(meter, now), meter.tasks)

    def snapshot(self, session_ids: Iterable[str], now: float) -> list[SessionDuty]:
        """The duty cycles of ``session_ids``, in the order given."""
        return [self.duty(session_id, now) for session_id in session_ids]

    def prior(self, now: float, group: str = "") -> float | None:
        """The median duty cycle of ``group``'s recent sessions — those closed lately and
        the measured ones still open — for sessions not measured yet (None: no session
        of the group measured)."""
        known = list(self._history.get(group, ()))
        for meter in self._meters.values():
            duty = self._duty(meter, now) if meter.group == group else None
            if duty is not None:
                known.append(duty)
        return statistics.median(known) if known else None

    # -- arithmetic --------------------------------------------------------------------
    def _advance(self, meter: _Meter, now: float) -> None:
        # Both sums decay alike; every second that passes adds one (weight 1 now) to the
        # wall time, a wait taken out later subtracts its own weight again.
        if now > meter.at:
            factor = math.exp(-self._rate * (now - meter.at))
            meter.busy *= factor
            meter.wall = meter.wall * factor + (1 - factor) / self._rate
            meter.at = now

    def _duty(self, meter: _Meter, now: float) -> float | None:
        if meter.tasks < self.min_tasks:
            return None
        busy, wall = meter.busy, meter.wall
        if now > meter.at:
            factor = math.exp(-self._rate * (now - meter.at))
            busy, wall = busy * factor, wall * factor + (1 - factor) / self._rate
        if wall <= 0:
            return 1.0  # all of its time so far was on the QPU (or waiting for it)
        return min(1.0, busy / wall)
