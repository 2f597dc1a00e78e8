"""A hybrid program in plain Python: VQE for H2 with scipy, one QPU call per evaluation.

No lifecycle hooks: ``main(qpu)`` is an ordinary function. Run it

- client-driven, anywhere with a session (a Slurm job gets one from qhpc's
  TaskProlog): ``QHPC_FASTPATH=tcp://broker:5555 QHPC_SESSION=... python examples/hybrid_vqe.py``
- co-located, next to the QPU in the broker's runtime pool, unchanged:
  ``qhpc submit --hybrid examples/hybrid_vqe.py --resource aer --wait``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qiskit.circuit import ParameterVector, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from scipy.optimize import minimize

H2 = SparsePauliOp.from_list(
    [
        ("II", -1.052373245772859),
        ("IZ", 0.39793742484318045),
        ("ZI", -0.39793742484318045),
        ("ZZ", -0.01128010425623538),
        ("XX", 0.18093119978423156),
    ]
)
EXACT = -1.857275030202378


def ansatz() -> QuantumCircuit:
    theta = ParameterVector("t", 4)
    circuit = QuantumCircuit(2)
    circuit.ry(theta[0], 0)
    circuit.ry(theta[1], 1)
    circuit.cx(0, 1)
    circuit.ry(theta[2], 0)
    circuit.ry(theta[3], 1)
    return circuit


def reporter() -> Callable[..., None]:
    """``report(iteration, value)`` when running in qhpc's runtime, else a no-op."""
    try:
        from qhpc.runtime import current_program

        return current_program().report
    except Exception:
        return lambda *args, **fields: None


def main(qpu: Any, shots: int | None = None, maxiter: int = 300) -> dict[str, Any]:
    circuit = ansatz()
    report = reporter()
    trace: list[float] = []

    def energy(theta: np.ndarray) -> float:
        value = float(qpu.estimate(circuit, H2, list(theta), shots=shots))
        trace.append(value)
        report(len(trace), value)  # the progress line of `qhpc submit --hybrid --wait`
        return value

    found = minimize(energy, x0=np.full(4, 0.1), method="COBYLA", options={"maxiter": maxiter})
    return {
        "energy": float(found.fun),
        "error_mha": abs(float(found.fun) - EXACT) * 1000,
        "evaluations": len(trace),
    }


if __name__ == "__main__":
    from qhpc.session import QPU

    print(main(QPU.from_env()))
