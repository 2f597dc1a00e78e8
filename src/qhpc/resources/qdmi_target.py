"""What a QDMI device says about itself, in qhpc's words: its target and its state.

:func:`qdmi_target` reads a device's qubits, coupling map, operations, per-site
durations and fidelities and T1/T2 into a :class:`DeviceTarget`; :func:`resource_state`
maps QDMI's device status onto :class:`ResourceState` (which already uses QDMI's
vocabulary, so the mapping is by name).

QDMI reports durations as integers in a device-wide unit times a scale factor
(``mqt.sc.iqm.garnet``: unit ``us``, factor 0.001, i.e. nanoseconds); qhpc holds seconds.
A property may be global (``op.duration()``) or per placement (``op.duration(sites=…)``,
the default IQM/IBM descriptions give only the latter), so each operation is averaged
over its placements where it lists them. ``DeviceTarget``'s scalar figures are the
worst operation of each kind (the slowest and least faithful one- and two-qubit gate,
and ``measure``): a scheduler's estimate should not be optimistic. The per-operation
figures are in ``extra["operations"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean
from typing import Any

from mqt.core import qdmi
from qiskit.circuit import Gate
from qiskit.circuit.library import get_standard_gate_name_mapping

from qhpc.resources.base import ResourceState
from qhpc.resources.target import VIRTUAL_GATES, DeviceTarget

#: seconds per QDMI duration unit
SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12, "fs": 1e-15}
#: QDMI operation names whose Qiskit standard gate has another name
GATE_ALIASES = {"i": "id", "prx": "r", "u3": "u", "cnot": "cx", "cu3": "cu", "phase": "p"}
#: placements queried one by one per operation; a device listing more (a simulator's
#: 65535 sites) is described by the operation's global figures alone
MAX_PLACEMENTS = 4096


def resource_state(status: qdmi.Device.Status) -> ResourceState:
    """QDMI's device status as qhpc's state (same names); an unknown one is an error."""
    try:
        return ResourceState(status.name.lower())
    except ValueError:
        return ResourceState.ERROR


def _placements(op: qdmi.Device.Operation) -> list[list[qdmi.Device.Site]] | None:
    arity = op.qubits_num()
    if arity == 2:
        pairs = op.site_pairs()
        return None if pairs is None else [[a, b] for a, b in pairs]
    if arity == 1:
        sites = op.sites()
        return None if sites is None else [[s] for s in sites]
    return None


def _mean(values: Sequence[float | int | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return fmean(known) if known else None


def _operation(op: qdmi.Device.Operation, seconds: float | None) -> dict[str, Any]:
    """One operation's arity, parameters, mean duration (s) and error over its placements."""
    placements = _placements(op)
    if placements and len(placements) <= MAX_PLACEMENTS:
        duration = _mean([op.duration(sites=p) for p in placements])
        fidelity = _mean([op.fidelity(sites=p) for p in placements])
    else:
        duration, fidelity = _mean([op.duration()]), _mean([op.fidelity()])
    return {
        "qubits": op.qubits_num(),
        "parameters": op.parameters_num(),
        "placements": None if placements is None else len(placements),
        "duration": None if duration is None or seconds is None else duration * seconds,
        "error": None if fidelity is None else max(0.0, 1.0 - fidelity),
    }


def _seconds_per_raw(device: qdmi.Device) -> float | None:
    unit = device.duration_unit()
    if unit not in SECONDS_PER_UNIT:
        return None
    scale = device.duration_scale_factor()
    return SECONDS_PER_UNIT[unit] * (1.0 if scale is None else scale)


def _worst(operations: dict[str, dict[str, Any]], names: Sequence[str], key: str) -> float:
    values = [operations[n][key] for n in names if operations[n][key] is not None]
    return max(values, default=0.0)


def qdmi_target(
    name: str, device: qdmi.Device, *, max_shots: int, max_circuits: int
) -> DeviceTarget:
    """The target of ``device`` as it reports itself (see the module docstring)."""
    seconds = _seconds_per_raw(device)
    operations = {op.name(): _operation(op, seconds) for op in device.operations()}
    standard = get_standard_gate_name_mapping()
    basis: dict[str, str] = {}  # qiskit name -> device name
    for op_name, facts in operations.items():
        gate_name = GATE_ALIASES.get(op_name.lower(), op_name.lower())
        gate = standard.get(gate_name)
        if isinstance(gate, Gate) and facts["qubits"] in (None, gate.num_qubits):
            basis.setdefault(gate_name, op_name)
    one = [d for q, d in basis.items() if standard[q].num_qubits == 1 and q not in VIRTUAL_GATES]
    two = [d for q, d in basis.items() if standard[q].num_qubits == 2]
    readout = [n for n in operations if n.lower() == "measure"]
    coupling = device.coupling_map()
    num_qubits = device.qubits_num()
    sites = device.regular_sites() if num_qubits <= MAX_PLACEMENTS else []
    t1, t2 = _mean([s.t1() for s in sites]), _mean([s.t2() for s in sites])
    return DeviceTarget(
        name=name,
        num_qubits=num_qubits,
        basis_gates=tuple(basis),
        coupling_map=None
        if coupling is None
        else tuple((a.index(), b.index()) for a, b in coupling),
        max_shots=max_shots,
        max_circuits=max_circuits,
        single_qubit_error=_worst(operations, one, "error"),
        two_qubit_error=_worst(operations, two, "error"),
        readout_error=_worst(operations, readout, "error"),
        single_qubit_duration=_worst(operations, one, "duration"),
        two_qubit_duration=_worst(operations, two, "duration"),
        readout_duration=_worst(operations, readout, "duration"),
        t1=None if t1 is None or seconds is None else t1 * seconds,
        t2=None if t2 is None or seconds is None else t2 * seconds,
        extra={
            "device_id": device.id,
            "device_name": device.name(),
            "device_version": device.version(),
            "program_formats": [f.name for f in device.supported_program_formats()],
            "duration_unit": device.duration_unit(),
            "operations": operations,
        },
    )
