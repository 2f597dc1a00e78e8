"""The study's duty-cycle admission mode: the simulator admits sessions by the broker's
own AdmissionController; the report's admission figures and the latency-model fit."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from qhpc.broker import AdmissionController, LatencyModel
from qhpc.study import SCENARIOS, Mode, Strategy, measure, simulate
from qhpc.study.admission import admission_summary, admitted_over_time, idle_without_batch
from qhpc.study.latency_fit import MAX_LOAD, MIN_ITERATIONS, fit, latency_fit
from qhpc.study.report import QUICK_SCALE, licence_sweep, run_scenario, run_study
from qhpc.study.simulator import SimulationResult
from qhpc.study.tables import admission_table, fit_table, goals_table, limit_table

ADMISSION = Strategy(Mode.ADMISSION, fairshare=True)


def quick(name: str) -> tuple[object, SimulationResult]:
    scenario = SCENARIOS[name]
    workload = scenario.materialise(scale=QUICK_SCALE)
    return workload, simulate(scenario, ADMISSION, workload, chunk_seconds=0.1)


def hybrid_grants(name: str, result: SimulationResult) -> list[tuple[float, float]]:
    """(granted, released) of every hybrid job: Slurm's start latency before it runs."""
    latency = SCENARIOS[name].environment.job_start_latency
    return [(j.started_at - latency, j.finished_at) for j in result.jobs if j.kind == "hybrid"]


def answer_at(result: SimulationResult, when: float) -> int:
    """The controller's answer in force at ``when`` (the last change at or before it)."""
    answers = [admitted for at, admitted, _ in result.admissions if at <= when]
    assert answers, f"no admission answer before {when}"
    return answers[-1]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_no_grant_goes_past_the_controllers_answer(name: str) -> None:
    _, result = quick(name)
    grants = hybrid_grants(name, result)
    for granted, _ in grants:
        held = sum(1 for g, released in grants if g <= granted < released)
        assert held <= answer_at(result, granted), (name, granted)
    assert all(1 <= a <= SCENARIOS[name].environment.licences for _, a, _ in result.admissions)


def test_heavy_sessions_run_one_at_a_time_and_light_ones_share() -> None:
    _, heavy = quick("vqe-heavy")  # duty ~34 %: a second session would cost ~1.2x
    grants = hybrid_grants("vqe-heavy", heavy)
    most = max(sum(1 for g, r in grants if g <= at < r) for at, _ in grants)
    assert most == 1
    scenario = SCENARIOS["mixed-duty"]  # light SQD sessions first: several fit
    light = simulate(scenario, ADMISSION, scenario.materialise(), chunk_seconds=0.1)
    assert max(a for _, a, _ in light.admissions) > 1


def test_the_admission_mode_is_deterministic() -> None:
    scenario = SCENARIOS["mixed-duty"]
    workload = scenario.materialise(scale=0.5)
    one = simulate(scenario, ADMISSION, workload, chunk_seconds=0.1)
    two = simulate(scenario, ADMISSION, workload, chunk_seconds=0.1)
    assert one.admissions == two.admissions
    assert measure(one) == measure(two)


def test_a_controller_that_admits_everyone_is_multiplex() -> None:
    """With no latency bound (and no wait for measurements) the controller's answer is
    the licence total, and the run is the multiplex mode's, task for task."""
    scenario = SCENARIOS["mixed-duty"]
    workload = scenario.materialise(scale=QUICK_SCALE)
    anyone = AdmissionController(target=1e9, unmeasured=None)
    admitted = simulate(scenario, ADMISSION, workload, chunk_seconds=0.1, admission=anyone)
    multiplex = simulate(scenario, Strategy(Mode.MULTIPLEX, True), workload, chunk_seconds=0.1)
    assert {a for _, a, _ in admitted.admissions} == {scenario.environment.licences}
    assert [(t.task_id, t.started_at) for t in admitted.tasks] == [
        (t.task_id, t.started_at) for t in multiplex.tasks
    ]


def test_a_tighter_target_never_admits_more() -> None:
    scenario = SCENARIOS["mixed-duty"]
    workload = scenario.materialise(scale=0.5)
    runs = {
        target: simulate(scenario, ADMISSION, workload, chunk_seconds=0.1,
                         admission=AdmissionController(target=target))
        for target in (1.02, 1.1, 1.5)
    }  # fmt: skip
    peaks = [max(a for _, a, _ in runs[t].admissions) for t in (1.02, 1.1, 1.5)]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]


