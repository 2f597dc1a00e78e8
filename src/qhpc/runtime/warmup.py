"""Warming the template: one tiny representative workload before it forks.

A program process is forked from the template, so whatever the template has
imported and initialised it inherits, and whatever it has not, every program
pays again. Importing the preload modules is not enough: ``import scipy`` does
not import ``scipy.optimize`` (~0.4 s), and the first COBYLA call, the first
pass manager, the first QPY round trip and the first stack rebuilt from a spec
each cost tens to hundreds of milliseconds more in a fresh interpreter.
:func:`warm_up` runs each of those once — a few evaluations of a two-qubit
stack ``ScipyMinimize | ObservableMeasurement | Transpile`` rebuilt from its
request as the broker does (exact and sampled), over an in-process state-vector
resource, plus the codec a program's QPU calls use — so every program starts
with them warm.

What it deliberately does not do: start a thread pool. A forked child gets
only the forking thread, so a pool the template had started would be a pool
without workers in every program (a hang at its first parallel call). So no
Aer run (OpenMP; a co-located program reaches Aer through the broker anyway),
and the warm-up runs with ``QISKIT_IN_PARALLEL=TRUE``, which keeps Qiskit's
Rust passes from starting their Rayon pool (the variable is restored after).

The template calls :func:`run_warm_up` with the function the pool names
(``module:function`` or ``/path/file.py:function``; the default is
:data:`DEFAULT_WARM_UP`). A failing warm-up is logged (the template's stderr)
and the template starts without it: it is an optimisation, never a condition.
Everything it builds is local to the call and collected before the template
freezes its heap; only library caches (imported modules, Qiskit's and SciPy's
lazily built tables) remain, which no program can tell from its own imports.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

#: the pool's default warm-up function
DEFAULT_WARM_UP = "qhpc.runtime.warmup:warm_up"
#: set while warming up: Qiskit then runs its Rust passes without a thread pool
SERIAL_ENV = "QISKIT_IN_PARALLEL"


def run_warm_up(spec: str) -> float:
    """Load and call the warm-up named by ``spec``; log (never raise) a failure.

    Returns the seconds it took (also when it failed).
    """
    from qhpc.runtime.hooks import load_qpu_factory

    started = time.monotonic()
    try:
        function: Any = load_qpu_factory(spec)  # the same module:function resolution
        function()
    except (Exception, SystemExit) as exc:
        log.warning(
            "runtime template: warm-up %s failed (%s: %s); programs start without it",
            spec,
            type(exc).__name__,
            exc,
        )
    return time.monotonic() - started


def warm_up() -> None:
    """Run the code paths a hybrid program's first iterations take, once, in this process."""
    previous = os.environ.get(SERIAL_ENV)
    os.environ[SERIAL_ENV] = "TRUE"
    try:
        _workload()
    finally:
        if previous is None:
            os.environ.pop(SERIAL_ENV, None)
        else:
            os.environ[SERIAL_ENV] = previous


def _workload() -> None:
    import scipy.optimize

    from qhpc.program import Batch, Job, LocalQPU, ObservableMeasurement, ScipyMinimize, Transpile
    from qhpc.program.server import make_request, run_request
    from qhpc.resources.codec import decode_result, encode_payload, encode_result

    circuit, observable = _ansatz()
    resource = _StatevectorResource()
    stack = (
        ScipyMinimize("COBYLA", maxiter=4, x0=[0.1, -0.1], reevaluate=False)
        | ObservableMeasurement()
        | Transpile()
        | LocalQPU(resource, name="warm-up")
    )
    for shots in (None, 64):  # exact values and measured groups
        job = Job.expectation(circuit, observable, shots=shots, name="warm-up")
        request = make_request(stack, Batch([job]))
        run_request(request, LocalQPU(resource, name="warm-up"))
    # The codec of a program's QPU calls (the direct channel encodes payloads,
    # decodes results), both ways.
    from qhpc.resources.payload import EstimatorTask

    task = EstimatorTask.create(circuit, observable, [0.1, 0.2])
    decode_result(encode_result(resource.run(task)))
    encode_payload(task)
    scipy.optimize.minimize(lambda x: float((x**2).sum()), [0.5, 0.5], method="Nelder-Mead")


def _ansatz() -> tuple[Any, Any]:
    from qiskit.circuit import ParameterVector, QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp

    theta = ParameterVector("θ", 2)
    circuit = QuantumCircuit(2, name="warm-up")
    circuit.ry(theta[0], 0)
    circuit.cx(0, 1)
    circuit.ry(theta[1], 1)
    return circuit, SparsePauliOp.from_list([("ZZ", 1.0), ("XI", 0.5), ("IY", 0.25)])


class _StatevectorResource:
    """``run(payload)``/``target()`` with qiskit.quantum_info, single-threaded and seeded."""

    name = "warm-up"

    def __init__(self) -> None:
        from qhpc.resources.target import DeviceTarget

        self._target = DeviceTarget(name="warm-up", num_qubits=2, max_shots=1024)

    def target(self) -> Any:
        return self._target

    def run(self, payload: Any, timeout: float | None = None) -> Any:
        from qiskit.quantum_info import Statevector

        from qhpc.resources.payload import (
            EstimatorResult,
            SampledCircuit,
            SamplerResult,
            SamplerTask,
        )

        if isinstance(payload, SamplerTask):
            sampled = []
            for circuit in payload.circuits:
                state = Statevector(circuit.remove_final_measurements(inplace=False))
                state.seed(7)
                counts = state.sample_counts(payload.shots)
                sampled.append(
                    SampledCircuit(
                        counts={k: int(v) for k, v in counts.items()},
                        shots=payload.shots,
                        num_bits=circuit.num_clbits,
                    )
                )
            return SamplerResult(circuits=tuple(sampled), metadata={"resource": self.name})
        values = tuple(
            tuple(float(Statevector(bound).expectation_value(o).real) for o in payload.observables)
            for bound in payload.bound_circuits()
        )
        return EstimatorResult(
            values=values,
            std_errors=tuple(tuple(0.0 for _ in row) for row in values),
            shots=None,
            metadata={"resource": self.name, "exact": True},
        )
