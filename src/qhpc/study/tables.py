"""Markdown tables from the benchmark reports: the README's performance section and
the tables of docs/benchmarks.md are generated, never typed.

Inputs are the JSON files the bench scripts write into one results folder
(``study.json``, ``resources.json``, ``broker.json``, ``vqe.json``,
``dispatch.json``, ``study_real.json``, ``study_slurm.json``); a missing file leaves its table out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qhpc.study.modes import MODE_TITLES, Mode

GREEDY_TITLE = "qhpc multiplex before session-aware backfill (batch fills every gap)"
WHOLE_TITLE = "qhpc multiplex without shot chunks (batch tasks run whole)"
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def study_table(report: dict[str, Any], scenario: str) -> str:
    runs = report["scenarios"][scenario]["runs"]
    lines = [
        "| mode (fair share on) | makespan | QPU utilisation | utilisation while work waits "
        "| mean job turnaround | mean / p95 iteration latency | Jain fairness |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [(MODE_TITLES[mode], runs.get(f"{mode}+fairshare")) for mode in Mode]
    whole = report["scenarios"][scenario].get("whole_multiplex")
    if whole:
        rows.append((WHOLE_TITLE, whole))
    greedy = report["scenarios"][scenario].get("greedy_multiplex")
    if greedy:
        rows.append((GREEDY_TITLE, greedy))
    for title, m in rows:
        if m is None:
            continue
        lines.append(
            f"| {title} | {_fmt(m['makespan'], '.0f')} s "
            f"| {_fmt(m['utilisation'], '.0%')} | {_fmt(m['utilisation_waiting'], '.0%')} "
            f"| {_fmt(m['turnaround_mean'], '.0f')} s "
            f"| {_fmt(m['iteration_latency_mean'], '.2f')} / "
            f"{_fmt(m['iteration_latency_p95'], '.2f')} s | {_fmt(m['jain'], '.2f')} |"
        )
    return "\n".join(lines)


def fairness_table(report: dict[str, Any]) -> str:
    scenarios = list(report["scenarios"])
    lines = [
        "| mode | " + " | ".join(f"{s}: off / on" for s in scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    for mode in Mode:
        cells = []
        for s in scenarios:
            runs = report["scenarios"][s]["runs"]
            off, on = runs.get(str(mode)), runs.get(f"{mode}+fairshare")
            cells.append(f"{_fmt(off and off['jain'], '.2f')} / {_fmt(on and on['jain'], '.2f')}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _licences(report: dict[str, Any], scenario: str, licences: int | None) -> str:
    if licences is None:
        sweep = (report.get("licence_sweep") or {}).get(scenario)
        licences = sweep["licences"] if isinstance(sweep, dict) and "licences" in sweep else None
    return "–" if licences is None else str(licences)


def goals_table(report: dict[str, Any]) -> str:
    lines = [
        "| goal | scenario | licences | target | reached in this run |",
        "|---|---|---|---|---|",
    ]
    for g in report["goals"]:
        mark = "✅" if g["reached"] else "❌"
        licences = _licences(report, g["scenario"], g.get("licences"))
        mode = g.get("mode") or "multiplex"
        if mode.startswith("admission"):
            licences = f"duty-cycle {mode} (≤ {licences})"
        lines.append(
            f"| {g['goal']} | {g['scenario']} | {licences} "
            f"| {g['comparison']} {g['target']:g} | {mark} {_fmt(g['value'], '.3g')} |"
        )
    return "\n".join(lines)


def sweep_tables(report: dict[str, Any]) -> list[tuple[str, float, str]]:
    """Per scenario: its name, the hybrid jobs' duty cycle and the licence-count table
    (session-aware backfill / before it, each as a ratio to exclusive reservation)."""
    sweeps = report.get("licence_sweep")
    if not isinstance(sweeps, dict) or "rows" in sweeps:  # none, or an older report's
        return []
    out = []
    for name, sweep in sweeps.items():
        lines = [
            "| licences (sessions at once) | iteration latency / exclusive "
            "| makespan / exclusive | utilisation while work waits |",
            "|---|---|---|---|",
        ]
        for row in sweep["rows"]:
            cols = [row, *([row["whole"]] if "whole" in row else []), row["greedy"]]

            def three(key: str, spec: str, cols: list[dict[str, Any]] = cols) -> str:
                return " / ".join(format(c[key], spec) for c in cols)

            lines.append(
                f"| {row['licences']} | {three('latency_ratio', '.2f')} "
                f"| {three('makespan_ratio', '.2f')} | {three('utilisation_waiting', '.0%')} |"
            )
        out.append((name, sweep["duty_cycle"], "\n".join(lines)))
    return out


def settings_table(report: dict[str, Any]) -> str:
    """Per scenario, at its recommended licence count: the backfill settings compared."""
    sweeps = report.get("licence_sweep")
    if not isinstance(sweeps, dict) or "rows" in sweeps:
        return ""
    lines = [
        "| scenario | licences | session policy | batch tasks | iteration latency / exclusive "
        "| utilisation while work waits | makespan / exclusive |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, sweep in sweeps.items():
        settings = sweep.get("settings")
        if not settings:
            continue
        for row in settings["rows"]:
            if "chunk_seconds" in row:
                size = row["chunk_seconds"]
                chunks = "whole" if size is None else f"chunks of {size:g} s"
            else:  # an older report's what-if
                chunks = "as submitted" if row["chunks"] == 1 else f"split in {row['chunks']}"
            lines.append(
                f"| {name} | {settings['licences']} | {row['setting']} | {chunks} "
                f"| {row['latency_ratio']:.2f} | {row['utilisation_waiting']:.0%} "
                f"| {row['makespan_ratio']:.2f} |"
            )
    return "\n".join(lines)


def admission_table(report: dict[str, Any]) -> str:
    """Per scenario: what duty-cycle admission did, beside the best static licence count
    (chosen in hindsight from the sweep), then its variants."""
    summaries = {k: v for k, v in (report.get("admission") or {}).items() if v}
    if not summaries:
        return ""
    lines = [
        "| scenario | licence total | admission | sessions admitted (min–max, mean) "
        "| iteration latency / exclusive | utilisation while work waits | makespan / exclusive |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, a in summaries.items():
        n = a["admitted"]
        rows = [("as built (newcomers one at a time, balanced backfill)", a)]
        rows += [(v["label"], v) for v in a.get("variants", {}).values()]
        for index, (label, figures) in enumerate(rows):
            admitted = (
                f"{_fmt(n['min'], '.0f')}–{_fmt(n['max'], '.0f')}, {_fmt(n['mean'], '.1f')}"
                if index == 0
                else ""
            )
            lines.append(
                f"| {name} | {a['licences']} | {label} | {admitted} "
                f"| {figures['latency_ratio']:.2f} | {figures['utilisation_waiting']:.0%} "
                f"| {figures['makespan_ratio']:.2f} |"
            )
        best = a.get("best_static")
        if best:
            lines.append(
                f"| {name} | {best['licences']} | static licence count, the best in hindsight "
                f"(multiplex) | {best['licences']} | {best['latency_ratio']:.2f} "
                f"| {best['utilisation_waiting']:.0%} | {best['makespan_ratio']:.2f} |"
            )
    return "\n".join(lines)


def limit_table(report: dict[str, Any]) -> str:
    """Per scenario: how many sessions of its median duty cycle fit the latency target,
    the QPU share they keep busy, and the makespan floor that leaves."""
    summaries = {k: v for k, v in (report.get("admission") or {}).items() if v}
    if not summaries:
        return ""
    lines = [
        "| scenario | hybrid jobs' median duty cycle | sessions that fit 1.1× at that duty "
        "| QPU share they keep busy | makespan floor / exclusive (hybrid jobs that many at a "
        "time, as fast as alone) | idle while work waited with no batch work ready |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in summaries.items():
        lines.append(
            f"| {name} | {_fmt(a['median_duty'], '.0%')} "
            f"| {_fmt(a['sessions_at_target'], '.0f')} "
            f"| {_fmt(a['session_share_at_target'], '.0%')} "
            f"| {_fmt(a['makespan_floor_ratio'], '.2f')} "
            f"| {_fmt(a.get('idle_without_batch'), '.0%')} |"
        )
    return "\n".join(lines)


def fit_table(report: dict[str, Any], max_load: float = 1.5) -> str:
    """The latency model's fit: per bin of the other sessions' summed duty cycle, the
    simulated latency over alone, the fitted model and the controller's."""
    fit = report.get("latency_fit")
    if not fit:
        return ""
    lines = [
        f"Fitted on {fit['iterations']} iterations of {fit['runs']} runs, bins up to "
        f"D = {fit['max_load']:g}: latency / alone ≈ 1 + {fit['linear']:.3f}·D + "
        f"{fit['quadratic']:.3f}·D² (weighted rms {fit['rms']:.3f}); the controller runs "
        f"with 1 + {fit['controller']['linear']:g}·D + {fit['controller']['quadratic']:g}·D² "
        f"(rms {fit['controller_rms']:.3f}).",
        "",
        "| others' summed duty cycle D | iterations | simulated latency / alone "
        "| fitted | the controller's model |",
        "|---|---|---|---|---|",
    ]
    for b in fit["bins"]:
        if b["load"] > max_load:
            continue
        lines.append(
            f"| {b['load']:.2f} | {b['iterations']:.0f} | {b['ratio']:.3f} "
            f"| {b['fitted']:.3f} | {b['controller']:.3f} |"
        )
    return "\n".join(lines)


