"""The study's account of duty-cycle admission, per scenario.

What the ``admission`` mode did (how many sessions the controller let hold the QPU,
over time), how it compares with exclusive reservation and with the best static
licence count chosen in hindsight from the sweep, two variants (``VARIANTS``:
newcomers admitted freely at the prior, and the session policy's *utilisation
first* backfill instead of the default *balanced*), and the *physical limit*: how
many sessions of the scenario's median duty cycle fit the latency target at all,
what share of the QPU they can keep busy, and the makespan that leaves — a goal
beyond these figures cannot be met by any admission rule, only by batch work
filling the rest."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import Any

from qhpc.broker import DEFAULT_CHUNK_SECONDS, AdmissionController, AdmissionView
from qhpc.study.latency_fit import duty_cycle
from qhpc.study.metrics import Metrics, measure, merge, subtract, total
from qhpc.study.modes import Mode, Strategy
from qhpc.study.runs import ScenarioRun
from qhpc.study.simulator import SimulationResult, simulate

ADMISSION = Strategy(Mode.ADMISSION, fairshare=True)
EXCLUSIVE = Strategy(Mode.EXCLUSIVE, fairshare=True)
#: the admission mode's variants the report compares: key → (label, controller
#: settings, session-policy options)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "newcomers_free": ("newcomers admitted at the prior, unmeasured", {"unmeasured": None}, {}),
    "utilisation_first": (
        "utilisation-first backfill (margin 0, patience 0)", {},
        {"arrival_margin": 0.0, "arrival_patience": 0.0},
    ),
}  # fmt: skip


def admitted_over_time(result: SimulationResult) -> dict[str, float]:
    """The controller's answer over the run: smallest, largest, time-weighted mean."""
    changes = result.admissions
    if not changes:
        return {"min": math.nan, "max": math.nan, "mean": math.nan}
    end = result.end
    weighted = total = 0.0
    for (at, admitted, _), following in zip(changes, [*changes[1:], (end, 0, 0)], strict=True):
        span = max(0.0, min(following[0], end) - at)
        weighted, total = weighted + admitted * span, total + span
    counts = [admitted for _, admitted, _ in changes]
    mean = weighted / total if total > 0 else float(counts[-1])
    return {"min": float(min(counts)), "max": float(max(counts)), "mean": mean}


def idle_without_batch(result: SimulationResult) -> float:
    """The share of the QPU's idle time while work waited in which no batch task was
    ready: idle time only more sessions could have filled (1.0: all of it)."""
    busy = merge((t.started_at, t.finished_at) for t in result.tasks)
    work = merge((t.ready_at, t.finished_at) for t in result.tasks)
    calibrating = merge((w.start, w.end) for w in result.calibrations)
    idle = subtract(subtract(work, busy), calibrating)
    batch = merge((t.ready_at, t.finished_at) for t in result.tasks if not t.session)
    waited = total(idle)
    return total(subtract(idle, batch)) / waited if waited > 0 else math.nan


def ratios(m: Metrics, base: Metrics) -> dict[str, float]:
    return {
        "latency_ratio": m.iteration_latency_mean / base.iteration_latency_mean,
        "makespan_ratio": m.makespan / base.makespan,
        "utilisation_waiting": m.utilisation_waiting,
        "utilisation": m.utilisation,
    }


def physical_limit(run: ScenarioRun, controller: AdmissionController) -> dict[str, float]:
    """Sessions of the scenario's median duty cycle d: how many fit the target (n), the
    QPU share n·d they keep busy, and a floor under the makespan over exclusive
    reservation's that no admission rule gets under: the hybrid jobs run n at a time as
    fast as alone (their run times in the exclusive run, summed, over n), and the QPU
    has all the work's device time to spend."""
    scenario = run.scenario
    workload = scenario.materialise(scale=run.scale)
    round_trip = scenario.environment.round_trip
    duties = [duty_cycle(job, scenario.qpu, round_trip) for job in workload.hybrid]
    median = statistics.median(duties) if duties else math.nan
    licences = scenario.environment.licences
    steady = replace(controller, unmeasured=None)
    fit = steady.admit(AdmissionView(0.0, licences, prior=median)).admitted if duties else 0
    exclusive = run.results.get(EXCLUSIVE.key) or simulate(scenario, EXCLUSIVE, workload)
    alone = math.fsum(j.finished_at - j.started_at for j in exclusive.jobs if j.kind == "hybrid")
    device = math.fsum(t.duration for t in exclusive.tasks)
    makespan = exclusive.end - exclusive.start
    floor = max(alone / fit, device) if fit else math.nan
    return {
        "median_duty": median,
        "sessions_at_target": float(fit),
        "session_share_at_target": fit * median if duties else math.nan,
        "makespan_floor_ratio": floor / makespan if makespan > 0 else math.nan,
    }


def admission_summary(run: ScenarioRun, sweep: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report's ``admission`` section of one scenario (None: the mode did not run)."""
    result, m = run.results.get(ADMISSION.key), run.metrics.get(ADMISSION.key)
    base = run.metrics.get(EXCLUSIVE.key)
    if result is None or m is None or base is None:
        return None
    scenario = run.scenario
    controller = AdmissionController()
    workload = scenario.materialise(scale=run.scale)
    variants: dict[str, dict[str, Any]] = {}
    for key, (label, settings, options) in VARIANTS.items():
        variant = measure(
            simulate(
                scenario, ADMISSION, workload, chunk_seconds=DEFAULT_CHUNK_SECONDS,
                admission=replace(controller, **settings), **options,
            )
        )  # fmt: skip
        variants[key] = {"label": label, **ratios(variant, base)}
    summary: dict[str, Any] = {
        "licences": scenario.environment.licences,
        "target": controller.target,
        **ratios(m, base),
        "admitted": admitted_over_time(result),
        "idle_without_batch": idle_without_batch(result),
        "variants": variants,
        **physical_limit(run, controller),
    }
    rows = (sweep or {}).get("rows") or []
    meeting = [r for r in rows if r["latency_ratio"] <= controller.target]
    if meeting:  # the static count one would have chosen in hindsight: the fastest that meets it
        best = min(meeting, key=lambda r: (r["makespan_ratio"], -r["licences"]))
        summary["best_static"] = {
            "licences": best["licences"],
            **{k: best[k] for k in ("latency_ratio", "makespan_ratio", "utilisation_waiting")},
        }
    return summary
