"""The scheduling study: workloads, a discrete-event simulator driving the broker's
own policies, the four scheduling modes, metrics, reports and plots.

Public surface; plots need matplotlib (the ``bench`` extra) and import it lazily.
"""

from qhpc.study.metrics import Metrics, jain_index, measure
from qhpc.study.modes import MODE_TITLES, STRATEGIES, Mode, Strategy
from qhpc.study.simulator import SimulationError, SimulationResult, simulate
from qhpc.study.workload import (
    SCENARIOS,
    Dist,
    Scenario,
    ScenarioError,
    Workload,
    load_scenario,
    scenario,
)

__all__ = [
    "MODE_TITLES",
    "SCENARIOS",
    "STRATEGIES",
    "Dist",
    "Metrics",
    "Mode",
    "Scenario",
    "ScenarioError",
    "SimulationError",
    "SimulationResult",
    "Strategy",
    "Workload",
    "jain_index",
    "load_scenario",
    "measure",
    "scenario",
    "simulate",
]