def real_table(real: dict[str, Any]) -> str:
    """Measured on a served broker vs the simulator as stated vs calibrated on the exclusive run."""
    lines = [
        "| mode | makespan: measured / simulated / calibrated "
        "| QPU utilisation | mean iteration latency | within margin |",
        "|---|---|---|---|---|",
    ]
    for key, row in real["modes"].items():
        meas, sim = row["measured"], row["simulated"]
        cal = row.get("calibrated", sim)

        def three(name: str, spec: str, unit: str = "", r: Any = (meas, sim, cal)) -> str:
            return " / ".join(_fmt(x[name], spec) + unit for x in r)

        lines.append(
            f"| {key} | {three('makespan', '.1f', ' s')} | {three('utilisation', '.0%')} "
            f"| {three('iteration_latency_mean', '.2f', ' s')} | {'✅' if row['agree'] else '❌'} |"
        )
    return "\n".join(lines)


#: the micro-benchmark rows the README shows (the rest are in docs/benchmarks.md)
HEADLINES = (
    "dispatcher: raw Unix socket round trip",
    "dispatcher: qhpc iteration, co-located, qpu.run",
    "dispatcher: qhpc iteration, client-driven, direct TCP, qpu.run",
    "broker: ZeroMQ fast path, 64 tasks in flight",
    "broker: direct channel over TCP, 1 client",
    "broker on PostgreSQL: ZeroMQ fast path, 64 tasks in flight",
    "VQE H2 per evaluation: through a broker, ZeroMQ fast path",
    "broker: REST `GET /v1/health`",
)


