"""Small helpers shared by the bench scripts.

The scripts run as ``python bench/SCRIPT.py`` (also as subprocesses of ``qhpc bench``,
and ``study_job.py`` inside Slurm jobs or as a chain program), so this folder is first
on ``sys.path`` and ``from _common import ...`` finds this file.
"""

from __future__ import annotations

from qiskit import QuantumCircuit


def bell() -> QuantumCircuit:
    """The two-qubit Bell circuit, measured: the benches' smallest real workload."""
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit
