"""Read circuits from every accepted format into the one canonical form.

Accepted: OpenQASM 2, OpenQASM 3, cQASM v3 (analysed by libqasm) and QPY
(Qiskit's binary format, possibly several circuits). The canonical internal
form is Qiskit's ``QuantumCircuit``. Parse errors carry line and column.
"""

from __future__ import annotations

import contextlib
import enum
import io
import re
from pathlib import Path

from qiskit.circuit import QuantumCircuit

from qhpc.resources.cqasm import circuit_to_cqasm, cqasm_to_circuit
from qhpc.resources.errors import CircuitParseError, UnsupportedCircuitError

QPY_MAGIC = b"QISKIT"
#: largest circuit source accepted (a guard against accidental multi-GB uploads)
MAX_SOURCE_BYTES = 16 * 1024 * 1024
#: widest register a source may declare: a 20-byte "qreg q[100000000];" would
#: otherwise cost the parser gigabytes before any resource limit is checked
MAX_DECLARED_BITS = 4096


class CircuitFormat(enum.StrEnum):
    QASM2 = "qasm2"
    QASM3 = "qasm3"
    CQASM = "cqasm"
    QPY = "qpy"


_HEADER = re.compile(
    r"\A(?:\s|//[^\n]*\n|/\*.*?\*/)*(OPENQASM\s+(\d+)(?:\.\d+)?|version\s+(\d+)(?:\.\d+)?)",
    re.DOTALL,
)


def detect_format(source: str | bytes) -> CircuitFormat:
    """Tell the format from the content: QPY magic, ``OPENQASM 2/3`` or ``version 3``."""
    if isinstance(source, bytes):
        if source.startswith(QPY_MAGIC):
            return CircuitFormat.QPY
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            raise CircuitParseError("circuit", "binary data that is not QPY") from None
    match = _HEADER.match(source)
    if match is None:
        raise CircuitParseError(
            "circuit",
            "unknown format: expected an 'OPENQASM 2.0;' / 'OPENQASM 3.0;' header, "
            "a cQASM 'version 3.0' line, or QPY data",
            line=1,
            column=1,
        )
    if match.group(2) is not None:
        major = match.group(2)
        if major == "2":
            return CircuitFormat.QASM2
        if major == "3":
            return CircuitFormat.QASM3
        raise CircuitParseError("openqasm", f"unsupported OpenQASM version {major}", line=1)
    if match.group(3) == "3":
        return CircuitFormat.CQASM
    raise CircuitParseError(
        "cqasm", f"unsupported cQASM version {match.group(3)}; only v3 is accepted", line=1
    )


def load_circuits(
    source: str | bytes | Path, fmt: CircuitFormat | str | None = None, name: str | None = None
) -> list[QuantumCircuit]:
    """All circuits in ``source`` (text, bytes, or a path to a file)."""
    if isinstance(source, Path):
        name = name or source.stem
        try:
            data: str | bytes = source.read_bytes()
        except OSError as exc:
            raise CircuitParseError("circuit", f"cannot read {source}: {exc.strerror}") from None
        source = data
    if len(source) > MAX_SOURCE_BYTES:
        raise CircuitParseError(
            "circuit", f"source of {len(source)} bytes exceeds the {MAX_SOURCE_BYTES}-byte limit"
        )
    kind = CircuitFormat(fmt) if fmt is not None else detect_format(source)
    if kind is CircuitFormat.QPY:
        return _load_qpy(source if isinstance(source, bytes) else source.encode(), name)
    text = source.decode("utf-8", errors="replace") if isinstance(source, bytes) else source
    if kind in (CircuitFormat.QASM2, CircuitFormat.QASM3):
        _check_declared_sizes(text, kind)
    if kind is CircuitFormat.QASM2:
        circuit = _load_qasm2(text)
    elif kind is CircuitFormat.QASM3:
        circuit = _load_qasm3(text)
    else:
        circuit = cqasm_to_circuit(text, name=name or "cqasm")
    if name:
        circuit.name = name
    return [circuit]


def load_circuit(
    source: str | bytes | Path, fmt: CircuitFormat | str | None = None, name: str | None = None
) -> QuantumCircuit:
    """Exactly one circuit from ``source``."""
    circuits = load_circuits(source, fmt, name)
    if len(circuits) != 1:
        raise CircuitParseError("qpy", f"expected one circuit, found {len(circuits)}")
    return circuits[0]


