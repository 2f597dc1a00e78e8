"""Circuits into QDMI programs, and QDMI histograms back into qhpc's counts.

A QDMI job carries programs of one format. qhpc writes:

- **QIR** (text, base or adaptive profile) when every circuit of a task was read from
  QIR — its ``metadata["qhpc_qir"]`` holds the LLVM IR text it was read from — and the
  device takes that profile (a base-profile program also runs as adaptive): the device
  then runs exactly what the tenant sent. Only a module whose one defined function is
  the circuit's entry point (``metadata["qhpc_qir_entry_point"]``), returning ``i64``,
  goes as QIR: a module of several entry points travels whole with each of its
  circuits, and a device picking an entry itself could run another program than the
  circuit qhpc checked, estimated and accounts for (DDSIM refuses such a module);
- else **OpenQASM 2** where the device takes it and the circuits fit it (its registers
  start at zero, so a partly measured register reads as Qiskit's);
- else **OpenQASM 3**, every classical register first set to zero: OpenQASM 3 bits
  start undefined, and mqt-core's DDSIM device refuses an output register that is not
  fully written.

Results come back as histograms keyed by bitstrings with classical bit 0 rightmost
(Qiskit's order; QIR: result 0 rightmost), checked here before qhpc trusts them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mqt.core import qdmi
from qiskit import qasm2, qasm3
from qiskit.circuit import QuantumCircuit

from qhpc.resources.errors import PayloadError, TaskFailedError, UnsupportedPayloadError
from qhpc.resources.limits import DEFAULT_LIMITS
from qhpc.resources.payload import normalise_counts
from qhpc.resources.qir import QIR_ENTRY_METADATA, QIR_METADATA

Format = qdmi.ProgramFormat
#: every place that might be LLVM's ``define`` keyword; over-counting (a comment, a
#: string, a name that says "define") only sends the circuit as OpenQASM
_DEFINE_WORD = re.compile(r"\bdefine\b")
#: the one definition: what precedes the name (linkage, attributes, the return type
#: last; LLVM allows newlines between them), then the name, plain or quoted
_DEFINE = re.compile(r'\bdefine\b([^@]*)@("[^"]*"|[-a-zA-Z$._][-a-zA-Z$._0-9]*)')
_PROFILE = re.compile(r'"qir_profiles"\s*=\s*"([A-Za-z_]+)"')
#: the QIR formats that run a program of each profile, preferred first
_QIR_FORMATS = {
    "base_profile": (Format.QIR_BASE_STRING, Format.QIR_ADAPTIVE_STRING),
    "adaptive_profile": (Format.QIR_ADAPTIVE_STRING,),
}


@dataclass(frozen=True)
class Programs:
    """One task's programs, in circuit order, and the format they are written in."""

    texts: tuple[str, ...]
    format: qdmi.ProgramFormat


def qir_profile(text: str, circuit: QuantumCircuit | None = None) -> str:
    """The QIR profile a module declares (``base_profile`` if it declares none).

    Generators also write profiles of their own (pyqir's builder: ``custom``). Such a
    module was read instruction by instruction into ``circuit`` (qhpc.resources.qir
    refuses what it does not know), so the circuit tells which standard profile it
    fits: base without control flow, adaptive with it."""
    match = _PROFILE.search(text)
    declared = match.group(1) if match else "base_profile"
    if declared in _QIR_FORMATS or circuit is None:
        return declared
    branches = any(instruction.operation.name == "if_else" for instruction in circuit.data)
    return "adaptive_profile" if branches else "base_profile"


def _runs_as_entry(text: str, entry: object) -> bool:
    """True when ``text`` defines one function, the entry point ``entry``, returning i64.

    Read from the text, not by parsing it again: LLVM reads tenants' modules only in the
    decoding workers. Anything unusual answers False, which costs only the QIR route."""
    if not isinstance(entry, str) or len(_DEFINE_WORD.findall(text)) != 1:
        return False
    match = _DEFINE.search(text)
    if match is None:
        return False
    before, name = match.group(1).split(), match.group(2)
    if name.startswith('"'):
        name = name[1:-1]
        if "\\" in name:  # an escape (\XX): not worth decoding to compare
            return False
    # QIR 2.0 entry points return an i64 exit code, and DDSIM refuses the older ``void``
    # form (pyqir 0.12's builder still writes it)
    return name == entry and bool(before) and before[-1] == "i64"