def test_admitted_over_time_is_weighted_by_how_long_each_answer_held() -> None:
    _, result = quick("mixed-duty")
    stats = admitted_over_time(result)
    counts = [a for _, a, _ in result.admissions]
    assert stats["min"] == min(counts) and stats["max"] == max(counts)
    assert stats["min"] <= stats["mean"] <= stats["max"]
    fake = replace(result, admissions=[(result.start, 1, 0), (result.end - 1.0, 5, 1)])
    span = result.end - result.start
    assert admitted_over_time(fake)["mean"] == pytest.approx((1 * (span - 1) + 5) / span)
    assert math.isnan(admitted_over_time(replace(result, admissions=[]))["mean"])


def test_idle_without_batch_is_a_share_and_all_of_it_without_batch_work() -> None:
    _, result = quick("two-centres")
    share = idle_without_batch(result)
    assert 0.0 <= share <= 1.0
    hybrid_only = replace(result, tasks=[t for t in result.tasks if t.session])
    alone = idle_without_batch(hybrid_only)
    assert alone == 1.0 or math.isnan(alone)


def test_the_report_admission_figures_are_the_simulators_and_reproducible() -> None:
    scenario = SCENARIOS["mixed-duty"]
    run = run_scenario(scenario, quick=True)
    sweep = licence_sweep(run)
    summary = admission_summary(run, sweep)
    assert summary is not None
    again = admission_summary(run_scenario(scenario, quick=True), sweep)
    assert again == summary
    m, base = run.metrics[ADMISSION.key], run.metrics["exclusive+fairshare"]
    assert summary["latency_ratio"] == m.iteration_latency_mean / base.iteration_latency_mean
    assert summary["makespan_ratio"] == m.makespan / base.makespan
    assert summary["utilisation_waiting"] == m.utilisation_waiting
    assert set(summary["variants"]) == {"newcomers_free", "utilisation_first"}
    assert 1 <= summary["sessions_at_target"] <= scenario.environment.licences
    assert summary["session_share_at_target"] == pytest.approx(
        summary["sessions_at_target"] * summary["median_duty"]
    )
    best = summary["best_static"]
    assert best["latency_ratio"] <= summary["target"]


def test_the_quick_study_reports_admission_goals_tables_and_the_fit() -> None:
    report = run_study(quick=True, plots=False)
    assert set(report["admission"]) == set(SCENARIOS)
    modes = {g["mode"] for g in report["goals"]}
    assert {"multiplex", "admission", "admission, utilisation-first backfill"} <= modes
    for table in (admission_table(report), limit_table(report), fit_table(report)):
        assert table.count("\n") >= 3
    for name in SCENARIOS:
        assert name in admission_table(report) and name in goals_table(report)
    fitted = report["latency_fit"]
    assert fitted["linear"] >= 0 and fitted["quadratic"] >= 0 and fitted["runs"] > 0
    assert fitted["bins"][0]["load"] < 0.05 and abs(fitted["bins"][0]["ratio"] - 1) < 0.05


def test_the_fit_recovers_known_coefficients_and_ignores_what_it_should() -> None:
    truth = LatencyModel(linear=0.5, quadratic=0.7)
    bins = [
        {"load": d, "iterations": 100.0, "ratio": truth.ratio(d)} for d in (0.05, 0.2, 0.4, 0.7)
    ]
    outliers = [
        {"load": MAX_LOAD + 0.5, "iterations": 1e6, "ratio": 50.0},  # past the range fitted
        {"load": 0.3, "iterations": MIN_ITERATIONS - 1, "ratio": 9.0},  # too few to count
    ]
    got = fit(bins + outliers)
    assert got.linear == pytest.approx(0.5) and got.quadratic == pytest.approx(0.7)
    # data that bends down: the quadratic term would be negative, a line is fitted
    concave = [{"load": d, "iterations": 100.0, "ratio": 1 + d - 0.5 * d * d} for d in (0.2, 0.6)]
    line = fit(concave)
    assert line.quadratic == 0.0 and line.linear > 0
    # nothing to fit: the controller's model
    assert fit([]) == LatencyModel()


def test_the_controllers_model_is_the_simulators_fit() -> None:
    """The defaults the broker runs with are the study's fit (docs/benchmarks.md): on the
    full fitting set the controller's model is as close to the simulated bins as the
    fit itself, give or take a hundredth."""
    report = latency_fit(SCENARIOS.values())
    assert report["controller_rms"] <= report["rms"] + 0.01
    assert report["linear"] == pytest.approx(LatencyModel().linear, abs=0.05)
    assert report["quadratic"] == pytest.approx(LatencyModel().quadratic, abs=0.05)