def dump_circuit(circuit: QuantumCircuit, fmt: CircuitFormat | str) -> str | bytes:
    """Write ``circuit`` in ``fmt`` (QPY gives bytes, the rest text)."""
    kind = CircuitFormat(fmt)
    if kind is CircuitFormat.QPY:
        from qiskit import qpy

        buffer = io.BytesIO()
        qpy.dump(circuit, buffer)
        return buffer.getvalue()
    if kind is CircuitFormat.QASM2:
        from qiskit import qasm2

        try:
            return str(qasm2.dumps(circuit))
        except Exception as exc:
            raise UnsupportedCircuitError(f"cannot write OpenQASM 2: {exc}") from exc
    if kind is CircuitFormat.QASM3:
        from qiskit import qasm3

        return str(qasm3.dumps(circuit))
    return circuit_to_cqasm(circuit)


_DECLARATION = re.compile(r"\b(?:qreg|creg|qubit|bit)\s*\w*\s*\[\s*(\d+)\s*\]")


def _check_declared_sizes(text: str, kind: CircuitFormat) -> None:
    total = 0
    for match in _DECLARATION.finditer(text):
        size = int(match[1][:12])  # a 1000-digit number is just "too big"
        total += size
        if size > MAX_DECLARED_BITS or total > 2 * MAX_DECLARED_BITS:
            line = text.count("\n", 0, match.start()) + 1
            raise CircuitParseError(
                "OpenQASM 2" if kind is CircuitFormat.QASM2 else "OpenQASM 3",
                f"declares {size} (qu)bits; at most {MAX_DECLARED_BITS} per register and "
                f"{2 * MAX_DECLARED_BITS} in all are accepted",
                line=line,
            )


_QASM2_POSITION = re.compile(r"<input>:(\d+),(\d+):\s*(.*)", re.DOTALL)
_QASM3_POSITION = re.compile(r"line (\d+):(\d+)\s+(.*)")
_QASM3_IMPORTER_POSITION = re.compile(r"\A(\d+),(\d+):\s*(.*)", re.DOTALL)


def _load_qasm2(text: str) -> QuantumCircuit:
    from qiskit import qasm2

    try:
        return qasm2.loads(text, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    except qasm2.QASM2ParseError as exc:
        message = str(exc)
        match = _QASM2_POSITION.search(message)
        if match:
            # qiskit's qasm2 reports 1-based lines but 0-based columns
            line, column, detail = int(match[1]), int(match[2]) + 1, match[3].strip().strip("'\"")
            raise CircuitParseError("OpenQASM 2", detail, line, column) from None
        raise CircuitParseError("OpenQASM 2", message) from None


def _load_qasm3(text: str) -> QuantumCircuit:
    from qiskit import qasm3

    # The ANTLR parser prints syntax errors to stderr and raises an empty
    # exception; capture what it printed to report the position.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            return qasm3.loads(text)
    except Exception as exc:
        match = _QASM3_POSITION.search(printed.getvalue())
        if match:
            # ANTLR: 1-based line, 0-based column
            raise CircuitParseError(
                "OpenQASM 3", match[3].strip(), int(match[1]), int(match[2]) + 1
            ) from None
        message = str(exc).strip("'\"") or type(exc).__name__
        match = _QASM3_IMPORTER_POSITION.match(message)
        if match:
            raise CircuitParseError(
                "OpenQASM 3", match[3].strip(), int(match[1]), int(match[2]) + 1
            ) from None
        raise CircuitParseError("OpenQASM 3", message) from None


def _load_qpy(data: bytes, name: str | None) -> list[QuantumCircuit]:
    from qiskit import qpy

    try:
        circuits = qpy.load(io.BytesIO(data))
    except Exception as exc:
        raise CircuitParseError("qpy", f"unreadable QPY data: {exc}") from None
    out = [c for c in circuits if isinstance(c, QuantumCircuit)]
    if len(out) != len(circuits):
        raise CircuitParseError("qpy", "QPY file holds schedules, not only circuits")
    if not out:
        raise CircuitParseError("qpy", "QPY file holds no circuits")
    return out
