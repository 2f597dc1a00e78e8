"""Device targets: what a resource can run, and how well.

A :class:`DeviceTarget` is the qhpc form of QRMI's ``target()``: enough to
validate a payload, transpile for the device (:meth:`DeviceTarget.to_qiskit`)
and build a noise model (:meth:`DeviceTarget.noise_model`). Named devices
(``line-5``, ``heavy-hex-19`` …) give the emulator a fixed, realistic shape.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from qhpc.resources.errors import ResourceConfigError

# Gates every simulator-backed resource accepts natively (Aer's own set is wider;
# this is what we advertise and validate against).
SIMULATOR_BASIS: tuple[str, ...] = (
    "id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "sxdg",
    "rx", "ry", "rz", "p", "u", "cx", "cy", "cz", "ch", "swap", "cp",
    "crx", "cry", "crz", "rxx", "ryy", "rzz", "ccx", "cswap",
)  # fmt: skip

# IBM Heron-like native set: rz is virtual (no error, no time).
SUPERCONDUCTING_BASIS: tuple[str, ...] = ("id", "rz", "sx", "x", "cz")

VIRTUAL_GATES = frozenset({"rz", "p", "id"})


@dataclass(frozen=True)
class DeviceTarget:
    """Shape, limits, gate set, error rates and durations of one device.

    Durations are in seconds. ``coupling_map`` lists directed qubit pairs; None
    means all-to-all (simulators).
    """

    name: str
    num_qubits: int
    basis_gates: tuple[str, ...] = SIMULATOR_BASIS
    coupling_map: tuple[tuple[int, int], ...] | None = None
    max_shots: int = 1_000_000
    max_circuits: int = 10_000
    single_qubit_error: float = 0.0
    two_qubit_error: float = 0.0
    readout_error: float = 0.0
    single_qubit_duration: float = 0.0
    two_qubit_duration: float = 0.0
    readout_duration: float = 0.0
    t1: float | None = None
    t2: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_ideal(self) -> bool:
        return self.single_qubit_error == self.two_qubit_error == self.readout_error == 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["basis_gates"] = list(self.basis_gates)
        data["coupling_map"] = (
            None if self.coupling_map is None else [list(e) for e in self.coupling_map]
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceTarget:
        """The inverse of :meth:`to_dict` (JSON form); unknown keys are ignored, so a
        newer broker's target still reads."""
        fields = dict(data)
        fields["basis_gates"] = tuple(fields.get("basis_gates") or ())
        coupling = fields.get("coupling_map")
        fields["coupling_map"] = None if coupling is None else tuple(tuple(e) for e in coupling)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in fields.items() if k in known})

    def to_qiskit(self) -> Any:
        """A ``qiskit.transpiler.Target`` for transpiling against this device."""
        return _qiskit_target(self)

    def noise_model(self) -> Any:
        """An Aer ``NoiseModel`` from this target's error rates (None if ideal)."""
        if self.is_ideal:
            return None
        from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

        model = NoiseModel(basis_gates=list(self.basis_gates))
        one_q = [g for g in self.basis_gates if _arity(g) == 1 and g not in VIRTUAL_GATES]
        two_q = [g for g in self.basis_gates if _arity(g) == 2]
        if self.single_qubit_error > 0 and one_q:
            model.add_all_qubit_quantum_error(depolarizing_error(self.single_qubit_error, 1), one_q)
        if self.two_qubit_error > 0 and two_q:
            model.add_all_qubit_quantum_error(depolarizing_error(self.two_qubit_error, 2), two_q)
        if self.readout_error > 0:
            p = self.readout_error
            model.add_all_qubit_readout_error(ReadoutError([[1 - p, p], [p, 1 - p]]))
        return model


def _arity(gate: str) -> int:
    from qiskit.circuit.library import get_standard_gate_name_mapping

    op = get_standard_gate_name_mapping().get(gate)
    return 0 if op is None else int(op.num_qubits)


