"""QX (Quantum Inspire's simulator) through qxelarator, speaking cQASM v3.

qxelarator re-simulates the whole circuit for every shot. When every
measurement is terminal, this adapter instead asks QX for the final state once
(circuit without measurements, one iteration) and samples all shots from its
amplitudes — same distribution, a tiny fraction of the time. Circuits with
mid-circuit measurements or resets take the per-shot path.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qiskit.circuit import QuantumCircuit

from qhpc.resources.cqasm import (
    circuit_to_cqasm,
    measured_clbits,
    qubit_counts_to_clbit_counts,
)
from qhpc.resources.errors import TaskFailedError, UnsupportedPayloadError
from qhpc.resources.local import LocalTask, SamplingResource, TaskStopped
from qhpc.resources.payload import Payload, SampledCircuit, SamplerTask
from qhpc.resources.target import DeviceTarget

#: cQASM v3 gates, in Qiskit's names (what circuit_to_cqasm emits natively)
QX_BASIS = (
    "id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "sxdg",
    "rx", "ry", "rz", "cx", "cz", "swap", "cp",
)  # fmt: skip


class QxResource(SamplingResource):
    """The QX simulator behind qxelarator (cQASM v3)."""

    type_name = "qx"

    def __init__(
        self, name: str, *, max_qubits: int = 24, max_shots: int = 100_000, seed: int | None = None
    ) -> None:
        super().__init__(name)
        self.seed = seed
        self._target = DeviceTarget(
            name=name, num_qubits=max_qubits, basis_gates=QX_BASIS, max_shots=max_shots
        )

    def target(self) -> DeviceTarget:
        return self._target

    def _check_payload(self, payload: Payload) -> None:
        if isinstance(payload, SamplerTask) and payload.memory:
            raise UnsupportedPayloadError(
                f"{self.name}: qx returns counts only; per-shot memory is not available"
            )
        circuits = payload.circuits if isinstance(payload, SamplerTask) else (payload.circuit,)
        for circuit in circuits:
            if not circuit.num_parameters:
                circuit_to_cqasm(circuit)  # raises UnsupportedCircuitError at admission

    def _sample(
        self,
        circuits: list[QuantumCircuit],
        shots: int,
        memory: bool,
        seed: int | None,
        record: LocalTask,
    ) -> tuple[list[SampledCircuit], dict[str, object]]:
        import qxelarator

        started = time.perf_counter()
        rng = np.random.default_rng(seed if seed is not None else self.seed)
        results = []
        per_shot = 0
        for circuit in circuits:
            if record.stop_requested.is_set():
                raise TaskStopped
            clbit_map = measured_clbits(circuit)
            if _terminal_measurements_only(circuit):
                qubit_counts = _sample_final_state(qxelarator, circuit, shots, rng)
            else:
                per_shot += 1
                outcome = qxelarator.execute_string(circuit_to_cqasm(circuit), iterations=shots)
                if isinstance(outcome, qxelarator.SimulationError):
                    raise TaskFailedError(f"qx failed on {circuit.name!r}: {outcome}")
                qubit_counts = dict(outcome.results)
            counts = qubit_counts_to_clbit_counts(
                qubit_counts, circuit.num_qubits, clbit_map, circuit.num_clbits
            )
            results.append(SampledCircuit(counts=counts, shots=shots, num_bits=circuit.num_clbits))
        meta: dict[str, object] = {
            "simulator": "qx",
            "per_shot_circuits": per_shot,
            "execution_seconds": round(time.perf_counter() - started, 6),
        }
        return results, meta


def _terminal_measurements_only(circuit: QuantumCircuit) -> bool:
    """True if nothing but measurements/barriers follows the first measurement on any qubit."""
    measured: set[Any] = set()
    for instruction in circuit.data:
        name = instruction.operation.name
        if name == "measure":
            measured.update(instruction.qubits)
        elif name == "barrier":
            continue
        elif name == "reset" or measured.intersection(instruction.qubits):
            return False
    return True


def _sample_final_state(
    qxelarator: Any, circuit: QuantumCircuit, shots: int, rng: np.random.Generator
) -> dict[str, int]:
    unitary_part = circuit.remove_final_measurements(inplace=False)
    # Keep the width: removing measurements must not drop idle qubits.
    if unitary_part.num_qubits != circuit.num_qubits:
        unitary_part = QuantumCircuit(circuit.num_qubits)
        for instruction in circuit.data:
            if instruction.operation.name not in ("measure", "barrier"):
                positions = [circuit.find_bit(q).index for q in instruction.qubits]
                unitary_part.append(instruction.operation, positions)
    outcome = qxelarator.execute_string(circuit_to_cqasm(unitary_part), iterations=1)
    if isinstance(outcome, qxelarator.SimulationError):
        raise TaskFailedError(f"qx failed on {circuit.name!r}: {outcome}")
    keys = list(outcome.state.keys())
    probabilities = np.array([abs(complex(outcome.state[k])) ** 2 for k in keys])
    probabilities = probabilities / probabilities.sum()
    draws = rng.multinomial(shots, probabilities)
    width = circuit.num_qubits
    return {keys[i].zfill(width): int(n) for i, n in enumerate(draws) if n}