def micro_table(folder: Path, headlines_only: bool = False) -> str:
    """One row per headline micro-benchmark figure that has a report in ``folder``
    (``headlines_only``: the few the README shows)."""
    rows: list[tuple[str, str, str]] = []
    for part in (_dispatch_rows, _broker_rows, _vqe_rows, _resource_rows):
        try:
            rows += part(folder)
        except (KeyError, TypeError) as exc:
            # A script changed its report: say so instead of failing the whole table.
            rows.append((f"({part.__name__[1:-5]} report not understood: {exc!r})", "–", "–"))
    if headlines_only:
        rows = [r for r in rows if r[0].startswith(HEADLINES) or r[0].startswith("(")]
    if not rows:
        return ""
    lines = ["| measurement | median | script |", "|---|---|---|"]
    lines += [f"| {what} | {value} | `bench/{script}` |" for what, value, script in rows]
    return "\n".join(lines)


def _dispatch_rows(folder: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    dispatch = _load(folder, "dispatch.json")
    if dispatch:
        a = dispatch["a_raw_unix_round_trip"]["median_us"]
        b = dispatch["b_appendix_a_zmq_iteration"]["median_us"]
        rows += [
            ("dispatcher: raw Unix socket round trip (the floor)", f"{a:.1f} µs",
             "bench_dispatch.py"),
            ("dispatcher: seed's Appendix-A ZeroMQ iteration", f"{b:.0f} µs", "bench_dispatch.py"),
        ]  # fmt: skip
        for how, figures in dispatch["c_qhpc_iteration"].items():
            if isinstance(figures, dict) and "median_us" in figures:
                c = figures["median_us"]
                rows.append(
                    (f"dispatcher: qhpc iteration, {how} (null circuit)",
                     f"{c / 1000:.2f} ms ({c / a:.0f}× the floor)", "bench_dispatch.py")
                )  # fmt: skip
        rows += [
            ("runtime: cold start vs warm start",
             f"{dispatch['d_cold_start']['median_us'] / 1000:.0f} ms vs "
             f"{dispatch['d_warm']['start_s']['median_us'] / 1000:.2f} ms", "bench_dispatch.py"),
        ]  # fmt: skip
    return rows


def _broker_rows(folder: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    broker = _load(folder, "broker.json")
    if broker:
        rows += [
            ("broker: REST `GET /v1/health`, 4 clients",
             f"{broker['rest_health_requests_per_s']:.0f} requests/s", "bench_broker.py"),
            ("broker: REST `GET /v1/resources` (token check + status), 4 clients",
             f"{broker['rest_resources_requests_per_s']:.0f} requests/s", "bench_broker.py"),
            ("broker: REST batch, jobs of 1 task, first `POST` → all completed",
             f"{broker['rest_batch_1task_jobs_per_s']:.0f} jobs/s", "bench_broker.py"),
            ("broker: REST batch, jobs of 100 tasks",
             f"{broker['rest_batch_tasks_per_s']:.0f} tasks/s", "bench_broker.py"),
            ("broker: ZeroMQ fast path, 1 client, one task at a time",
             f"{broker['fastpath_1_client_tasks_per_s']:.0f} tasks/s "
             f"({broker['fastpath_1_client_roundtrip_ms']:.2f} ms)", "bench_broker.py"),
            ("broker: ZeroMQ fast path, 4 clients",
             f"{broker['fastpath_4_clients_tasks_per_s']:.0f} tasks/s", "bench_broker.py"),
            ("broker: ZeroMQ fast path, 64 tasks in flight",
             f"{broker['fastpath_pipelined_tasks_per_s']:.0f} tasks/s", "bench_broker.py"),
        ]  # fmt: skip
        if "direct_tcp_1_client_tasks_per_s" in broker:
            rows.append(
                ("broker: direct channel over TCP, 1 client, one task at a time",
                 f"{broker['direct_tcp_1_client_tasks_per_s']:.0f} tasks/s "
                 f"({broker['direct_tcp_1_client_roundtrip_ms']:.2f} ms)", "bench_broker.py")
            )  # fmt: skip
        postgres = broker.get("postgresql")
        if isinstance(postgres, dict):
            rows += [
                ("broker on PostgreSQL: ZeroMQ fast path, 1 client, one task at a time",
                 f"{postgres['fastpath_1_client_tasks_per_s']:.0f} tasks/s", "bench_broker.py"),
                ("broker on PostgreSQL: ZeroMQ fast path, 64 tasks in flight",
                 f"{postgres['fastpath_pipelined_tasks_per_s']:.0f} tasks/s", "bench_broker.py"),
            ]  # fmt: skip
            if "direct_tcp_1_client_tasks_per_s" in postgres:
                rows.append(
                    ("broker on PostgreSQL: direct channel over TCP, 1 client",
                     f"{postgres['direct_tcp_1_client_tasks_per_s']:.0f} tasks/s",
                     "bench_broker.py")
                )  # fmt: skip
    return rows


def _vqe_rows(folder: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    vqe = _load(folder, "vqe.json")
    if vqe and isinstance(vqe.get("aer_direct"), dict):
        labels = {
            "aer_direct": "Qiskit Aer called directly",
            "qhpc_local": "qhpc stack over a local `aer` resource",
            "qhpc_fastpath": "through a broker, ZeroMQ fast path (session)",
            "qhpc_rest": "through a broker, REST",
            "qhpc_broker_stack": "whole stack handed to the broker",
        }
        for key, label in labels.items():
            if isinstance(vqe.get(key), dict):
                figures = vqe[key]
                rows.append(
                    (f"VQE H2 per evaluation: {label}",
                     f"{figures['per_evaluation_ms']:.2f} ms "
                     f"(+{figures['overhead_pct']:.0f} % over Aer)", "bench_vqe.py")
                )  # fmt: skip
    elif vqe:
        rows += [
            ("VQE H2 per evaluation: Aer direct / qhpc local / fast path / REST",
             f"{vqe['aer_direct_median_ms']:.2f} / {vqe['qhpc_local_median_ms']:.2f} / "
             f"{vqe['qhpc_remote_fastpath_median_ms']:.1f} / "
             f"{vqe['qhpc_remote_rest_median_ms']:.1f} ms", "bench_vqe.py"),
        ]  # fmt: skip
    return rows


def _resource_rows(folder: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    resources = _load(folder, "resources.json")
    if resources:
        rows += [
            ("resources: aer, Bell × 1000 shots, one circuit per task",
             f"{resources['aer_single_circuit_task_ms']:.2f} ms per task", "bench_resources.py"),
            ("resources: aer, same circuit batched 100 per task",
             f"{resources['aer_batched_per_circuit_ms']:.2f} ms per circuit "
             f"({resources['aer_batching_speedup']:.1f}× faster)", "bench_resources.py"),
            ("resources: qhpc task overhead over a direct Aer `run()`",
             f"{resources['aer_task_overhead_ms']:.2f} ms", "bench_resources.py"),
            ("resources: qx 10 qubits depth 20, final-state sampling vs per-shot",
             f"{resources['qx_10q_depth20_final_state_ms']:.0f} ms vs "
             f"{resources['qx_10q_depth20_per_shot_ms'] / 1000:.1f} s "
             f"({resources['qx_final_state_speedup']:.0f}×)", "bench_resources.py"),
        ]  # fmt: skip
    return rows


def readme_section(folder: Path) -> str:
    """The text between the README's bench markers: the headline figures of the reports
    in ``folder`` (every table is in docs/benchmarks.md, from the same run)."""
    parts = []
    study = _load(folder, "study.json")
    if study and "vqe-heavy" in study["scenarios"]:
        parts += [
            "Scheduling study, VQE-heavy scenario (simulated with the broker's own policies; "
            "modelled seconds), from `.venv/bin/python bench/bench_study.py`:",
            "",
            study_table(study, "vqe-heavy"),
        ]
    micro = micro_table(folder, headlines_only=True)
    if micro:
        parts += [
            "",
            "Headline micro-benchmarks (medians on a 2-core machine), from "
            "`.venv/bin/python bench/run_all.py --micro-only`:",
            "",
            micro,
        ]
    parts += [
        "",
        "Every table of the same run — the other scenarios, the goals reached and missed, "
        "the real broker and the real Slurm cluster beside the simulator, all "
        "micro-benchmarks — is in [docs/benchmarks.md](docs/benchmarks.md#results).",
    ]
    return "\n".join(parts)


def replace_between_markers(text: str, body: str) -> str:
    """``text`` with everything between the bench markers replaced by ``body``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} and {END} are missing or out of order")
    return text[: start + len(BEGIN)] + "\n" + body.strip() + "\n" + text[end:]


def docs_section(folder: Path) -> str:
    """The generated part of docs/benchmarks.md: every table of the latest reports."""
    parts: list[str] = []
    study = _load(folder, "study.json")
    if study:
        parts.append(
            f"Generated from the reports of {study['created']} "
            f"({'quick' if study['quick'] else 'full'} study run, {study['wall_seconds']:.1f} s)."
        )
        for name in study["scenarios"]:
            parts += [
                "",
                f"#### {name}",
                "",
                study_table(study, name),
                "",
                f"![QPU timeline, {name}](img/gantt-{name}.png)",
                f"![iteration latency, {name}](img/latency-{name}.png)",
            ]
        parts += [
            "",
            "#### Fairness (Jain index of QPU seconds / share while all accounts compete)",
            "",
            fairness_table(study),
            "",
            "![fairness](img/fairness.png) ![utilisation](img/utilisation.png)",
        ]
        for name, duty, table in sweep_tables(study):
            parts += [
                "",
                f"#### Licence count, {name} (multiplex with fair share: "
                "session-aware backfill with shot chunks / whole tasks / before backfill)",
                "",
                f"Hybrid jobs' duty cycle (QPU seconds / run time, exclusive): {duty:.0%}.",
                "",
                table,
            ]
        settings = settings_table(study)
        if settings:
            parts += [
                "",
                "#### Backfill settings at the licence count that meets the latency goal",
                "",
                settings,
            ]
        admission = admission_table(study)
        if admission:
            parts += ["", "#### Duty-cycle admission", "", admission]
        limit = limit_table(study)
        if limit:
            parts += ["", "#### How many sessions fit the latency target", "", limit]
        fit = fit_table(study)
        if fit:
            parts += ["", "#### The admission controller's latency model, fitted", "", fit]
        parts += ["", "#### Goals", "", goals_table(study)]
    real = _load(folder, "study_real.json")
    if real:
        parts += ["", "#### Real broker vs simulator", "", real_table(real)]
    through_slurm = _load(folder, "study_slurm.json")
    if through_slurm:
        parts += [
            "",
            "#### Through the real Slurm cluster vs simulator",
            "",
            real_table(through_slurm),
        ]
    micro = micro_table(folder)
    if micro:
        parts += ["", "#### Micro-benchmarks", "", micro]
    return "\n".join(parts)