def _qir(circuits: Sequence[QuantumCircuit], formats: set[qdmi.ProgramFormat]) -> Programs | None:
    texts = []
    chosen: set[qdmi.ProgramFormat] = set()
    for index, circuit in enumerate(circuits):
        metadata = circuit.metadata or {}
        text = metadata.get(QIR_METADATA)
        if not isinstance(text, str):
            return None
        if len(text.encode("utf-8")) > DEFAULT_LIMITS.max_source_bytes:
            raise PayloadError(
                f"circuit {index}: its QIR is larger than {DEFAULT_LIMITS.max_source_bytes} bytes"
            )
        if not _runs_as_entry(text, metadata.get(QIR_ENTRY_METADATA)):
            # The circuit was read from every instruction of its entry point, so it runs
            # as OpenQASM instead: the same program, without the choice of entry.
            return None
        usable = [f for f in _QIR_FORMATS.get(qir_profile(text, circuit), ()) if f in formats]
        if not usable:
            return None
        chosen.add(usable[0])
        texts.append(text)
    if len(chosen) != 1:  # base and adaptive programs in one task: run them all as adaptive
        if Format.QIR_ADAPTIVE_STRING not in formats:
            return None
        chosen = {Format.QIR_ADAPTIVE_STRING}
    return Programs(tuple(texts), chosen.pop())


def _qasm3(circuit: QuantumCircuit) -> str:
    start = circuit.copy_empty_like(vars_mode="drop")
    start.global_phase = 0
    for register in start.cregs:
        start.store(register, 0)
    for bit in start.clbits:
        if not start.find_bit(bit).registers:
            start.store(bit, False)
    return str(qasm3.dumps(start.compose(circuit)))


def build_programs(
    circuits: Sequence[QuantumCircuit], formats: Sequence[qdmi.ProgramFormat], device: str
) -> Programs:
    """The programs for ``circuits`` in the best format the device takes (module docstring)."""
    offered = set(formats)
    qir = _qir(circuits, offered)
    if qir is not None:
        return qir
    failures = []
    for fmt, write in ((Format.QASM2, qasm2.dumps), (Format.QASM3, _qasm3)):
        if fmt not in offered:
            continue
        try:
            return Programs(tuple(str(write(c)) for c in circuits), fmt)
        except Exception as exc:  # the exporter's own message names the instruction
            failures.append(f"{fmt.name}: {exc}")
    if failures:
        raise UnsupportedPayloadError(
            f"{device}: cannot write the circuits in a format the device takes "
            f"({'; '.join(failures)})"
        )
    reported = ", ".join(f.name for f in formats) or "none (it describes a device, runs nothing)"
    raise UnsupportedPayloadError(
        f"{device}: the device takes no program format qhpc writes (OpenQASM 2, OpenQASM 3, "
        f"QIR text); it reports: {reported}"
    )


def decode_counts(raw: Mapping[str, int], width: int, where: str) -> dict[str, int]:
    """A device histogram as qhpc's counts (``width`` bits, bit 0 rightmost), checked."""
    for key, value in raw.items():
        if not isinstance(key, str) or key.strip("01") or len(key) > width:
            shown = key[:80] if isinstance(key, str) else type(key).__name__
            raise TaskFailedError(
                f"{where}: the device returned the outcome {shown!r} for a circuit with "
                f"{width} classical bits"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TaskFailedError(f"{where}: the device returned a count that is not a number")
    return normalise_counts(raw, width)


def decode_shots(raw: Sequence[str], width: int, where: str) -> tuple[str, ...]:
    """Per-shot outcomes, checked like :func:`decode_counts`."""
    decode_counts(dict.fromkeys(raw, 1), width, where)
    return tuple(bits.zfill(width) for bits in raw)
