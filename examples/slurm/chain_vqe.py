"""VQE for H2 as a job chain: each Slurm job runs one block of optimiser iterations.

The optimiser is Adam on parameter-shift gradients, whose whole state (angles,
moments, iteration count) fits in a checkpoint, so a run split into N steps
ends exactly where an uninterrupted run ends. Submit it as a 3-step chain::

    qhpc slurm chain submit examples/slurm/chain_vqe.py --steps 3 --dir run1 --wait
    qhpc slurm chain submit examples/slurm/chain_vqe.py --steps 3 --dir run1 \\
        --sbatch-arg=--partition=qpu --sbatch-arg=--qpu=sim       # holding a QPU per step

or from Python: ``Chain("examples/slurm/chain_vqe.py", 3, "run1").submit()``.
Each step uses the job's broker session (``QHPC_FASTPATH`` + ``QHPC_SESSION``,
exported by qhpc's TaskProlog when the job asked for a QPU) and otherwise a
local Aer simulator, so the chain also runs on a cluster without qhpc's hooks.
``python examples/slurm/chain_vqe.py`` runs the same iterations without a chain.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hybrid_vqe import EXACT, H2, ansatz

ITERATIONS_PER_STEP = int(os.environ.get("CHAIN_VQE_ITERATIONS", "30"))
LEARNING_RATE = 0.1
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8


class LocalAer:
    """The part of a QPU handle this program uses, on an in-process Aer simulator."""

    def __init__(self) -> None:
        from qhpc.resources import AerResource

        self._aer = AerResource("aer", method="statevector", seed=7)

    def estimate(self, circuit: Any, observable: Any, parameters: Any, shots: Any = None) -> float:
        from qhpc.resources import EstimatorTask

        result = self._aer.run(EstimatorTask.create(circuit, observable, parameters, shots=shots))
        return float(result.values[0][0])  # type: ignore[attr-defined]

    def close(self) -> None:
        self._aer.close()


def quantum() -> Any:
    """The job's broker session if it has one, else a local simulator."""
    if os.environ.get("QHPC_FASTPATH") and os.environ.get("QHPC_SESSION"):
        from qhpc.session import QPU

        return QPU.from_env()
    return LocalAer()


def initial_state() -> dict[str, Any]:
    zeros = [0.0] * 4
    return {"theta": [0.1] * 4, "m": zeros, "v": zeros, "iteration": 0, "energies": []}


def optimise(qpu: Any, state: dict[str, Any], iterations: int) -> dict[str, Any]:
    """``iterations`` Adam steps from ``state``; the new state (energy at the end included)."""
    circuit = ansatz()
    theta, m, v = (np.array(state[key], dtype=float) for key in ("theta", "m", "v"))
    iteration = int(state["iteration"])
    energies = list(state["energies"])

    def energy(angles: np.ndarray) -> float:
        return float(qpu.estimate(circuit, H2, list(angles)))

    for _ in range(iterations):
        iteration += 1
        shift = np.eye(len(theta)) * np.pi / 2
        gradient = np.array(
            [(energy(theta + s) - energy(theta - s)) / 2 for s in shift]  # parameter shift
        )
        m = BETA1 * m + (1 - BETA1) * gradient
        v = BETA2 * v + (1 - BETA2) * gradient**2
        step = LEARNING_RATE * (m / (1 - BETA1**iteration))
        theta = theta - step / (np.sqrt(v / (1 - BETA2**iteration)) + EPSILON)
        energies.append(energy(theta))
    final = energies[-1] if energies else energy(theta)
    return {
        "theta": theta.tolist(), "m": m.tolist(), "v": v.tolist(), "iteration": iteration,
        "energies": energies, "energy": final, "error_mha": abs(final - EXACT) * 1000,
    }  # fmt: skip


def chain_step(state: dict[str, Any] | None, step: int, steps: int) -> dict[str, Any]:
    """One step of the chain: restore, run one block, hand the state back to be saved."""
    qpu = quantum()
    try:
        new_state = optimise(qpu, state or initial_state(), ITERATIONS_PER_STEP)
    finally:
        qpu.close()  # the session is released between steps: another job may use the QPU
    print(
        f"step {step}/{steps}: iteration {new_state['iteration']}, "
        f"energy {new_state['energy']:.6f} Ha ({new_state['error_mha']:.3f} mHa from exact)",
        flush=True,
    )
    return new_state


def uninterrupted(steps: int = 3) -> dict[str, Any]:
    """The same iterations in one go, for comparison with a chain."""
    qpu = quantum()
    try:
        return optimise(qpu, initial_state(), ITERATIONS_PER_STEP * steps)
    finally:
        qpu.close()


if __name__ == "__main__":
    result = uninterrupted()
    print(f"energy {result['energy']:.6f} Ha, {result['error_mha']:.3f} mHa from exact")
