"""An instant resource for measuring the broker itself.

Every circuit "measures" all zeros at once, so benchmarks of admission,
scheduling, persistence and transport see no simulator time at all. Not a
simulator: use it only where the counts do not matter.
"""

from __future__ import annotations

from qiskit.circuit import QuantumCircuit

from qhpc.resources.local import LocalTask, SamplingResource
from qhpc.resources.payload import SampledCircuit
from qhpc.resources.target import DeviceTarget


class NullResource(SamplingResource):
    type_name = "null"

    def __init__(self, name: str, *, max_qubits: int = 64, max_shots: int = 1_000_000) -> None:
        super().__init__(name)
        self._target = DeviceTarget(name=name, num_qubits=max_qubits, max_shots=max_shots)

    def target(self) -> DeviceTarget:
        return self._target

    def _sample(
        self,
        circuits: list[QuantumCircuit],
        shots: int,
        memory: bool,
        seed: int | None,
        record: LocalTask,
    ) -> tuple[list[SampledCircuit], dict[str, object]]:
        results = []
        for circuit in circuits:
            zeros = "0" * circuit.num_clbits
            results.append(
                SampledCircuit(
                    counts={zeros: shots},
                    shots=shots,
                    num_bits=circuit.num_clbits,
                    memory=(zeros,) * shots if memory else None,
                )
            )
        return results, {"simulator": "null", "qpu_seconds": 0.0}
