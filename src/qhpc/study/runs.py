"""One scenario simulated under every strategy: what the report and the plots read.

Its own module, below both :mod:`qhpc.study.report` (which makes it) and
:mod:`qhpc.study.plots` (which draws it), so neither imports the other's type.
"""

from __future__ import annotations

from dataclasses import dataclass

from qhpc.study.metrics import Metrics
from qhpc.study.simulator import SimulationResult
from qhpc.study.workload import Scenario


@dataclass
class ScenarioRun:
    scenario: Scenario
    scale: float
    results: dict[str, SimulationResult]
    metrics: dict[str, Metrics]
    #: multiplex (fair share) with the session policy before session-aware backfill
    greedy: Metrics | None = None
    #: multiplex (fair share) with session-aware backfill, batch tasks run whole
    whole: Metrics | None = None
