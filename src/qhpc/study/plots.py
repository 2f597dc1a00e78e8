"""PNG plots of the study (matplotlib, Agg backend; imported only when plotting).

Per scenario: a Gantt chart of the QPU per strategy (tasks coloured by account,
session tasks solid and batch tasks light, calibration grey) and the CDF of
hybrid iteration latency per strategy. Across scenarios: Jain fairness per mode
with fair share off and on, and utilisation while work waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qhpc.study.modes import Mode, Strategy
from qhpc.study.runs import ScenarioRun

#: strategies shown in the per-scenario figures (fair share on: the broker's default)
SHOWN: tuple[Strategy, ...] = tuple(Strategy(m, True) for m in Mode)
DPI = 80


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gantt(run: ScenarioRun, path: Path) -> Path:
    plt = _pyplot()
    shown = [s for s in SHOWN if s.key in run.results]
    accounts = sorted({t.account for r in run.results.values() for t in r.tasks})
    colours = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(accounts)}
    horizon = max(r.end for r in run.results.values())
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 0.9 + 0.85 * len(shown)), sharex=True)
    axes = [axes] if len(shown) == 1 else list(axes)
    for ax, strategy in zip(axes, shown, strict=True):
        result = run.results[strategy.key]
        for window in result.calibrations:
            ax.axvspan(window.start, window.end, color="0.85", lw=0)
        for account in accounts:
            for session, alpha in ((True, 1.0), (False, 0.45)):
                bars = [
                    (t.started_at, t.duration)
                    for t in result.tasks
                    if t.account == account and t.session == session
                ]
                if bars:
                    ax.broken_barh(bars, (0, 1), color=colours[account], alpha=alpha, lw=0)
        m = run.metrics[strategy.key]
        ax.set_yticks([])
        ax.set_ylabel(strategy.mode.value, rotation=0, ha="right", va="center", fontsize=8)
        ax.text(
            horizon, 0.5, f" makespan {m.makespan:.0f} s\n util. {m.utilisation:.0%}",
            fontsize=7, va="center", ha="left",
        )  # fmt: skip
        ax.set_xlim(0, horizon)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[a]) for a in accounts]
    axes[0].legend(handles, accounts, ncol=len(accounts), fontsize=7, loc="lower left",
                   bbox_to_anchor=(0, 1.02), frameon=False)  # fmt: skip
    axes[-1].set_xlabel("modelled seconds (solid: session tasks, light: batch, grey: calibration)")
    fig.suptitle(f"QPU timeline, {run.scenario.name} (fair share on)", fontsize=10, y=0.995)
    fig.tight_layout(rect=(0.02, 0, 0.9, 0.97))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def latency_cdf(run: ScenarioRun, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for strategy in SHOWN:
        result = run.results.get(strategy.key)
        if result is None or not result.iterations:
            continue
        values = sorted(i.latency for i in result.iterations)
        ax.step(values, [(k + 1) / len(values) for k in range(len(values))], where="post",
                label=strategy.mode.value)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("iteration latency, modelled seconds (log)")
    ax.set_ylabel("fraction of iterations")
    ax.set_title(f"Hybrid iteration latency, {run.scenario.name} (fair share on)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _bars(runs: dict[str, ScenarioRun], metric: str, title: str, ylabel: str, path: Path) -> Path:
    plt = _pyplot()
    names = list(runs)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), sharey=True)
    axes = [axes] if len(names) == 1 else list(axes)
    modes = list(Mode)
    for ax, name in zip(axes, names, strict=True):
        metrics = runs[name].metrics
        for offset, fairshare in ((-0.2, False), (0.2, True)):
            values = [
                getattr(metrics[k], metric) if k in metrics else 0.0
                for k in (Strategy(m, fairshare).key for m in modes)
            ]
            ax.bar([i + offset for i in range(len(modes))], values, width=0.4,
                   label="fair share on" if fairshare else "fair share off")  # fmt: skip
        ax.set_xticks(range(len(modes)), [m.value for m in modes], rotation=30, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(runs: dict[str, ScenarioRun], out: Path) -> Sequence[Path]:
    paths: list[Path] = []
    for name, run in runs.items():
        paths.append(gantt(run, out / f"gantt-{name}.png"))
        paths.append(latency_cdf(run, out / f"latency-{name}.png"))
    paths.append(
        _bars(runs, "jain", "Jain fairness across accounts (QPU s / share)", "Jain index",
              out / "fairness.png")
    )  # fmt: skip
    paths.append(
        _bars(runs, "utilisation_waiting", "QPU utilisation while work waits",
              "busy / (busy + idle)", out / "utilisation.png")
    )  # fmt: skip
    return paths
