"""Read circuits from every accepted format into the one canonical form.

Accepted: OpenQASM 2, OpenQASM 3, cQASM v3 (analysed by libqasm), QPY
(Qiskit's binary format, possibly several circuits) and QIR (LLVM IR text or
bitcode, read by :mod:`qhpc.resources.qir`; one circuit per entry point). The
canonical internal form is Qiskit's ``QuantumCircuit``. Parse errors carry line
and column (QIR's semantic errors: function, block and instruction).

Sources are untrusted. Nothing here opens a file or a socket because of what a source
says: OpenQASM 2 may include only ``qelib1.inc`` and OpenQASM 3 only ``stdgates.inc``
(both built into the parsers), and every other ``include`` is refused before a
parser sees the text. Every circuit read is measured against a
:class:`~qhpc.resources.limits.DecodeLimits` budget before it is returned, and error
messages carry only the kind of problem, its place, and text the source itself holds.
"""

from __future__ import annotations

import contextlib
import enum
import io
import re
from pathlib import Path

from qiskit.circuit import QuantumCircuit

from qhpc.resources.cqasm import circuit_to_cqasm, cqasm_to_circuit
from qhpc.resources.errors import CircuitParseError, LimitExceeded, UnsupportedCircuitError
from qhpc.resources.limits import DEFAULT_LIMITS, DecodeLimits, measure_circuits
from qhpc.resources.qir import is_bitcode, is_qir_text, qir_to_circuits

QPY_MAGIC = b"QISKIT"
#: the only file each text format may include; the parsers carry these built in
ALLOWED_INCLUDES = {"qasm2": "qelib1.inc", "qasm3": "stdgates.inc"}


class CircuitFormat(enum.StrEnum):
    QASM2 = "qasm2"
    QASM3 = "qasm3"
    CQASM = "cqasm"
    QPY = "qpy"
    QIR = "qir"


_HEADER = re.compile(
    r"\A(?:\s|//[^\n]*\n|/\*.*?\*/)*(OPENQASM\s+(\d+)(?:\.\d+)?|version\s+(\d+)(?:\.\d+)?)",
    re.DOTALL,
)


def detect_format(source: str | bytes) -> CircuitFormat:
    """Tell the format from the content: QPY magic, LLVM bitcode magic (QIR),
    ``OPENQASM 2/3``, ``version 3``, or LLVM IR text using ``__quantum__`` names (QIR)."""
    if isinstance(source, bytes):
        if source.startswith(QPY_MAGIC):
            return CircuitFormat.QPY
        if is_bitcode(source):
            return CircuitFormat.QIR
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            why = "binary data that is not QPY or QIR bitcode"
            raise CircuitParseError("circuit", why) from None
    match = _HEADER.match(source)
    if match is None:
        if is_qir_text(source):
            return CircuitFormat.QIR
        raise CircuitParseError(
            "circuit",
            "unknown format: expected an 'OPENQASM 2.0;' / 'OPENQASM 3.0;' header, "
            "a cQASM 'version 3.0' line, QPY data, or QIR (LLVM IR or bitcode)",
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
    source: str | bytes | Path,
    fmt: CircuitFormat | str | None = None,
    name: str | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> list[QuantumCircuit]:
    """All circuits in ``source`` (text, bytes, or a path to a file), measured against
    ``limits`` (:class:`LimitExceeded` past one)."""
    deadline = limits.deadline()
    circuits = _parse(source, fmt, name, limits)
    measure_circuits(circuits, limits, deadline)
    return circuits


def _parse(
    source: str | bytes | Path,
    fmt: CircuitFormat | str | None,
    name: str | None,
    limits: DecodeLimits,
) -> list[QuantumCircuit]:
    if isinstance(source, Path):
        name = name or source.stem
        try:
            data: str | bytes = source.read_bytes()
        except OSError as exc:
            raise CircuitParseError("circuit", f"cannot read {source}: {exc.strerror}") from None
        source = data
    if len(source) > limits.max_source_bytes:
        raise LimitExceeded(
            "max_source_bytes",
            limits.max_source_bytes,
            f"a circuit source of {len(source)} bytes is too large",
        )
    kind = CircuitFormat(fmt) if fmt is not None else detect_format(source)
    if kind is CircuitFormat.QPY:
        return _load_qpy(source if isinstance(source, bytes) else source.encode(), name)
    if kind is CircuitFormat.QIR:
        return qir_to_circuits(source, name, limits)
    text = source.decode("utf-8", errors="replace") if isinstance(source, bytes) else source
    check_includes(text, kind)
    _check_declared_sizes(text, kind, limits.max_register_bits)
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
        raise CircuitParseError("circuit", f"expected one circuit, found {len(circuits)}")
    return circuits[0]


def dump_circuit(circuit: QuantumCircuit, fmt: CircuitFormat | str) -> str | bytes:
    """Write ``circuit`` in ``fmt`` (QPY gives bytes, the rest text; QIR is read only)."""
    kind = CircuitFormat(fmt)
    if kind is CircuitFormat.QIR:
        raise UnsupportedCircuitError(
            "qhpc reads QIR but does not write it; a circuit read from QIR keeps its "
            "program in circuit.metadata['qhpc_qir']"
        )
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
_FORMAT_NAMES = {
    CircuitFormat.QASM2: "OpenQASM 2",
    CircuitFormat.QASM3: "OpenQASM 3",
    CircuitFormat.CQASM: "cqasm",
    CircuitFormat.QPY: "qpy",
    CircuitFormat.QIR: "qir",
}
_INCLUDE = re.compile(r"\binclude\b")
# What may stand between ``include`` and its file name: blanks and comments.
_GAP = re.compile(r"(?:\s|//[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_FILE_NAME = re.compile(r"\"([^\"\n]*)\"|'([^'\n]*)'")


def check_includes(text: str, kind: CircuitFormat) -> None:
    """Refuse every ``include`` but the format's built-in gate library, before parsing.

    Deliberately blunt: each ``include`` word counts, even inside a comment, so no
    difference between this scan and a parser's lexer can let a file name through.
    The refusal names the include (text the tenant sent) and its place.
    """
    allowed = ALLOWED_INCLUDES.get(kind.value)
    for match in _INCLUDE.finditer(text):
        after = _GAP.match(text, match.end())
        start = after.end() if after else match.end()
        quoted = _FILE_NAME.match(text, start)
        found = None if quoted is None else (quoted[1] if quoted[1] is not None else quoted[2])
        if found is not None and found == allowed:
            continue
        line = text.count("\n", 0, match.start()) + 1
        column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
        shown = "" if found is None else f" {found[:100]!r}"
        only = f"only {allowed!r} may be included" if allowed else "no include is accepted"
        raise CircuitParseError(
            _FORMAT_NAMES[kind], f"include{shown} is refused: {only}", line, column
        )


def _check_declared_sizes(text: str, kind: CircuitFormat, limit: int) -> None:
    total = 0
    for match in _DECLARATION.finditer(text):
        size = int(match[1][:12])  # a 1000-digit number is just "too big"
        total += size
        if size > limit or total > 2 * limit:
            line = text.count("\n", 0, match.start()) + 1
            raise LimitExceeded(
                "max_register_bits",
                limit,
                f"{_FORMAT_NAMES[kind]} source declares a register of {size} (qu)bits at "
                f"line {line}; at most the limit per register and twice it in all",
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
