"""VQE for H2 with a qhpc stack: ``ScipyMinimize | ObservableMeasurement | Transpile | qpu``.

H2 at 0.735 Å (STO-3G), parity mapping with two-qubit reduction: a 2-qubit
Hamiltonian whose lowest eigenvalue, -1.857275030202378 Ha (electronic energy,
no nuclear repulsion), is the target. The ansatz is hardware-efficient:
RY on each qubit, a CX, RY on each qubit again (4 parameters).

    python examples/vqe_h2.py                         # aer, exact expectation values
    python examples/vqe_h2.py --shots 20000           # aer, 20k shots per measurement group
    python examples/vqe_h2.py --resource emulator --shots 20000 --mitigate
    python examples/vqe_h2.py --url http://broker:8080 --token-file ~/.qhpc-token --resource aer

The same stack runs locally or on a broker: only the QPU at the bottom changes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qiskit.circuit import ParameterVector, QuantumCircuit
from qiskit.quantum_info import SparsePauliOp

import qhpc
from qhpc.program import (
    Executor,
    Job,
    LocalQPU,
    ObservableMeasurement,
    ReadoutMitigation,
    RemoteQPU,
    ScipyMinimize,
    Transpile,
)
from qhpc.resources import AerResource, EmulatorResource, ScaledClock, device_target

#: (Pauli label, coefficient in Ha); qubit 0 is the rightmost letter
H2_TERMS = [
    ("II", -1.052373245772859),
    ("IZ", 0.39793742484318045),
    ("ZI", -0.39793742484318045),
    ("ZZ", -0.01128010425623538),
    ("XX", 0.18093119978423156),
]
EXACT_ENERGY = -1.857275030202378


def hamiltonian() -> SparsePauliOp:
    return SparsePauliOp.from_list(H2_TERMS)


def exact_energy() -> float:
    """The lowest eigenvalue, computed (it agrees with EXACT_ENERGY)."""
    return float(np.linalg.eigvalsh(hamiltonian().to_matrix())[0])


def ansatz() -> QuantumCircuit:
    theta = ParameterVector("θ", 4)
    circuit = QuantumCircuit(2, name="ry-cx-ry")
    circuit.ry(theta[0], 0)
    circuit.ry(theta[1], 1)
    circuit.cx(0, 1)
    circuit.ry(theta[2], 0)
    circuit.ry(theta[3], 1)
    return circuit


def local_qpu(resource: str, seed: int | None, time_scale: float) -> Executor:
    if resource == "aer":
        return LocalQPU(AerResource("aer", seed=seed))
    if resource == "emulator":
        device = device_target("line-5")
        clock = ScaledClock(time_scale)
        return LocalQPU(EmulatorResource("emulator", device=device, clock=clock, seed=seed))
    raise SystemExit(f"unknown local resource {resource!r}: use aer or emulator")


def build_qpu(args: argparse.Namespace) -> Executor:
    if args.url:
        return RemoteQPU(qhpc.connect(args.url, _token(args.token_file)), args.resource)
    return local_qpu(args.resource, None if args.seed < 0 else args.seed, args.time_scale)


def _token(path: Path | None) -> str | None:
    """The token in ``path``; None: connect() takes $QHPC_TOKEN. Never an argument:
    other users can read a command's arguments."""
    return path.read_text(encoding="utf-8").strip() if path else None


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resource", default="aer", help="aer or emulator (or a broker's name)")
    parser.add_argument("--shots", type=int, default=0, help="shots per group; 0: exact values")
    parser.add_argument("--method", default="COBYLA", help="any scipy.optimize.minimize method")
    parser.add_argument("--maxiter", type=int, default=300)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--restarts", type=int, default=0, help="optimiser restarts")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed; -1: fresh each task")
    parser.add_argument("--mitigate", action="store_true", help="add ReadoutMitigation")
    parser.add_argument("--time-scale", type=float, default=1000.0, help="emulator clock speed")
    parser.add_argument("--url", help="broker URL: run remotely")
    parser.add_argument(
        "--token-file", type=Path, help="file holding the broker token (default: $QHPC_TOKEN)"
    )
    return parser.parse_args(argv)


def run(qpu: Executor, shots: int | None, args: argparse.Namespace) -> dict[str, Any]:
    """The VQE itself: identical for local and remote QPUs."""
    # --restarts N reruns the optimiser from its optimum with a smaller first step
    # (COBYLA's rhobeg), which helps on a noisy objective now and then.
    restart_options = {"rhobeg": 0.3} if args.method.upper() == "COBYLA" else {}
    plugins = ScipyMinimize(
        args.method,
        tol=args.tol,
        maxiter=args.maxiter,
        restarts=args.restarts,
        restart_options=restart_options,
    )
    stack = plugins | ObservableMeasurement() | Transpile()
    if args.mitigate:
        stack = stack | ReadoutMitigation()
    stack = stack | qpu
    job = Job.expectation(ansatz(), hamiltonian(), shots=shots, name="vqe-h2")
    started = time.perf_counter()
    result = stack.submit(job)
    seconds = time.perf_counter() - started
    assert result.value is not None
    exact = exact_energy()
    return {
        "stack": stack.name,
        "energy": result.value,
        "std_error": result.error,
        "exact": exact,
        "error_mha": abs(result.value - exact) * 1000,
        "nfev": result.meta["nfev"],
        "x": result.meta["x"],
        "shots": shots,
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    shots = args.shots or None
    report = run(build_qpu(args), shots, args)
    mode = "exact values" if shots is None else f"{shots} shots per group"
    error = "" if not report["std_error"] else f" ± {report['std_error'] * 1000:.2f} mHa"
    print(f"stack     {report['stack']}  ({mode})")
    print(f"energy    {report['energy']:.6f} Ha{error}")
    print(f"exact     {report['exact']:.6f} Ha")
    print(f"error     {report['error_mha']:.3f} mHa")
    print(f"evals     {report['nfev']} in {report['seconds']:.2f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
