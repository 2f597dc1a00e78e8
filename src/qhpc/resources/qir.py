"""Read QIR (the LLVM-based Quantum Intermediate Representation) into Qiskit circuits.

QIR arrives as LLVM IR text (``.ll``) or bitcode (``.bc``, raw or in its wrapper), in
the base or the adaptive profile, with typed (``%Qubit*``) or opaque (``ptr``)
pointers; pyqir (LLVM inside) parses it, which reads typed pointers as opaque ones.
Each entry point (a function with the ``entry_point`` attribute) becomes one
``QuantumCircuit``: qubit *i* is the pointer constant ``i`` (``null`` is 0,
``inttoptr (i64 i to ptr)`` is *i*), result *j* is clbit *j*, so counts read result 0
rightmost, as Qiskit reads clbit 0. ``required_num_qubits`` / ``required_num_results``
give the widths when present (an id past them is an error), else the largest id used.

Supported, in the entry point's blocks: the gates of :data:`GATES` (``__quantum__qis__
<name>__body``, ``s``/``t`` adjoints), ``mz``/``m`` (measure), ``mresetz``, ``reset``,
``barrier``, ``__quantum__rt__initialize`` (a no-op), output recording (result, array,
tuple: checked and listed in ``metadata["qhpc_qir_output"]``, the counts stay per
clbit), unconditional forward branches, and, of the adaptive profile, a conditional
branch on ``__quantum__qis__read_result__body`` that rejoins (if/else, nested), which
becomes ``if_test``. Anything else (loops, classical arithmetic, phi, calls into
defined functions, dynamic qubits, angles that are not constants) is refused with
``unsupported construct at <function>:<block>:<instruction index>: …`` (an unknown
``__quantum__`` name: ``unknown intrinsic …``; a wrong argument count: ``… takes N
argument(s)``, both with the same place).

The program itself travels on: ``metadata["qhpc_qir"]`` holds the LLVM IR text (the
source as sent, or bitcode printed by LLVM) and ``metadata["qhpc_qir_entry_point"]``
the function, for resources that take QIR natively. :func:`check_qir_metadata` makes
sure a circuit sent as QPY with that metadata is the circuit its QIR describes.

Sources are untrusted: LLVM parses them from memory (no file is named or opened; IR
has no includes), the text kept is bounded by ``max_source_bytes``, the walk by
``max_operations`` instructions, ``max_depth`` nested branches and the deadline; the
broker runs all of it in its decoding workers (:mod:`qhpc.resources.decoding`).
pyqir reads constants through LLVM's C API, which crashes on a value of the wrong kind,
so ids and labels are read from LLVM's own printing of a value, never by casting it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pyqir
from qiskit.circuit import QuantumCircuit

from qhpc.resources.errors import CircuitParseError, LimitExceeded, PayloadError
from qhpc.resources.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "GATES",
    "QIR_ENTRY_METADATA",
    "QIR_METADATA",
    "check_qir_metadata",
    "drop_qir_metadata",
    "is_bitcode",
    "is_qir_text",
    "qir_to_circuits",
]

BITCODE_MAGIC = b"BC\xc0\xde"
#: the bitcode wrapper's magic (0x0B17C0DE, little-endian), as Apple's toolchains write it
BITCODE_WRAPPER_MAGIC = b"\xde\xc0\x17\x0b"
QIR_METADATA = "qhpc_qir"
QIR_ENTRY_METADATA = "qhpc_qir_entry_point"
QIR_OUTPUT_METADATA = "qhpc_qir_output"
_FORMAT = "qir"
#: buffer name LLVM puts in front of its messages (never a file: parsing is from memory)
_BUFFER = "qir"

#: QIS name -> (Qiskit gate, angles, qubits); ``__body`` unless the name says ``__adj``
GATES: dict[str, tuple[str, int, int]] = {
    "h": ("h", 0, 1), "x": ("x", 0, 1), "y": ("y", 0, 1), "z": ("z", 0, 1),
    "s": ("s", 0, 1), "s__adj": ("sdg", 0, 1), "t": ("t", 0, 1), "t__adj": ("tdg", 0, 1),
    "sx": ("sx", 0, 1), "rx": ("rx", 1, 1), "ry": ("ry", 1, 1), "rz": ("rz", 1, 1),
    "cnot": ("cx", 0, 2), "cx": ("cx", 0, 2), "cy": ("cy", 0, 2), "cz": ("cz", 0, 2),
    "swap": ("swap", 0, 2), "rxx": ("rxx", 1, 2), "ryy": ("ryy", 1, 2), "rzz": ("rzz", 1, 2),
    "ccx": ("ccx", 0, 3), "ccnot": ("ccx", 0, 3),
}  # fmt: skip
_QIS = "__quantum__qis__"
_MEASURES = {f"{_QIS}mz__body", f"{_QIS}m__body"}
_READS = {f"{_QIS}read_result__body", "__quantum__rt__read_result"}
_OUTPUTS = {
    "__quantum__rt__result_record_output": "result",
    "__quantum__rt__array_record_output": "array",
    "__quantum__rt__tuple_record_output": "tuple",
}
_TEXT_MARKER = re.compile(r"^[ \t]*(?:define|declare)\b", re.MULTILINE)
_LLVM_ERROR = re.compile(rf"\A{_BUFFER}:(\d+):(\d+):\s*error:\s*([^\n]*)")
_STATIC_ID = re.compile(r"\Aptr (?:(null)|inttoptr \(i(?:64|32) (\d{1,20}) to ptr\))\Z")
_LABEL = re.compile(r'c"((?:[^"\\]|\\[0-9A-Fa-f]{2})*)"')
_CLOCK_EVERY = 256


def is_bitcode(data: bytes) -> bool:
    """LLVM bitcode, raw (``BC\\xC0\\xDE``) or in its wrapper."""
    return data.startswith(BITCODE_MAGIC) or data.startswith(BITCODE_WRAPPER_MAGIC)


def is_qir_text(text: str) -> bool:
    """LLVM IR text that uses QIR: a ``define``/``declare`` line and a ``__quantum__`` name."""
    return "__quantum__" in text and _TEXT_MARKER.search(text) is not None


def qir_to_circuits(
    source: str | bytes, name: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> list[QuantumCircuit]:
    """One circuit per entry point of a QIR module (text or bitcode); see the module doc.

    Raises :class:`CircuitParseError` (with line and column for LLVM's syntax errors,
    with ``<function>:<block>:<instruction>`` for what cannot be converted) and
    :class:`LimitExceeded`. The circuits are not measured here (the caller does)."""
    deadline = limits.deadline()
    try:
        module, text = _parse(source, limits)
        entries = [f for f in module.functions if pyqir.is_entry_point(f)]
        if not entries:
            raise CircuitParseError(
                _FORMAT, 'no entry point: no function has the "entry_point" attribute'
            )
        if len(entries) > limits.max_circuits:
            raise LimitExceeded("max_circuits", limits.max_circuits, "too many entry points")
        budget = _Budget(limits, deadline)
        circuits = []
        for function in entries:
            circuit = _Converter(function, budget).circuit()
            if name and len(entries) == 1:
                circuit.name = name
            circuit.metadata = {
                QIR_METADATA: text,
                QIR_ENTRY_METADATA: function.name,
                **circuit.metadata,
            }
            circuits.append(circuit)
        return circuits
    except BaseException as exc:
        # pyo3 turns a Rust panic (e.g. an attribute that is not UTF-8) into
        # PanicException, a BaseException: a refusal, not a reason to stop the worker
        if type(exc).__name__ == "PanicException":
            raise CircuitParseError(_FORMAT, "pyqir could not read this module") from None
        raise


def check_qir_metadata(
    circuits: Iterable[QuantumCircuit], limits: DecodeLimits = DEFAULT_LIMITS
) -> None:
    """Refuse a circuit whose ``metadata["qhpc_qir"]`` is not the program of its gates.

    A resource that takes QIR runs that text instead of the circuit, so a circuit sent
    as QPY must not carry QIR it does not match (nor QIR that was never checked). The
    text is a source like any other: bounded by ``max_source_bytes`` before LLVM reads
    it (:class:`LimitExceeded`)."""
    for index, circuit in enumerate(circuits):
        metadata = circuit.metadata or {}
        if QIR_METADATA not in metadata:
            continue
        text, entry = metadata.get(QIR_METADATA), metadata.get(QIR_ENTRY_METADATA)
        if not isinstance(text, str) or not isinstance(entry, str):
            raise PayloadError(f"circuit {index}: its QIR metadata is not text")
        size = len(text.encode("utf-8"))
        if size > limits.max_source_bytes:
            raise LimitExceeded(
                "max_source_bytes",
                limits.max_source_bytes,
                f"circuit {index}: its QIR metadata of {size} bytes is too large",
            )
        try:
            converted = qir_to_circuits(text, limits=limits)
            found = [c for c in converted if c.metadata[QIR_ENTRY_METADATA] == entry]
        except CircuitParseError as exc:
            why = f"circuit {index}: its QIR metadata is not valid QIR: {exc}"
            raise PayloadError(why) from None
        if len(found) != 1 or found[0] != circuit:
            raise PayloadError(
                f"circuit {index} carries QIR (metadata {QIR_METADATA!r}) that does not "
                "describe its gates; send the QIR source itself, or drop that metadata "
                "after changing the circuit"
            )


def drop_qir_metadata(circuit: QuantumCircuit) -> QuantumCircuit:
    """``circuit`` without the QIR it was read from (a copy; the same object if it has
    none): for code that changes a circuit's gates, e.g. the ``Transpile`` plugin, so
    the changed circuit is not refused by :func:`check_qir_metadata`."""
    metadata = circuit.metadata or {}
    if QIR_METADATA not in metadata:
        return circuit
    copy = circuit.copy()
    copy.metadata = {k: v for k, v in metadata.items() if not k.startswith("qhpc_qir")}
    return copy


def _parse(source: str | bytes, limits: DecodeLimits) -> tuple[pyqir.Module, str]:
    context = pyqir.Context()
    if isinstance(source, bytes) and is_bitcode(source):
        try:
            module = pyqir.Module.from_bitcode(context, source, _BUFFER)
        except ValueError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise CircuitParseError(_FORMAT, f"unreadable bitcode: {detail}") from None
        text = str(module)
        if len(text.encode("utf-8")) > limits.max_source_bytes:
            raise LimitExceeded(
                "max_source_bytes",
                limits.max_source_bytes,
                "this QIR bitcode prints to too much LLVM IR text",
            )
    else:
        if isinstance(source, bytes):
            try:
                text = source.decode("utf-8")
            except UnicodeDecodeError:
                raise CircuitParseError(_FORMAT, "text that is not UTF-8") from None
        else:
            text = source
        try:
            module = pyqir.Module.from_ir(context, text, _BUFFER)
        except ValueError as exc:
            match = _LLVM_ERROR.match(str(exc))
            if match is None:
                raise CircuitParseError(_FORMAT, "unreadable LLVM IR") from None
            line, column = int(match[1]), int(match[2])
            raise CircuitParseError(_FORMAT, match[3].strip(), line, column) from None
    problem = module.verify()
    if problem is not None:
        first = problem.strip().splitlines()[0] if problem.strip() else "invalid module"
        raise CircuitParseError(_FORMAT, f"LLVM's verifier refused the module: {first}")
    return module, text


@dataclass
class _Budget:
    """Instructions walked by one request, against ``max_operations`` and the deadline."""

    limits: DecodeLimits
    deadline: float
    steps: int = 0

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > self.limits.max_operations:
            raise LimitExceeded(
                "max_operations",
                self.limits.max_operations,
                "the QIR module has too many instructions to walk",
            )
        if self.steps % _CLOCK_EVERY < count and time.monotonic() > self.deadline:
            raise LimitExceeded("max_seconds", self.limits.max_seconds, "reading QIR took too long")


@dataclass
class _Region:
    """What one straight stretch of blocks does: gates, measurements, nested ifs."""

    items: list[tuple[Any, ...]] = field(default_factory=list)


class _Converter:
    """Walks one entry point's blocks into a :class:`_Region` tree, then a circuit."""

    def __init__(self, function: pyqir.Function, budget: _Budget) -> None:
        self.function = function
        self.name = function.name
        self.budget = budget
        self.limits = budget.limits
        self.blocks = function.basic_blocks
        self.index = {block: i for i, block in enumerate(self.blocks)}
        self.visited: set[pyqir.BasicBlock] = set()
        self.reads: dict[pyqir.Value, int] = {}
        self.outputs: list[list[Any]] = []
        self.max_qubit = self.max_result = -1

    def circuit(self) -> QuantumCircuit:
        if self.function.params:
            self._unsupported("an entry point that takes parameters", None, None)
        if not self.blocks:
            raise CircuitParseError(_FORMAT, f"entry point {self.name!r} has no body")
        region = self._region(self.blocks[0], None, 0)
        qubits = self._width(pyqir.required_num_qubits(self.function), self.max_qubit, "qubit")
        results = self._width(pyqir.required_num_results(self.function), self.max_result, "result")
        circuit = QuantumCircuit(qubits, results, name=self.name)
        self._emit(circuit, region)
        circuit.metadata = {QIR_OUTPUT_METADATA: self.outputs}
        return circuit

    def _width(self, declared: int | None, largest: int, what: str) -> int:
        if declared is not None and declared > self.limits.max_register_bits:
            raise LimitExceeded(
                "max_register_bits",
                self.limits.max_register_bits,
                f"entry point {self.name!r} requires {declared} {what}s",
            )
        if declared is not None and largest >= declared:
            raise CircuitParseError(
                _FORMAT,
                f"{what} {largest} is used but entry point {self.name!r} declares "
                f"required_num_{what}s={declared}",
            )
        return declared if declared is not None else largest + 1

    # -- the walk ----------------------------------------------------------------------

    def _region(
        self, block: pyqir.BasicBlock, stop: pyqir.BasicBlock | None, depth: int
    ) -> _Region:
        if depth > self.limits.max_depth:
            raise LimitExceeded("max_depth", self.limits.max_depth, "QIR branches nest too deeply")
        region = _Region()
        current: pyqir.BasicBlock | None = block
        while current is not None and current != stop:
            if current in self.visited:
                self._unsupported("a branch back to an earlier block (a loop)", current, None)
            self.visited.add(current)
            instructions = current.instructions
            self.budget.step(len(instructions))
            for position, instruction in enumerate(instructions[:-1]):
                self._instruction(instruction, region, current, position)
            current = self._next(current, instructions, region, stop, depth)
        return region

    def _next(
        self,
        block: pyqir.BasicBlock,
        instructions: list[pyqir.Instruction],
        region: _Region,
        stop: pyqir.BasicBlock | None,
        depth: int,
    ) -> pyqir.BasicBlock | None:
        last = len(instructions) - 1
        terminator = instructions[last] if instructions else None
        if terminator is None:
            self._unsupported("a block without a terminator", block, 0)
        opcode = terminator.opcode
        if opcode == pyqir.Opcode.RET:
            if stop is not None:
                self._unsupported("a return inside a conditional branch", block, last)
            return None
        if opcode != pyqir.Opcode.BR:
            self._unsupported(f"the terminator {_opcode(opcode)}", block, last)
        operands = terminator.operands
        if len(operands) == 1:
            return self._block(operands[0], block, last)
        result = self.reads.get(operands[0])
        if result is None:
            self._unsupported(
                "a branch on a value that is not a read measurement result", block, last
            )
        taken, other = self._block(operands[2], block, last), self._block(operands[1], block, last)
        merge = self._merge(taken, other)
        if merge is None:
            self._unsupported("branches that do not join again", block, last)
        then = self._region(taken, merge, depth + 1)
        orelse = self._region(other, merge, depth + 1)
        region.items.append(("if", result, then, orelse))
        return merge

    def _block(
        self, value: pyqir.Value, block: pyqir.BasicBlock, position: int
    ) -> pyqir.BasicBlock:
        if not isinstance(value, pyqir.BasicBlock) or value not in self.index:
            self._unsupported("a branch to something that is not a block", block, position)
        if value in self.visited:
            self._unsupported("a branch back to an earlier block (a loop)", block, position)
        return value

    def _merge(self, taken: pyqir.BasicBlock, other: pyqir.BasicBlock) -> pyqir.BasicBlock | None:
        """Where two branches join: the first block reached from ``other`` (breadth first)
        that ``taken`` reaches too; each branch is then walked up to it and no further."""
        reach = self._reachable(taken)
        for candidate in self._breadth_first(other):
            if candidate in reach:
                return candidate
        return None

    def _breadth_first(self, start: pyqir.BasicBlock) -> list[pyqir.BasicBlock]:
        order, seen = [start], {start}
        for block in order:
            terminator = block.terminator
            successors = terminator.successors if terminator is not None else []
            self.budget.step(1 + len(successors))
            for successor in successors:
                if successor not in seen:
                    seen.add(successor)
                    order.append(successor)
        return order

    def _reachable(self, start: pyqir.BasicBlock) -> set[pyqir.BasicBlock]:
        return set(self._breadth_first(start))

    def _instruction(
        self,
        instruction: pyqir.Instruction,
        region: _Region,
        block: pyqir.BasicBlock,
        position: int,
    ) -> None:
        if not isinstance(instruction, pyqir.Call):
            self._unsupported(f"the instruction {_opcode(instruction.opcode)}", block, position)
        callee = instruction.callee
        if not isinstance(callee, pyqir.Function):
            self._unsupported("an indirect call", block, position)
        name = callee.name
        if callee.basic_blocks:
            self._unsupported(f"a call of the defined function {name!r}", block, position)
        args = instruction.args
        at = (block, position)
        if name.startswith(_QIS) and name.endswith(("__body", "__adj")):
            key = name[len(_QIS) :].removesuffix("__body")
            if key in GATES:
                gate, angles, qubits = GATES[key]
                self._arity(name, args, angles + qubits, at)
                params = [self._angle(a, at) for a in args[:angles]]
                targets = [self._qubit(a, at) for a in args[angles:]]
                region.items.append(("gate", gate, params, targets))
                return
        if name in _MEASURES or name == f"{_QIS}mresetz__body":
            self._arity(name, args, 2, at)
            qubit, result = self._qubit(args[0], at), self._result(args[1], at)
            region.items.append(("measure", qubit, result))
            if name == f"{_QIS}mresetz__body":
                region.items.append(("reset", qubit))
        elif name == f"{_QIS}reset__body":
            self._arity(name, args, 1, at)
            region.items.append(("reset", self._qubit(args[0], at)))
        elif name in _READS:
            self._arity(name, args, 1, at)
            self.reads[instruction] = self._result(args[0], at)
        elif name == f"{_QIS}barrier__body":
            self._arity(name, args, 0, at)
            region.items.append(("barrier",))
        elif name == "__quantum__rt__initialize":
            self._arity(name, args, 1, at)
        elif name in _OUTPUTS:
            self._arity(name, args, 2, at)
            kind = _OUTPUTS[name]
            if kind == "result":
                value: int = self._result(args[0], at)
            elif isinstance(args[0], pyqir.IntConstant):
                value = args[0].value
            else:
                self._unsupported(f"a {kind} length that is not a constant", *at)
            self.outputs.append([kind, value, _label(args[1])])
        else:
            place = self._place(block, position)
            raise CircuitParseError(_FORMAT, f"unknown intrinsic {name!r} at {place}")

    def _arity(
        self, name: str, args: list[pyqir.Value], wanted: int, at: tuple[pyqir.BasicBlock, int]
    ) -> None:
        if len(args) != wanted:
            raise CircuitParseError(
                _FORMAT,
                f"{name} takes {wanted} argument(s), not {len(args)}, at {self._place(*at)}",
            )

    def _angle(self, value: pyqir.Value, at: tuple[pyqir.BasicBlock, int]) -> float:
        if not isinstance(value, pyqir.FloatConstant):
            self._unsupported("a rotation angle that is not a constant", *at)
        return float(value.value)

    def _qubit(self, value: pyqir.Value, at: tuple[pyqir.BasicBlock, int]) -> int:
        qubit = self._static(value, "qubit", at)
        self.max_qubit = max(self.max_qubit, qubit)
        return qubit

    def _result(self, value: pyqir.Value, at: tuple[pyqir.BasicBlock, int]) -> int:
        result = self._static(value, "result", at)
        self.max_result = max(self.max_result, result)
        return result

    def _static(self, value: pyqir.Value, what: str, at: tuple[pyqir.BasicBlock, int]) -> int:
        match = _STATIC_ID.match(str(value)) if isinstance(value, pyqir.Constant) else None
        if match is None:
            self._unsupported(f"a {what} that is not a constant id (dynamic allocation)", *at)
        number = 0 if match[1] else int(match[2])
        if number >= self.limits.max_register_bits:
            raise LimitExceeded(
                "max_register_bits",
                self.limits.max_register_bits,
                f"{what} id {number} at {self._place(*at)}",
            )
        return number

    def _place(self, block: pyqir.BasicBlock | None, position: int | None) -> str:
        if block is None:
            return self.name
        label = block.name or f"#{self.index.get(block, '?')}"
        return f"{self.name}:{label}" + ("" if position is None else f":{position}")

    def _unsupported(
        self, what: str, block: pyqir.BasicBlock | None, position: int | None
    ) -> NoReturn:
        place = self._place(block, position)
        raise CircuitParseError(_FORMAT, f"unsupported construct at {place}: {what}")

    # -- the circuit -------------------------------------------------------------------

    def _emit(self, circuit: QuantumCircuit, region: _Region) -> None:
        for item in region.items:
            kind = item[0]
            if kind == "gate":
                getattr(circuit, item[1])(*item[2], *item[3])
            elif kind == "measure":
                circuit.measure(item[1], item[2])
            elif kind == "reset":
                circuit.reset(item[1])
            elif kind == "barrier":
                circuit.barrier()
            else:
                self._emit_if(circuit, item[1], item[2], item[3])

    def _emit_if(
        self, circuit: QuantumCircuit, result: int, then: _Region, orelse: _Region
    ) -> None:
        if not then.items and not orelse.items:
            return
        if not then.items:  # only the zero branch does something: test for zero
            then, orelse, value = orelse, then, False
        else:
            value = True
        with circuit.if_test((circuit.clbits[result], value)) as otherwise:
            self._emit(circuit, then)
        if orelse.items:
            with otherwise:
                self._emit(circuit, orelse)


def _label(value: pyqir.Value) -> str | None:
    """An output label: a global byte string, read from LLVM's printing of it."""
    if not isinstance(value, pyqir.GlobalVariable):
        return None
    match = _LABEL.search(str(value)[:400])
    if match is None:
        return None
    raw = re.sub(r"\\([0-9A-Fa-f]{2})", lambda m: chr(int(m[1], 16)), match[1])
    return raw.rstrip("\x00")[:100]


def _opcode(opcode: pyqir.Opcode) -> str:
    return str(opcode).removeprefix("Opcode.").lower()
