"""Smoke test of bench/bench_study_slurm.py: the study's three modes through real Slurm.

Runs ``--quick`` (one hybrid job of a few iterations, one batch job) against the
one-host cluster; the script applies its own fragments and puts the cluster's
back. Checks that every mode ran through Slurm and the broker, not the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_study_slurm.py"


def test_quick_run_reports_all_three_modes(slurm_cluster: Path, tmp_path: Path) -> None:
    fragments_before = Path("/etc/slurm/qhpc.conf").read_text()
    report_path = tmp_path / "study_slurm.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--time-scale", "4", "--json", str(report_path)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert Path("/etc/slurm/qhpc.conf").read_text() == fragments_before  # restored

    report = json.loads(report_path.read_text())
    workload = report["workload"]
    assert set(report["modes"]) == {"exclusive", "multiplex", "split"}
    for mode, entry in report["modes"].items():
        measured, calibrated = entry["measured"], entry["calibrated"]
        # every task of the drawn workload is in the broker's records, completed (the
        # simulator counts each shot chunk of a batch task as a run of its own)
        assert measured["tasks"] == workload["tasks"], mode
        assert calibrated["tasks"] >= workload["tasks"], mode
        assert measured["jobs"] == workload["hybrid"] + workload["batch"], mode
        for figures in (measured, calibrated):
            assert 0 < figures["utilisation"] <= 1, (mode, figures)
            assert 0 < figures["utilisation_waiting"] <= 1, (mode, figures)
            assert figures["makespan"] > 0
            assert figures["iteration_latency_mean"] > 0
        # the jobs went through Slurm and were booked by its epilog
        jobs = entry["slurm_jobs"]
        expected = workload["hybrid"] + (workload["batch"] if mode != "multiplex" else 0)
        if mode == "split":
            expected = workload["iterations"] + workload["batch"]
        assert len(jobs) == expected, (mode, jobs)
        assert all(job["state"] == "COMPLETED" for job in jobs), (mode, jobs)
        assert entry["job_start_modelled_s"], mode
    assert report["calibrated_environment"]["job_start_latency"] > 0