@cache
def _qiskit_target(device: DeviceTarget) -> Any:
    from qiskit.circuit import Measure, Reset
    from qiskit.circuit.library import get_standard_gate_name_mapping
    from qiskit.transpiler import CouplingMap, InstructionProperties, Target

    gates = get_standard_gate_name_mapping()
    target = Target(description=device.name, num_qubits=device.num_qubits)
    qubits = range(device.num_qubits)
    if device.coupling_map is None:
        pairs: list[tuple[int, int]] = [(a, b) for a in qubits for b in qubits if a != b]
    else:
        pairs = list(CouplingMap(list(device.coupling_map)).get_edges())
    for name in device.basis_gates:
        op = gates.get(name)
        if op is None:
            raise ResourceConfigError(f"unknown basis gate {name!r}", device.name, "basis_gates")
        if op.num_qubits == 1:
            virtual = name in VIRTUAL_GATES
            props = InstructionProperties(
                duration=0.0 if virtual else device.single_qubit_duration,
                error=0.0 if virtual else device.single_qubit_error,
            )
            target.add_instruction(op, {(q,): props for q in qubits})
        elif op.num_qubits == 2:
            props2 = InstructionProperties(
                duration=device.two_qubit_duration, error=device.two_qubit_error
            )
            target.add_instruction(op, {pair: props2 for pair in pairs})
        elif device.coupling_map is None:
            # Wider gates only make sense on all-to-all simulators.
            target.add_instruction(op, None)
    measure = InstructionProperties(duration=device.readout_duration, error=device.readout_error)
    target.add_instruction(Measure(), {(q,): measure for q in qubits})
    target.add_instruction(Reset(), {(q,): InstructionProperties() for q in qubits})
    return target


def line_device(num_qubits: int) -> DeviceTarget:
    """A superconducting-style chain: nearest neighbours coupled both ways."""
    edges = [(i, i + 1) for i in range(num_qubits - 1)]
    return _superconducting(f"line-{num_qubits}", num_qubits, edges)


def heavy_hex_device(distance: int) -> DeviceTarget:
    """IBM's heavy-hex lattice of code distance ``distance`` (3 → 19 qubits)."""
    from qiskit.transpiler import CouplingMap

    coupling = CouplingMap.from_heavy_hex(distance, bidirectional=False)
    edges = [(int(a), int(b)) for a, b in coupling.get_edges()]
    return _superconducting(f"heavy-hex-{coupling.size()}", coupling.size(), edges)


def _superconducting(name: str, num_qubits: int, edges: list[tuple[int, int]]) -> DeviceTarget:
    both_ways = tuple(sorted({*edges, *((b, a) for a, b in edges)}))
    # Figures of a current transmon device (order of magnitude, not one machine).
    return DeviceTarget(
        name=name,
        num_qubits=num_qubits,
        basis_gates=SUPERCONDUCTING_BASIS,
        coupling_map=both_ways,
        max_shots=100_000,
        max_circuits=300,
        single_qubit_error=2.5e-4,
        two_qubit_error=3e-3,
        readout_error=1.5e-2,
        single_qubit_duration=36e-9,
        two_qubit_duration=68e-9,
        readout_duration=1.56e-6,
        t1=2.0e-4,
        t2=1.5e-4,
    )


_LINE = re.compile(r"line-(\d+)")
_HEAVY_HEX_SIZES = {19: 3, 57: 5}


def device_target(name: str) -> DeviceTarget:
    """Look up a named device: ``line-N`` (2 ≤ N ≤ 32) or ``heavy-hex-19`` / ``heavy-hex-57``."""
    match = _LINE.fullmatch(name)
    if match:
        size = int(match.group(1))
        if not 2 <= size <= 32:
            raise ResourceConfigError(f"line devices have 2 to 32 qubits, not {size}", key="device")
        return line_device(size)
    if name.startswith("heavy-hex-"):
        size_text = name.removeprefix("heavy-hex-")
        if size_text.isdigit() and int(size_text) in _HEAVY_HEX_SIZES:
            return heavy_hex_device(_HEAVY_HEX_SIZES[int(size_text)])
    raise ResourceConfigError(
        f"unknown device {name!r}; use line-N (2..32), heavy-hex-19 or heavy-hex-57",
        key="device",
    )
