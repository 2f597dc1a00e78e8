"""VQE for H2 the Qiskit way: qhpc's ``EstimatorV2`` and ``scipy.optimize.minimize``.

The same problem as ``vqe_h2.py`` (Hamiltonian, ansatz, exact energy), written
as Qiskit users write it: an estimator primitive evaluates the energy, scipy
drives the loop. The estimator runs on any qhpc QPU: a local resource, or a
``RemoteQPU`` on a broker (it speaks the primitives' task-runner protocol too).

    python examples/vqe_h2_primitives.py                       # exact values on aer
    python examples/vqe_h2_primitives.py --precision 0.005     # shots = 1/precision² = 40k
    python examples/vqe_h2_primitives.py --url http://broker:8080 --token-file ~/.qhpc-token
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize

import qhpc
from qhpc.primitives import EstimatorV2, TaskRunner
from qhpc.program import RemoteQPU
from qhpc.resources import AerResource

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vqe_h2 import ansatz, exact_energy, hamiltonian


def _token(path: Path | None) -> str | None:
    """The token in ``path``; None: connect() takes $QHPC_TOKEN. Never an argument:
    other users can read a command's arguments."""
    return path.read_text(encoding="utf-8").strip() if path else None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", type=float, default=0.0, help="0: exact values")
    parser.add_argument("--method", default="COBYLA")
    parser.add_argument("--maxiter", type=int, default=300)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--resource", default="aer")
    parser.add_argument("--url", help="broker URL: run remotely")
    parser.add_argument(
        "--token-file", type=Path, help="file holding the broker token (default: $QHPC_TOKEN)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    qpu: TaskRunner
    if args.url:
        qpu = RemoteQPU(qhpc.connect(args.url, _token(args.token_file)), args.resource)
    else:
        qpu = AerResource(args.resource, seed=args.seed)
    estimator = EstimatorV2(qpu, default_precision=args.precision, seed=args.seed)
    circuit, observable = ansatz(), hamiltonian()
    trace: list[float] = []

    def energy(theta: np.ndarray[Any, Any]) -> float:
        evs = estimator.run([(circuit, observable, theta)]).result()[0].data.evs
        trace.append(float(evs))
        return float(evs)

    x0 = np.random.default_rng(0).uniform(-0.1, 0.1, circuit.num_parameters)
    started = time.perf_counter()
    found = minimize(
        energy, x0, method=args.method, tol=args.tol, options={"maxiter": args.maxiter}
    )
    value = energy(found.x)  # a fresh evaluation at the optimum
    seconds = time.perf_counter() - started
    exact = exact_energy()
    report = {
        "energy": value,
        "exact": exact,
        "error_mha": abs(value - exact) * 1000,
        "nfev": len(trace),
        "x": tuple(float(v) for v in found.x),
        "seconds": seconds,
    }
    print(f"EstimatorV2 on {getattr(qpu, 'name', qpu)} (precision {args.precision})")
    print(f"energy    {value:.6f} Ha   exact {exact:.6f} Ha")
    print(f"error     {report['error_mha']:.3f} mHa after {len(trace)} evaluations")
    print(f"time      {seconds:.2f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
