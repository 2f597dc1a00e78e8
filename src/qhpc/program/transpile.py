"""``Transpile``: map circuits onto the QPU's device with Qiskit's preset pass managers."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from qiskit.circuit import QuantumCircuit

from qhpc.program.job import Batch, Job
from qhpc.program.registry import register_plugin
from qhpc.program.stack import Plugin
from qhpc.resources import DeviceTarget, circuit_key, drop_qir_metadata

#: transpiled circuits kept per plugin (a variational loop reuses one circuit)
CACHE_SIZE = 256


class Transpile(Plugin):
    """Transpile every job's circuit for the QPU's target; observables follow the layout.

    A device with a coupling map is transpiled against ``specs.to_qiskit()``
    (layout, routing, basis translation); an all-to-all simulator only gets its
    gate set, so the circuit keeps its width. Parameterised circuits are
    transpiled once, unbound, and cached by circuit: a variational loop that
    resubmits one circuit pays for the transpiler once. Expectation jobs get
    ``observable.apply_layout(transpiled.layout)``. A circuit read from QIR loses its
    ``qhpc_qir`` metadata: the transpiled gates are no longer that program.
    """

    def __init__(self, optimization_level: int = 1, seed_transpiler: int | None = 11) -> None:
        if optimization_level not in (0, 1, 2, 3):
            raise ValueError(f"optimization_level must be 0..3, not {optimization_level!r}")
        self.optimization_level = optimization_level
        self.seed_transpiler = seed_transpiler
        self._managers: dict[DeviceTarget, Any] = {}
        self._circuits: OrderedDict[tuple[Hashable, DeviceTarget], tuple[QuantumCircuit, Any]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def params(self) -> dict[str, Any]:
        return {
            "optimization_level": self.optimization_level,
            "seed_transpiler": self.seed_transpiler,
        }

    def _manager(self, specs: DeviceTarget) -> Any:
        manager = self._managers.get(specs)
        if manager is None:
            from qiskit.transpiler import generate_preset_pass_manager

            if specs.coupling_map is None:
                manager = generate_preset_pass_manager(
                    optimization_level=self.optimization_level,
                    basis_gates=list(specs.basis_gates),
                    seed_transpiler=self.seed_transpiler,
                )
            else:
                manager = generate_preset_pass_manager(
                    optimization_level=self.optimization_level,
                    target=specs.to_qiskit(),
                    seed_transpiler=self.seed_transpiler,
                )
            self._managers[specs] = manager
        return manager

    def transpiled(self, circuit: QuantumCircuit, specs: DeviceTarget) -> QuantumCircuit:
        """``circuit`` transpiled for ``specs`` (cached by circuit content).

        Keyed by content, not by object, so a circuit changed in place after it was
        first seen is transpiled again; circuits without a content key (custom gates,
        control flow) are transpiled every time.
        """
        content = circuit_key(circuit)
        if content is None:
            with self._lock:
                manager = self._manager(specs)
            uncached: QuantumCircuit = manager.run(circuit)
            return uncached
        key = (content, specs)
        with self._lock:
            hit = self._circuits.get(key)
            if hit is not None:
                self._circuits.move_to_end(key)
                out: QuantumCircuit = hit[1]
                return out
            manager = self._manager(specs)
        out = manager.run(circuit)
        with self._lock:
            self._circuits[key] = (circuit, out)
            while len(self._circuits) > CACHE_SIZE:
                self._circuits.popitem(last=False)
        return out

    def compile(self, batch: Batch, specs: DeviceTarget) -> Batch:
        return Batch((self._job(job, specs) for job in batch), batch.meta)

    def _job(self, job: Job, specs: DeviceTarget) -> Job:
        # a circuit read from QIR no longer is that program once transpiled: the QIR
        # it carries goes, or the broker would refuse the circuit as not matching it
        circuit = drop_qir_metadata(self.transpiled(job.circuit, specs))
        values = job.parameter_dict()
        params = {p.name: values[p.name] for p in circuit.parameters} if values else None
        observable = job.observable
        if observable is not None and circuit.layout is not None:
            observable = observable.apply_layout(circuit.layout)
        meta = {**job.meta, "logical_qubits": job.circuit.num_qubits}
        return Job(circuit, observable, job.shots, params, job.name, meta)


register_plugin("Transpile", Transpile)
