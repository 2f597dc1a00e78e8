"""The scheduling study: workload data, simulator invariants, metrics, the bench CLI."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import run_cli
from qhpc.broker import Policy, QueuedTask, SchedulingView
from qhpc.resources import CalibrationSchedule
from qhpc.study import (
    SCENARIOS,
    STRATEGIES,
    Dist,
    Mode,
    Scenario,
    ScenarioError,
    Strategy,
    jain_index,
    load_scenario,
    measure,
    simulate,
    simulator,
)
from qhpc.study.metrics import merge, subtract
from qhpc.study.simulator import SimulationResult, TaskRun
from qhpc.study.tables import BEGIN, END
from qhpc.study.workload import Arrivals, BatchClass, HybridClass, QpuModel

ROOT = Path(__file__).resolve().parents[2]


def small() -> Scenario:
    """Two hybrid jobs and some batch work from two accounts, with calibration."""
    return Scenario(
        name="small",
        description="test",
        hybrid=(
            HybridClass(
                "h",
                "chem",
                Arrivals(2, 0.0, Dist.of("const", value=3.0)),
                iterations=Dist.of("randint", low=4, high=8),
                circuits=Dist.of("randint", low=1, high=3),
                shots=Dist.of("const", value=500),
                think=Dist.of("lognormal", median=0.5, sigma=0.3),
            ),
        ),
        batch=(
            BatchClass(
                "b",
                "phys",
                Arrivals(3, 1.0, Dist.of("exponential", mean=2.0)),
                circuits=Dist.of("randint", low=3, high=6),
                shots=Dist.of("const", value=1000),
                circuits_per_task=2,
            ),
        ),
        shares={"chem": 1.0, "phys": 1.0},
        qpu=QpuModel(calibration=CalibrationSchedule(every=5.0, duration=1.0)),
    )


@pytest.fixture(scope="module")
def runs() -> dict[str, SimulationResult]:
    scenario = small()
    return {s.key: simulate(scenario, s) for s in STRATEGIES}


def by_start(tasks: list[TaskRun]) -> list[TaskRun]:
    return sorted(tasks, key=lambda t: (t.started_at, t.task_id))


# -- simulator invariants ----------------------------------------------------------------


def test_every_task_runs_exactly_once_and_all_circuits_are_run(
    runs: dict[str, SimulationResult],
) -> None:
    workload = small().materialise()
    expected = {j.job_id: sum(i.circuits for i in j.iterations) for j in workload.hybrid}
    expected |= {j.job_id: j.circuits for j in workload.batch}
    for key, result in runs.items():
        ids = [t.task_id for t in result.tasks]
        assert len(ids) == len(set(ids)), key
        circuits: dict[str, int] = {}
        for task in result.tasks:
            assert math.isfinite(task.started_at) and math.isfinite(task.finished_at), key
            assert task.finished_at - task.started_at == pytest.approx(task.duration)
            assert task.ready_at <= task.submitted_at <= task.started_at
            circuits[task.job_id] = circuits.get(task.job_id, 0) + task.circuits
        assert circuits == expected, key
        assert all(math.isfinite(j.finished_at) for j in result.jobs)


def test_no_two_tasks_overlap_on_the_qpu(runs: dict[str, SimulationResult]) -> None:
    for key, result in runs.items():
        ordered = by_start(result.tasks)
        for before, after in itertools.pairwise(ordered):
            assert after.started_at >= before.finished_at - 1e-9, key


def test_utilisation_is_at_most_one(runs: dict[str, SimulationResult]) -> None:
    for key, result in runs.items():
        m = measure(result)
        assert 0 < m.utilisation <= 1 + 1e-9, key
        assert 0 < m.utilisation_waiting <= 1 + 1e-9, key
        assert m.idle_while_waiting >= 0


def test_exclusive_reservation_never_interleaves_jobs(runs: dict[str, SimulationResult]) -> None:
    for key in ("exclusive", "exclusive+fairshare"):
        order = [t.job_id for t in by_start(runs[key].tasks)]
        segments = [job for i, job in enumerate(order) if i == 0 or order[i - 1] != job]
        assert len(segments) == len(set(segments)), f"{key}: a job's tasks were interleaved"


def test_low_level_mode_interleaves_jobs(runs: dict[str, SimulationResult]) -> None:
    # The converse, so the check above can fail: per-circuit FIFO does interleave.
    order = [t.job_id for t in by_start(runs["fifo-circuit"].tasks)]
    segments = [job for i, job in enumerate(order) if i == 0 or order[i - 1] != job]
    assert len(segments) > len(set(segments))


def test_multiplex_runs_session_tasks_before_batch(runs: dict[str, SimulationResult]) -> None:
    limit = small().environment.starvation_limit
    for key in ("multiplex", "multiplex+fairshare"):
        tasks = runs[key].tasks
        sessions = [t for t in tasks if t.session]
        batch = [t for t in tasks if not t.session]
        assert sessions and batch
        for b in batch:
            if b.started_at - b.submitted_at > limit:
                continue  # starvation relief may let it go first
            waiting = [s for s in sessions if s.submitted_at < b.started_at < s.started_at]
            assert not waiting, f"{key}: batch {b.task_id} started while session tasks waited"


def test_multiplex_iterations_are_faster_than_low_level(runs: dict[str, SimulationResult]) -> None:
    multiplex = measure(runs["multiplex+fairshare"])
    low_level = measure(runs["fifo-circuit+fairshare"])
    exclusive = measure(runs["exclusive+fairshare"])
    assert multiplex.iteration_latency_mean < low_level.iteration_latency_mean
    assert multiplex.makespan < exclusive.makespan


def test_split_jobs_pay_one_job_start_per_block(runs: dict[str, SimulationResult]) -> None:
    latency = small().environment.job_start_latency
    for iteration in runs["split"].iterations:
        assert iteration.latency >= latency


def test_calibration_windows_block_the_qpu(runs: dict[str, SimulationResult]) -> None:
    schedule = small().qpu.calibration
    assert schedule is not None
    blocked = 0
    for key, result in runs.items():
        assert result.calibrations, key
        for task in result.tasks:
            assert schedule.window_at(task.started_at) is None, f"{key}: started in calibration"
            if any(w.end == task.started_at for w in result.calibrations):
                blocked += 1
    assert blocked > 0  # some task did wait for a window to end


def test_a_calibration_window_delays_a_lone_task() -> None:
    scenario = Scenario(
        name="lone", description="",
        batch=(BatchClass("b", "a", Arrivals(1, 5.5), Dist.of("const", value=1),
                          Dist.of("const", value=100)),),
        qpu=QpuModel(calibration=CalibrationSchedule(every=5.0, duration=1.0)),
    )  # fmt: skip
    result = simulate(scenario, Strategy(Mode.MULTIPLEX, False))
    assert [t.started_at for t in result.tasks] == [6.0]


def test_runs_are_reproducible_with_a_seed() -> None:
    scenario = small()
    one = measure(simulate(scenario, Strategy(Mode.MULTIPLEX, True)))
    two = measure(simulate(scenario, Strategy(Mode.MULTIPLEX, True)))
    assert one == two
    assert scenario.materialise(seed=7) == scenario.materialise(seed=7)
    assert scenario.materialise(seed=7) != scenario.materialise(seed=8)


@settings(max_examples=25, deadline=None)
@given(
    backlog=st.lists(
        st.tuples(st.integers(2, 12), st.integers(1, 4), st.integers(100, 3000)),
        min_size=2,
        max_size=3,
    ),
    mode=st.sampled_from([Mode.MULTIPLEX, Mode.FIFO_CIRCUIT]),
)
def test_fair_share_converges_to_equal_shares(
    backlog: list[tuple[int, int, int]], mode: Mode
) -> None:
    # Every account has a backlog at t=0 and equal shares: while all compete, the one
    # with least usage goes next, so usage never drifts apart by more than one task.
    classes = tuple(
        BatchClass(
            f"b{i}", f"acct{i}", Arrivals(jobs, 0.0),
            Dist.of("const", value=circuits), Dist.of("const", value=shots),
        )
        for i, (jobs, circuits, shots) in enumerate(backlog)
    )  # fmt: skip
    scenario = Scenario(name="fair", description="", batch=classes)
    result = simulate(scenario, Strategy(mode, fairshare=True))
    m = measure(result)
    longest = max(t.duration for t in result.tasks)
    values = list(m.contended_qpu_seconds.values())
    assert max(values) - min(values) <= longest + 1e-9
    unfair = measure(simulate(scenario, Strategy(mode, fairshare=False)))
    assert m.jain >= unfair.jain - 1e-9


# -- metrics ---------------------------------------------------------------------------------


def test_interval_helpers() -> None:
    assert merge([(3, 4), (0, 1), (0.5, 2), (5, 5)]) == [(0, 2), (3, 4)]
    assert subtract([(0, 10)], [(1, 2), (5, 12)]) == [(0, 1), (2, 5)]
    assert subtract([(0, 1), (3, 4)], []) == [(0, 1), (3, 4)]


def test_jain_index() -> None:
    assert jain_index([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0]) == pytest.approx(0.5)


# -- workload data ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_published_scenario_files_match_the_named_scenarios(name: str) -> None:
    path = ROOT / "bench" / "scenarios" / f"{name}.json"
    assert load_scenario(path) == SCENARIOS[name], f"regenerate {path} (bench_study.py --publish)"


def test_scenario_round_trips_through_json_and_toml(tmp_path: Path) -> None:
    scenario = small()
    assert Scenario.from_dict(json.loads(scenario.to_json())) == scenario
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "t"\n[[batch]]\nname = "b"\naccount = "a"\narrivals = { count = 2 }\n'
        'circuits = 3\nshots = { kind = "uniform", low = 10, high = 20 }\n'
    )
    loaded = load_scenario(toml)
    assert loaded.batch[0].shots == Dist.of("uniform", low=10, high=20)
    assert len(loaded.materialise().batch) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch": [{"name": "b", "account": "a", "arrivals": {"count": 1},
                     "circuits": {"kind": "zipf"}, "shots": 1}]}, "unknown distribution 'zipf'"),
        ({"batch": [{"name": "b", "account": "a", "arrivals": {"count": 1},
                     "circuits": {"kind": "uniform", "low": 5, "high": 1}, "shots": 1}]},
         "high 1 is below low 5"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"environment": {"licences": 0}}, "licences must be at least 1"),
    ],
)  # fmt: skip
def test_bad_scenarios_name_the_problem(change: dict[str, object], message: str) -> None:
    data = small().to_dict() | change
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Scenario.from_dict(data)


def test_quick_scale_keeps_every_class() -> None:
    scenario = SCENARIOS["two-centres"]
    quick = scenario.materialise(scale=0.25)
    full = scenario.materialise()
    assert 0 < len(quick.batch) < len(full.batch)
    assert quick.accounts() == full.accounts()


def test_the_licence_count_trades_latency_for_utilisation() -> None:
    scenario = SCENARIOS["vqe-heavy"]
    workload = scenario.materialise()
    one = measure(
        simulate(replace(scenario, environment=replace(scenario.environment, licences=1)),
                 Strategy(Mode.MULTIPLEX, True), workload)
    )  # fmt: skip
    many = measure(
        simulate(replace(scenario, environment=replace(scenario.environment, licences=8)),
                 Strategy(Mode.MULTIPLEX, True), workload)
    )  # fmt: skip
    assert one.iteration_latency_mean < many.iteration_latency_mean
    assert one.utilisation < many.utilisation


def test_session_aware_backfill_lowers_iteration_latency() -> None:
    # Two runs of the same drawn jobs: the broker's session policy before backfill
    # (batch fills every gap) and with it (batch only where it ends before a session
    # task is expected). Sessions then wait less for batch tasks.
    scenario = SCENARIOS["batch-heavy"]
    workload = scenario.materialise(scale=0.5)
    strategy = Strategy(Mode.MULTIPLEX, True)
    greedy = simulate(scenario, strategy, workload, backfill=False)
    aware = simulate(scenario, strategy, workload)

    def behind_batch(result: SimulationResult) -> float:
        tasks = result.tasks
        waited = 0.0
        for s in (t for t in tasks if t.session):
            if any(not b.session and b.started_at < s.submitted_at < b.finished_at for b in tasks):
                waited += s.started_at - s.submitted_at
        return waited

    assert measure(aware).iteration_latency_mean < measure(greedy).iteration_latency_mean
    assert behind_batch(aware) < behind_batch(greedy)
    # Every batch task still ran (simulate raises otherwise), and the same work was done.
    assert sum(t.duration for t in aware.tasks) == pytest.approx(
        sum(t.duration for t in greedy.tasks)
    )


def test_shot_chunks_lower_iteration_latency_at_equal_utilisation() -> None:
    # The same drawn jobs with batch filling every gap, batch tasks whole and as shot
    # chunks: sessions wait for at most one chunk instead of a whole task, and the QPU
    # stays as busy while work waits.
    scenario = SCENARIOS["batch-heavy"]
    workload = scenario.materialise(scale=0.5)
    strategy = Strategy(Mode.MULTIPLEX, True)
    whole = simulate(scenario, strategy, workload, backfill=False)
    chunked = simulate(scenario, strategy, workload, backfill=False, chunk_seconds=0.1)
    assert any(t.chunks > 1 for t in chunked.tasks)
    assert all(t.chunks == 1 for t in whole.tasks)
    assert measure(chunked).iteration_latency_mean < measure(whole).iteration_latency_mean
    assert measure(chunked).utilisation_waiting >= measure(whole).utilisation_waiting
    # Every shot ran: the chunks of a task add up to its shots.
    shots: dict[str, int] = {}
    for t in chunked.tasks:
        shots[t.task_id] = shots.get(t.task_id, 0) + t.shots
    assert sum(shots.values()) == sum(t.shots for t in whole.tasks)


def test_the_simulator_feeds_the_sessions_rhythm_to_the_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A policy that records what it is shown: every hybrid job's session gets a think
    # time close to the drawn ones (plus the client's round trip).
    seen: dict[str, float] = {}

    class Recorder:
        name = "recorder"

        def __init__(self, inner: Policy) -> None:
            self.inner = inner

        def next_task(self, view: SchedulingView) -> QueuedTask | None:
            for session_id, rhythm in view.rhythms.items():
                if rhythm.think is not None:
                    seen[session_id] = rhythm.think
            return self.inner.next_task(view)

    scenario = small()
    workload = scenario.materialise()
    from qhpc.broker import build_policy as real

    monkeypatch.setattr(simulator, "build_policy", lambda *a, **k: Recorder(real(*a, **k)))
    simulate(scenario, Strategy(Mode.MULTIPLEX, True), workload)
    assert len(seen) == len(workload.hybrid)
    thinks = [step.think for job in workload.hybrid for step in job.iterations]
    assert min(thinks) <= min(seen.values()) and max(seen.values()) <= max(thinks) + 0.1


# -- the bench CLI ---------------------------------------------------------------------------


def test_quick_study_writes_a_json_report_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["bench", "study", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "study.json").read_text())
    assert set(report["scenarios"]) == set(SCENARIOS)
    assert report["quick"] is True
    for data in report["scenarios"].values():
        assert set(data["runs"]) == {s.key for s in STRATEGIES}
    assert {g["goal"] for g in report["goals"]} >= {"Jain fairness, equal shares"}
    for name, data in report["scenarios"].items():
        assert data["greedy_multiplex"]["strategy"] == "multiplex+fairshare", name
        sweep = report["licence_sweep"][name]
        assert 0 < sweep["duty_cycle"] < 1
        assert sweep["rows"][0]["licences"] == 1
        assert all({"latency_ratio", "makespan_ratio"} <= set(r["greedy"]) for r in sweep["rows"])
        assert all({"latency_ratio", "makespan_ratio"} <= set(r["whole"]) for r in sweep["rows"])
        assert len(sweep["settings"]["rows"]) == 12
        assert {r["chunk_seconds"] for r in sweep["settings"]["rows"]} >= {None}
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "gantt-vqe-heavy.png" in pngs and "latency-two-centres.png" in pngs
    assert "fairness.png" in pngs
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "goals" in out

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BEGIN}\nold figures\n{END}\ntail\n")
    code, out, err = run_cli(
        ["bench", "readme", "--out", str(tmp_path), "--readme", str(readme)], capsys
    )
    assert code == 0, err
    text = readme.read_text()
    assert "old figures" not in text and text.endswith(f"{END}\ntail\n")
    assert "qhpc multiplex" in text


def test_unknown_scenario_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["bench", "study", "-s", "nope", "--out", str(tmp_path)], capsys)
    assert code == 1
    assert "unknown scenario 'nope'" in err
