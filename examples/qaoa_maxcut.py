"""QAOA for MaxCut as a qhpc job generator on ``ScipyMinimize | ObservableMeasurement | Transpile``.

The generator yields an open expectation job (the cost Hamiltonian on the
QAOA circuit; ScipyMinimize in the stack optimises its angles), then a
sampling job at the optimal angles, and returns the best cut it sampled. The
answer is checked against brute force.

    python examples/qaoa_maxcut.py                      # 4-node ring, p=2, exact values
    python examples/qaoa_maxcut.py --edges 0-1,1-2,2-0,2-3,3-4 --p 2 --shots 4000
    python examples/qaoa_maxcut.py --url http://broker:8080 --token-file ~/.qhpc-token
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from qiskit.circuit import ParameterVector, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

import qhpc
from qhpc.program import (
    Executor,
    Job,
    LocalQPU,
    ObservableMeasurement,
    RemoteQPU,
    Result,
    ScipyMinimize,
    Transpile,
    job_generator,
)
from qhpc.resources import AerResource

Edge = tuple[int, int]
RING = [(0, 1), (1, 2), (2, 3), (3, 0)]


def cut_value(bits: str, edges: Sequence[Edge]) -> int:
    """Edges cut by ``bits`` (qubit 0 is the rightmost character)."""
    return sum(bits[-1 - a] != bits[-1 - b] for a, b in edges)


def brute_force(n: int, edges: Sequence[Edge]) -> int:
    return max(cut_value("".join(bits), edges) for bits in itertools.product("01", repeat=n))


def cost(n: int, edges: Sequence[Edge]) -> SparsePauliOp:
    """−cut as a Pauli sum: Σ ½ Z_a Z_b − |E|/2 (its minimum is −max cut)."""
    terms = [("I" * n, -len(edges) / 2)]
    for a, b in edges:
        label = ["I"] * n
        label[n - 1 - a] = label[n - 1 - b] = "Z"
        terms.append(("".join(label), 0.5))
    return SparsePauliOp.from_list(terms).simplify()


def qaoa_circuit(n: int, edges: Sequence[Edge], p: int) -> QuantumCircuit:
    gamma, beta = ParameterVector("γ", p), ParameterVector("β", p)
    circuit = QuantumCircuit(n, name=f"qaoa-p{p}")
    circuit.h(range(n))
    for layer in range(p):
        for a, b in edges:
            circuit.rzz(gamma[layer], a, b)
        circuit.rx(2 * beta[layer], range(n))
    return circuit


@job_generator
def maxcut(
    n: int, edges: Sequence[Edge], p: int, shots: int | None, samples: int
) -> Generator[Job, Result, Result]:
    """Optimise the angles, then sample the optimal circuit and keep the best cut."""
    circuit = qaoa_circuit(n, edges, p)
    optimum = yield Job.expectation(circuit, cost(n, edges), shots=shots, name="qaoa-energy")
    measured = circuit.copy()
    measured.measure_all()
    sampled = yield Job.sample(measured, samples, optimum.parameters, name="qaoa-sample")
    counts = sampled.counts or {}
    best = max(counts, key=lambda bits: (cut_value(bits, edges), counts[bits]))
    frequent = max(counts, key=lambda bits: counts[bits])
    assert optimum.value is not None
    return Result(
        value=float(cut_value(best, edges)),
        counts=counts,
        parameters=optimum.parameters,
        meta={
            "expected_cut": -optimum.value,
            "best_bits": best,
            "most_frequent": frequent,
            "most_frequent_cut": cut_value(frequent, edges),
            "nfev": optimum.meta["nfev"],
        },
    )


def _token(path: Path | None) -> str | None:
    """The token in ``path``; None: connect() takes $QHPC_TOKEN. Never an argument:
    other users can read a command's arguments."""
    return path.read_text(encoding="utf-8").strip() if path else None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", default="0-1,1-2,2-3,3-0", help="graph as a-b,c-d,…")
    parser.add_argument("--p", type=int, default=2, help="QAOA layers")
    parser.add_argument("--shots", type=int, default=0, help="shots per group; 0: exact")
    parser.add_argument("--samples", type=int, default=2000, help="shots of the final sample")
    parser.add_argument("--resource", default="aer")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--url", help="broker URL: run remotely")
    parser.add_argument(
        "--token-file", type=Path, help="file holding the broker token (default: $QHPC_TOKEN)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    edges = [tuple(int(v) for v in e.split("-")) for e in args.edges.split(",")]
    graph: list[Edge] = [(a, b) for a, b in edges]
    n = 1 + max(max(e) for e in graph)
    qpu: Executor
    if args.url:
        qpu = RemoteQPU(qhpc.connect(args.url, _token(args.token_file)), args.resource)
    else:
        qpu = LocalQPU(AerResource(args.resource, seed=args.seed))
    x0 = [0.4] * args.p + [0.4] * args.p  # γ then β (parameters sort by name: β before γ)
    stack = ScipyMinimize("COBYLA", x0=x0, maxiter=400) | ObservableMeasurement() | Transpile()
    started = time.perf_counter()
    result = (stack | qpu).submit(maxcut(n, graph, args.p, args.shots or None, args.samples))
    seconds = time.perf_counter() - started
    report = {
        "nodes": n,
        "edges": graph,
        "p": args.p,
        "best_cut": int(result.value or 0),
        "max_cut": brute_force(n, graph),
        **result.meta,
        "seconds": seconds,
    }
    print(f"graph        {n} nodes, edges {graph}, p={args.p}")
    print(f"expected cut {report['expected_cut']:.4f} after {report['nfev']} evaluations")
    print(f"most likely  {report['most_frequent']} (cut {report['most_frequent_cut']})")
    print(f"best sampled {report['best_bits']} (cut {report['best_cut']})")
    print(f"brute force  max cut {report['max_cut']}  ({seconds:.2f} s)")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
