"""How many sessions may hold a QPU now: admission steered by measured duty cycles.

Slurm admits up to K jobs holding a session per QPU (the QPU's licence count). No
static K suits every mix: sessions that use the QPU a third of their time slow each
other's iterations by about a sixth per extra session, while sessions that mostly
think could share it many at a time (docs/benchmarks.md). :class:`AdmissionController`
answers, from the open sessions' measured duty cycles (:mod:`~qhpc.broker.duty`), how
many sessions may hold the QPU at once without the worst-off one's iterations taking
longer than ``target`` times what they would take alone on it.

The prediction is :class:`LatencyModel`: a session whose fellow sessions' duty cycles
sum to D waits for their tasks about ``linear·D + quadratic·D²`` of its own task's
time — a task arriving finds another session's task running with probability about D
and waits for the rest of it (the linear term), and with more load, for tasks queued
ahead too (the quadratic one). The coefficients were fitted on the study's simulator
running the broker's own policy (``qhpc.study.latency_fit``, shown in
docs/benchmarks.md), and the study runs this very class to admit its sessions.

Like the scheduling policies, the controller is a frozen class with one method and
the time passed in, so the live broker (``Broker.admission``) and the simulator drive
the same object. Sessions not yet measured, and the sessions still to be admitted,
count with a prior: the median of recent sessions, or ``default_prior`` before any.
A prior is a guess — a VQE job may follow a run of light ones — so while
``unmeasured`` sessions (default 1) are held unmeasured no newcomer is admitted:
each new session is let in once the last one has shown what it uses (in the study,
admitting newcomers freely at the prior let three heavy sessions in at once and
missed the target, 1.21x against 1.03x on ``mixed-duty``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from qhpc.broker.scheduler import PolicyError

#: the latency target: a session's iterations at most this many times slower than alone
DEFAULT_TARGET = 1.1
#: the duty cycle assumed for a session nobody has measured yet, before any was measured
DEFAULT_PRIOR = 0.5


def _fraction(value: float | None) -> float | None:
    """A duty cycle clipped to [0, 1]; None for no number (unmeasured)."""
    if value is None or math.isnan(value):
        return None
    return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class LatencyModel:
    """Predicted iteration latency of a session over its latency alone on the QPU.

    ``ratio(D) = 1 + linear·D + quadratic·D²``, D the summed duty cycle of the *other*
    sessions holding the QPU. The defaults are the study's fit (docs/benchmarks.md).
    """

    linear: float = 0.48
    quadratic: float = 0.56

    def __post_init__(self) -> None:
        for name in ("linear", "quadratic"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise PolicyError(f"{name} must be a non-negative number, got {value!r}")

    def ratio(self, others: float) -> float:
        load = max(0.0, others)
        return 1.0 + self.linear * load + self.quadratic * load * load


@dataclass(frozen=True)
class AdmissionView:
    """What the controller looks at for one QPU at time ``now``.

    ``duties``: the open sessions' duty cycles, oldest first (None: not measured yet);
    ``prior``: what an unmeasured or future session is assumed to use (None: the
    controller's ``default_prior``); ``licences``: the most sessions Slurm may ever
    let hold the QPU at once. ``resource`` and ``session_ids`` (the open sessions', in
    the order of ``duties``) are passed through to the answer, to say whose figures
    they are.
    """

    now: float
    licences: int
    duties: Sequence[float | None] = ()
    prior: float | None = None
    resource: str = ""
    session_ids: Sequence[str] = ()


@dataclass(frozen=True)
class Admission:
    """The controller's answer: ``admitted`` sessions may hold the QPU (1 ≤ admitted ≤
    licences); ``predicted_latency_ratio`` is the worst-off session's predicted latency
    over alone with that many (the open ones first, then newcomers at the prior), and
    ``open_latency_ratio`` the same for the sessions open now."""

    at: float
    admitted: int
    open: int
    licences: int
    target: float
    prior: float
    duty_cycles: tuple[float | None, ...]
    predicted_latency_ratio: float
    open_latency_ratio: float
    resource: str = ""
    session_ids: tuple[str, ...] = ()

    @property
    def hold(self) -> int:
        """Licences Slurm should keep back (what the feedback agent reserves)."""
        return self.licences - self.admitted


@dataclass(frozen=True)
class AdmissionController:
    """The largest number of sessions whose worst-off one stays within ``target``
    (see the module docstring); at least one, at most the licence total."""

    target: float = DEFAULT_TARGET
    default_prior: float = DEFAULT_PRIOR
    model: LatencyModel = LatencyModel()
    #: at most this many sessions held unmeasured at once (None: no limit)
    unmeasured: int | None = 1

    def __post_init__(self) -> None:
        if self.unmeasured is not None and self.unmeasured < 1:
            raise PolicyError(f"unmeasured must be at least 1, got {self.unmeasured!r}")
        if not (self.target >= 1 and math.isfinite(self.target)):
            raise PolicyError(f"target must be a latency ratio of at least 1, got {self.target!r}")
        if not 0 <= self.default_prior <= 1:
            raise PolicyError(f"default_prior must be in [0, 1], got {self.default_prior!r}")

    def admit(self, view: AdmissionView) -> Admission:
        if view.licences < 1:
            raise PolicyError(f"licences must be at least 1, got {view.licences!r}")
        if view.session_ids and len(view.session_ids) != len(view.duties):
            raise PolicyError("session_ids must name the sessions of duties, one each")
        prior = _fraction(view.prior)
        prior = self.default_prior if prior is None else prior
        duties = tuple(_fraction(d) for d in view.duties)
        assumed = [prior if d is None else d for d in duties]
        limit = view.licences
        if self.unmeasured is not None:
            # A newcomer's duty is a guess: while that many guesses are held, no more.
            guesses = sum(1 for d in duties if d is None)
            limit = min(limit, max(1, len(duties) + max(0, self.unmeasured - guesses)))
        # Sessions join oldest first, then newcomers at the prior. Adding one never
        # lowers the worst-off session's load (sum minus the smallest), so the first
        # count past the target ends the search: O(licences).
        admitted, worst, total, smallest = 1, 1.0, 0.0, math.inf
        for count in range(1, limit + 1):
            duty = assumed[count - 1] if count <= len(assumed) else prior
            total, smallest = total + duty, min(smallest, duty)
            ratio = self.model.ratio(total - smallest) if count > 1 else 1.0
            if ratio > self.target and count > 1:
                break
            admitted, worst = count, ratio
        return Admission(
            at=view.now, admitted=admitted, open=len(duties), licences=view.licences,
            target=self.target, prior=prior, duty_cycles=duties,
            predicted_latency_ratio=worst, open_latency_ratio=self._worst(assumed),
            resource=view.resource, session_ids=tuple(view.session_ids),
        )  # fmt: skip

    def _worst(self, duties: Sequence[float]) -> float:
        if len(duties) < 2:
            return 1.0
        return self.model.ratio(math.fsum(duties) - min(duties))
