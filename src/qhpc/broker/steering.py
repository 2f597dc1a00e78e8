"""The broker's side of admission: each QPU's open sessions and their measured duty
cycles, put to the admission controller (``Broker.admission``).

The measurement is :mod:`~qhpc.broker.duty` (fed by :class:`~qhpc.broker.sessions.Sessions`
as session tasks end), the decision :mod:`~qhpc.broker.admission_control` — the same
controller the study's simulator runs. This module only gathers what the controller
reads, under the broker's lock, and says which settings it runs with. What Slurm
does with the answer (hold ``licences − admitted`` licences) is the feedback agent's
(``qhpc.slurm.feedback``); the broker itself refuses no session.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from qhpc.broker.admission_control import (
    DEFAULT_PRIOR,
    DEFAULT_TARGET,
    Admission,
    AdmissionController,
    AdmissionView,
)
from qhpc.broker.duty import DUTY_HALF_LIFE, MIN_TASKS, PRIOR_HISTORY, DutyCycles
from qhpc.broker.executor import Shared
from qhpc.broker.scheduler import PolicyError, SessionMode
from qhpc.broker.sessions import Sessions
from qhpc.resources import ResourceRegistry

#: how many sessions may hold a QPU at most, unless a request names Slurm's own count
DEFAULT_LICENCES = 4
#: the most licences a request may name (a bound on the controller's work)
MAX_LICENCES = 10_000


@dataclass(frozen=True)
class AdmissionSettings:
    """How the broker measures sessions and answers ``Broker.admission`` (docs/broker.md).

    ``target``: the latency ratio a session may reach (its iterations over alone on the
    QPU); ``prior``: the duty cycle assumed for a session before any was measured on its
    QPU (after that, the median of recent ones); ``licences``: Slurm's licence total per
    QPU, unless a request says (the feedback agent passes Slurm's count);
    ``unmeasured``: how many sessions may be held before they are measured (the
    controller's); ``half_life``, ``min_tasks``, ``history``: the measurement's (duty.py).
    """

    target: float = DEFAULT_TARGET
    prior: float = DEFAULT_PRIOR
    licences: int = DEFAULT_LICENCES
    unmeasured: int | None = 1
    half_life: float = DUTY_HALF_LIFE
    min_tasks: int = MIN_TASKS
    history: int = PRIOR_HISTORY

    def __post_init__(self) -> None:
        self.controller()  # target and prior checked there
        check_licences(self.licences)

    def controller(self) -> AdmissionController:
        return AdmissionController(
            target=self.target, default_prior=self.prior, unmeasured=self.unmeasured
        )

    def duty_cycles(self) -> DutyCycles:
        return DutyCycles(self.half_life, self.min_tasks, self.history)


def check_licences(licences: int) -> int:
    if isinstance(licences, bool) or not 1 <= licences <= MAX_LICENCES:
        raise PolicyError(f"licences must be a whole number from 1 to {MAX_LICENCES}")
    return licences


class Steering:
    """Answers ``Broker.admission`` for each resource (takes the lock itself)."""

    def __init__(
        self,
        settings: AdmissionSettings,
        sessions: Sessions,
        shared: Shared,
        resources: ResourceRegistry,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.controller = settings.controller()
        self.sessions = sessions
        self.shared = shared
        self.resources = resources
        self.clock = clock

    def admission(self, resource: str, licences: int | None = None) -> Admission:
        """How many sessions may hold ``resource`` now, from its open sessions' duty
        cycles (oldest first); ``licences``: Slurm's licence total (default: the
        settings'). An exclusive session counts as using the whole QPU."""
        self.resources.spec(resource)  # unknown name → UnknownResourceError
        total = check_licences(self.settings.licences if licences is None else licences)
        now = self.clock()
        duties = self.sessions.duties
        with self.shared.cond:
            open_sessions = sorted(
                (s for s in self.sessions.open.values() if s.resource == resource),
                key=lambda s: (s.opened_at, s.session_id),
            )
            measured = [
                1.0 if s.mode == SessionMode.EXCLUSIVE else duties.duty(s.session_id, now).duty
                for s in open_sessions
            ]
            prior = duties.prior(now, resource)
        return self.controller.admit(
            AdmissionView(
                now=now, licences=total, duties=measured,
                prior=None if prior is None or math.isnan(prior) else prior,
                resource=resource, session_ids=[s.session_id for s in open_sessions],
            )
        )  # fmt: skip
