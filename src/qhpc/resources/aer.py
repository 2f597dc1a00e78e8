"""Qiskit Aer as a qhpc resource.

Statevector by default; matrix-product-state for circuits wider than a
statevector fits in memory (good for wide, low-entanglement circuits). All
circuits of one task go to Aer in one ``run()`` call (per chunk), which costs
a fraction of a separate call per circuit. With a ``device`` the resource takes
that device's shape: circuits are transpiled to it (a cached pass manager per
target) and, with ``noise=True``, run under a noise model built from its error
rates.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from functools import cache
from typing import Any

from qiskit.circuit import QuantumCircuit

from qhpc.resources.errors import ResourceConfigError, TaskFailedError
from qhpc.resources.local import (
    LocalTask,
    SamplingResource,
    TaskStopped,
    circuit_key,
    observable_key,
)
from qhpc.resources.payload import (
    EstimatorResult,
    EstimatorTask,
    Payload,
    SampledCircuit,
    normalise_counts,
)
from qhpc.resources.target import DeviceTarget

METHODS = ("automatic", "statevector", "matrix_product_state")
#: 16 bytes per amplitude: 28 qubits is 4 GiB, a sane ceiling on a 24 GiB node
STATEVECTOR_MAX_QUBITS = 28
#: widest circuit with a reset whose exact expectation values use a density matrix
#: (4^n amplitudes: 14 qubits is 4 GiB); wider ones are sampled
DENSITY_MATRIX_MAX_QUBITS = 12
#: operations after which no single simulation is the expectation value: sampled
SAMPLED_ONLY = frozenset({"measure", "if_else", "while_loop", "for_loop", "switch_case"})
MPS_MAX_QUBITS = 64
#: circuits handed to Aer per run() call; between chunks a task can be stopped
CHUNK = 64
#: estimator circuits (with their save instructions, unbound) kept per resource
EXACT_CACHE_SIZE = 64


class AerResource(SamplingResource):
    """Local Qiskit Aer simulator, optionally shaped and made noisy by a device target."""

    type_name = "aer"

    def __init__(
        self,
        name: str,
        *,
        method: str = "automatic",
        device: DeviceTarget | None = None,
        noise: bool = False,
        max_qubits: int | None = None,
        max_shots: int = 1_000_000,
        seed: int | None = None,
    ) -> None:
        super().__init__(name)
        if method not in METHODS:
            raise ResourceConfigError(f"method must be one of {', '.join(METHODS)}", name, "method")
        self.method = method
        self.device = device
        self.noise = noise
        self.seed = seed
        limit = STATEVECTOR_MAX_QUBITS if method == "statevector" else MPS_MAX_QUBITS
        if device is not None:
            self._target = device
        else:
            width = max_qubits if max_qubits is not None else limit
            if not 1 <= width <= limit:
                raise ResourceConfigError(
                    f"max_qubits must be between 1 and {limit} for method {method}",
                    name,
                    "max_qubits",
                )
            self._target = DeviceTarget(name=name, num_qubits=width, max_shots=max_shots)
        self._noise_model = device.noise_model() if (device is not None and noise) else None
        self._simulators: dict[str, Any] = {}
        self._exact_circuits: OrderedDict[Hashable, QuantumCircuit] = OrderedDict()
        self._exact_lock = threading.Lock()

    def target(self) -> DeviceTarget:
        return self._target

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "method": self.method,
            "device": self.device.name if self.device else None,
            "noise": self._noise_model is not None,
        }

    def _check_payload(self, payload: Payload) -> None:
        if self.method == "statevector" and payload.num_qubits > STATEVECTOR_MAX_QUBITS:
            raise TaskFailedError(
                f"{payload.num_qubits} qubits exceed the statevector limit of "
                f"{STATEVECTOR_MAX_QUBITS}; configure method='matrix_product_state'"
            )

    # -- execution -----------------------------------------------------------
    def _simulator(self, method: str) -> Any:
        sim = self._simulators.get(method)
        if sim is None:
            from qiskit_aer import AerSimulator

            sim = AerSimulator(method=method, noise_model=self._noise_model)
            self._simulators[method] = sim
        return sim

    def _method_for(self, circuit: QuantumCircuit) -> str:
        if self.method != "automatic":
            return self.method
        if circuit.num_qubits <= STATEVECTOR_MAX_QUBITS:
            return "statevector"
        return "matrix_product_state"

    def prepare(self, circuits: list[QuantumCircuit]) -> list[QuantumCircuit]:
        """Circuits as the device (or, without one, Aer) will run them."""
        if self.device is not None and self.device.coupling_map is not None:
            return list(_device_pass_manager(self.device).run(circuits))
        return _for_aer(circuits)

    def simulate(
        self,
        circuits: list[QuantumCircuit],
        shots: int,
        memory: bool,
        seed: int | None,
        record: LocalTask,
    ) -> tuple[list[SampledCircuit], dict[str, object]]:
        """Sample now, in the calling thread (the emulator drives this with its own clock)."""
        return self._sample(circuits, shots, memory, seed, record)

    def _sample(
        self,
        circuits: list[QuantumCircuit],
        shots: int,
        memory: bool,
        seed: int | None,
        record: LocalTask,
    ) -> tuple[list[SampledCircuit], dict[str, object]]:
        started = time.perf_counter()
        prepared = self.prepare(circuits)
        transpile_s = time.perf_counter() - started
        seed = seed if seed is not None else self.seed
        results: list[SampledCircuit] = []
        for start in range(0, len(prepared), CHUNK):
            if record.stop_requested.is_set():
                raise TaskStopped
            chunk = prepared[start : start + CHUNK]
            by_method: dict[str, list[int]] = {}
            for i, circuit in enumerate(chunk):
                by_method.setdefault(self._method_for(circuit), []).append(i)
            chunk_results: list[SampledCircuit | None] = [None] * len(chunk)
            for method, indices in by_method.items():
                options: dict[str, Any] = {"shots": shots, "memory": memory}
                if seed is not None:
                    options["seed_simulator"] = seed + start
                job = self._simulator(method).run([chunk[i] for i in indices], **options)
                aer_result = job.result()
                for k, i in enumerate(indices):
                    chunk_results[i] = _sampled(aer_result, k, chunk[i], shots, memory)
            results.extend(r for r in chunk_results if r is not None)
            if len(prepared) > CHUNK:
                record.log(f"sampled {min(start + CHUNK, len(prepared))}/{len(prepared)} circuits")
        meta: dict[str, object] = {
            "simulator": "aer",
            "transpile_seconds": round(transpile_s, 6),
            "execution_seconds": round(time.perf_counter() - started - transpile_s, 6),
        }
        if self.device is not None:
            meta["depths"] = [c.depth() for c in prepared]
        return results, meta

    def _exact_expectations(self, task: EstimatorTask, record: LocalTask) -> EstimatorResult | None:
        if self._noise_model is not None:
            return None  # a noisy exact value needs density matrices; sample instead
        ops = set(task.circuit.count_ops())
        if ops & SAMPLED_ONLY:
            # A mid-circuit measurement or classical control makes the state a mixture
            # of branches: one statevector trajectory is one branch, not the expectation.
            # Sampling gives the mixture honestly, with a real standard error.
            return None
        # A reset is a channel: a density matrix carries the mixture exactly (a
        # statevector would pick one branch at random and call it exact).
        mixed = "reset" in ops
        if mixed and task.circuit.num_qubits > DENSITY_MATRIX_MAX_QUBITS:
            return None
        import qiskit_aer  # noqa: F401  (registers save_expectation_value)

        started = time.perf_counter()
        prepared = self._exact_circuit(task)
        if task.circuit.num_parameters:
            params = list(task.circuit.parameters)
            circuits = [
                prepared.assign_parameters(dict(zip(params, row, strict=True)), strict=False)
                for row in task.parameter_values
            ]
        else:
            circuits = [prepared for _ in task.parameter_values]
        method = "density_matrix" if mixed else self._method_for(task.circuit)
        aer_result = self._simulator(method).run(circuits, shots=1).result()
        if not aer_result.success:
            raise TaskFailedError(f"Aer failed: {aer_result.status}")
        values = tuple(
            tuple(float(aer_result.data(i)[f"e{k}"]) for k in range(len(task.observables)))
            for i in range(len(circuits))
        )
        zeros = tuple(tuple(0.0 for _ in row) for row in values)
        record.log(f"exact expectation values for {len(circuits)} parameter set(s)")
        return EstimatorResult(
            values=values,
            std_errors=zeros,
            shots=None,
            metadata={
                "resource": self.name,
                "exact": True,
                "method": method,
                "execution_seconds": round(time.perf_counter() - started, 6),
            },
        )

    def _exact_circuit(self, task: EstimatorTask) -> QuantumCircuit:
        """The task's circuit as Aer runs it, unbound, with one ``save_expectation_value``
        per observable (labels ``e0``, ``e1``, …).

        Cached by content (:func:`~qhpc.resources.local.circuit_key` and the
        observables' terms): a variational loop sends one circuit with new
        parameter values, and adding the save instructions costs more than
        Aer's whole run of a small circuit. Each call binds a copy, so the
        cached circuit is never changed.
        """
        circuit = task.circuit
        found = circuit_key(circuit)
        key = None if found is None else (found, tuple(map(observable_key, task.observables)))
        if key is not None:
            with self._exact_lock:
                hit = self._exact_circuits.get(key)
                if hit is not None:
                    self._exact_circuits.move_to_end(key)
                    return hit
        # Logical circuits, not device-mapped ones: the layout would move the qubits
        # the observables refer to, and an ideal device gives the same values.
        prepared = _for_aer([circuit.remove_final_measurements(inplace=False)])[0]
        qubits = list(range(task.num_qubits))
        for k, obs in enumerate(task.observables):
            prepared.save_expectation_value(obs, qubits, label=f"e{k}")
        if key is not None:
            with self._exact_lock:
                self._exact_circuits[key] = prepared
                while len(self._exact_circuits) > EXACT_CACHE_SIZE:
                    self._exact_circuits.popitem(last=False)
        return prepared


def _for_aer(circuits: list[QuantumCircuit]) -> list[QuantumCircuit]:
    supported = _aer_instructions()
    out = []
    for circuit in circuits:
        if set(circuit.count_ops()) <= supported:
            out.append(circuit)
        else:
            out.append(_generic_pass_manager().run(circuit))
    return out


def _sampled(
    aer_result: Any, index: int, circuit: QuantumCircuit, shots: int, memory: bool
) -> SampledCircuit:
    experiment = aer_result.results[index]
    if not experiment.success:
        raise TaskFailedError(f"Aer failed on circuit {circuit.name!r}: {experiment.status}")
    if "measure" not in circuit.count_ops():
        # Classical bits nobody wrote stay 0 (as Qiskit's reference sampler gives);
        # Aer reports no counts at all for such a circuit.
        zeros = "0" * circuit.num_clbits
        return SampledCircuit(
            counts={zeros: shots}, shots=shots, num_bits=circuit.num_clbits,
            memory=(zeros,) * shots if memory else None,
        )  # fmt: skip
    counts = normalise_counts(aer_result.get_counts(index), circuit.num_clbits)
    shots_memory = None
    if memory:
        shots_memory = tuple(m.replace(" ", "") for m in aer_result.get_memory(index))
    return SampledCircuit(
        counts=counts, shots=shots, num_bits=circuit.num_clbits, memory=shots_memory
    )


@cache
def _aer_instructions() -> frozenset[str]:
    from qiskit_aer import AerSimulator

    names = set(AerSimulator().configuration().basis_gates)
    return frozenset(names | {"measure", "reset", "barrier", "delay"})


@cache
def _generic_pass_manager() -> Any:
    from qiskit.circuit.library import get_standard_gate_name_mapping
    from qiskit.transpiler import generate_preset_pass_manager

    # Only standard gates: the pass manager refuses Aer's own instructions by name.
    basis = sorted(_aer_instructions() & set(get_standard_gate_name_mapping()))
    return generate_preset_pass_manager(optimization_level=0, basis_gates=basis)


@cache
def _device_pass_manager(device: DeviceTarget) -> Any:
    # Built once per target: building one costs ~100 ms, running it well under 1 ms.
    from qiskit.transpiler import generate_preset_pass_manager

    return generate_preset_pass_manager(
        optimization_level=1, target=device.to_qiskit(), seed_transpiler=11
    )
