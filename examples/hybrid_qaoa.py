"""A hybrid program in plain Python: QAOA for MaxCut with scipy, one QPU call per evaluation.

MaxCut of a 5-node graph (a square with a diagonal plus a tail; maximum cut 5, found
by brute force below). COBYLA tunes the QAOA angles on the exact expectation of
the cost Hamiltonian; the optimal circuit is then sampled and the best cut kept.
Run it

- client-driven, anywhere with a session (a Slurm job gets one from qhpc's
  TaskProlog): ``QHPC_FASTPATH=tcp://broker:5555 QHPC_SESSION=... python examples/hybrid_qaoa.py``
- co-located, next to the QPU in the broker's runtime pool, unchanged:
  ``qhpc submit --hybrid examples/hybrid_qaoa.py --resource aer --wait``
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from qiskit.circuit import ParameterVector, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from scipy.optimize import minimize

EDGES: list[tuple[int, int]] = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2), (3, 4)]
NODES = 5


def cut_value(bits: str, edges: Sequence[tuple[int, int]]) -> int:
    """Edges cut by ``bits`` (qubit 0 is the rightmost character, as in Qiskit counts)."""
    return sum(bits[-1 - a] != bits[-1 - b] for a, b in edges)


def max_cut(n: int, edges: Sequence[tuple[int, int]]) -> int:
    return max(cut_value("".join(bits), edges) for bits in itertools.product("01", repeat=n))


def cost(n: int, edges: Sequence[tuple[int, int]]) -> SparsePauliOp:
    """−cut as a Pauli sum: Σ ½ Z_a Z_b − |E|/2; its minimum is −(max cut)."""
    terms = [("I" * n, -len(edges) / 2)]
    for a, b in edges:
        label = ["I"] * n
        label[n - 1 - a] = label[n - 1 - b] = "Z"
        terms.append(("".join(label), 0.5))
    return SparsePauliOp.from_list(terms).simplify()


def qaoa(n: int, edges: Sequence[tuple[int, int]], p: int) -> QuantumCircuit:
    gamma, beta = ParameterVector("g", p), ParameterVector("b", p)
    circuit = QuantumCircuit(n)
    circuit.h(range(n))
    for layer in range(p):
        for a, b in edges:
            circuit.rzz(gamma[layer], a, b)
        circuit.rx(2 * beta[layer], range(n))
    return circuit


def reporter() -> Callable[..., None]:
    """``report(iteration, value)`` when running in qhpc's runtime, else a no-op."""
    try:
        from qhpc.runtime import current_program

        return current_program().report
    except Exception:
        return lambda *args, **fields: None


def main(qpu: Any, p: int = 2, samples: int = 2000, maxiter: int = 200) -> dict[str, Any]:
    circuit = qaoa(NODES, EDGES, p)
    hamiltonian = cost(NODES, EDGES)
    report = reporter()
    trace: list[float] = []

    def expected_cost(angles: np.ndarray) -> float:
        # circuit.parameters sort by name: all b (β) before all g (γ)
        value = float(qpu.estimate(circuit, hamiltonian, list(angles), shots=None))
        trace.append(value)
        report(len(trace), value)
        return value

    rng = np.random.default_rng(11)
    best = None
    for _ in range(3):  # a few starts: QAOA landscapes have poor local minima
        x0 = rng.uniform(0.1, 1.2, size=2 * p)
        found = minimize(expected_cost, x0=x0, method="COBYLA", options={"maxiter": maxiter})
        if best is None or found.fun < best.fun:
            best = found
    assert best is not None
    measured = circuit.assign_parameters(list(best.x))
    measured.measure_all()
    counts: dict[str, int] = qpu.run(measured, shots=samples)
    best_bits = max(counts, key=lambda bits: (cut_value(bits, EDGES), counts[bits]))
    return {
        "expected_cut": -float(best.fun),
        "best_bits": best_bits,
        "best_cut": cut_value(best_bits, EDGES),
        "max_cut": max_cut(NODES, EDGES),
        "evaluations": len(trace),
    }


if __name__ == "__main__":
    from qhpc.session import QPU

    print(main(QPU.from_env()))
