"""Convert between cQASM v3 (Quantum Inspire, read with libqasm) and Qiskit circuits.

Layout: all ``qubit`` variables are concatenated in declaration order into one
``QuantumRegister("q")`` and all ``bit`` variables into one ``ClassicalRegister("b")``;
``circuit.metadata["cqasm_layout"]`` maps each variable name to ``(kind, offset, size)``.

Reading maps the cQASM gates to their exact Qiskit equivalents, global phase included
(checked against qxelarator, so ``ctrl.`` of a gate is right too): ``X90``/``mX90`` become
``sx``/``sxdg`` and ``Y90``/``mY90`` become ``ry(±pi/2)`` plus a global phase. ``inv.``,
``pow(x).`` and ``ctrl.`` become ``inverse()``, ``power(x)`` and ``control(1)``. ``init`` is
read as ``reset``; ``wait`` is a timing hint and is dropped. Writing emits a small core set
(``_EMIT``), decomposing anything else into it; the global phase is dropped.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, NoReturn

import cqasm.v3x as cqv3  # type: ignore[import-untyped]
from qiskit.circuit import ClassicalRegister, ControlFlowOp, QuantumCircuit, QuantumRegister
from qiskit.circuit import library as lib
from qiskit.exceptions import QiskitError
from qiskit.transpiler import generate_preset_pass_manager

from qhpc.resources.errors import CircuitParseError, UnsupportedCircuitError

__all__ = [
    "circuit_to_cqasm",
    "cqasm_gate_names",
    "cqasm_to_circuit",
    "measured_clbits",
    "qubit_counts_to_clbit_counts",
]

_HALF_PI = math.pi / 2
_FIXED_GATES: dict[str, Callable[[], Any]] = {
    "I": lib.IGate, "H": lib.HGate, "X": lib.XGate, "Y": lib.YGate, "Z": lib.ZGate,
    "S": lib.SGate, "Sdag": lib.SdgGate, "T": lib.TGate, "Tdag": lib.TdgGate,
    "X90": lib.SXGate, "mX90": lib.SXdgGate, "Z90": lib.SGate, "mZ90": lib.SdgGate,
    "Y90": lambda: lib.RYGate(_HALF_PI), "mY90": lambda: lib.RYGate(-_HALF_PI),
    "CNOT": lib.CXGate, "CZ": lib.CZGate, "CY": lib.CYGate, "SWAP": lib.SwapGate,
    "ISWAP": lib.iSwapGate, "DCNOT": lib.DCXGate, "ECR": lib.ECRGate, "CV": lib.CSXGate,
    "CCNOT": lib.CCXGate, "CCX": lib.CCXGate, "CSWAP": lib.CSwapGate,
}  # fmt: skip
_PARAM_GATES: dict[str, Callable[[Sequence[float]], Any]] = {
    "Rx": lambda p: lib.RXGate(p[0]), "Ry": lambda p: lib.RYGate(p[0]),
    "Rz": lambda p: lib.RZGate(p[0]), "U": lambda p: lib.UGate(*p[:3]),
    "CR": lambda p: lib.CPhaseGate(p[0]),
    "CRk": lambda p: lib.CPhaseGate(math.ldexp(2 * math.pi, -int(p[0]))),
}  # fmt: skip
# qxelarator's Y90 is exp(i*pi/4) * Ry(pi/2); the phase matters once the gate is controlled.
_GATE_PHASES = {"Y90": math.pi / 4, "mY90": -math.pi / 4}

# Qiskit name -> cQASM name for writing; p/u1 equal Rz up to a global phase.
_EMIT = {
    "id": "I", "h": "H", "x": "X", "y": "Y", "z": "Z", "s": "S", "sdg": "Sdag", "t": "T",
    "tdg": "Tdag", "sx": "X90", "sxdg": "mX90", "rx": "Rx", "ry": "Ry", "rz": "Rz", "p": "Rz",
    "u1": "Rz", "cx": "CNOT", "cz": "CZ", "swap": "SWAP", "cp": "CR",
}  # fmt: skip
_BASIS = [*(n for n in _EMIT if n != "u1"), "measure", "reset"]  # barriers always pass
_WRITABLE = {*_EMIT, "measure", "reset", "barrier"}

# libqasm aborts the whole process (SIGFPE) when it folds an integer division by zero and
# overflows its C++ stack on deeply nested expressions, so both are refused beforehand.
_MAX_OPERATORS_PER_STATEMENT = 64
_MAX_WIDTH = 65_536
_INT64_MIN = -(2**63)
_SCAN = re.compile(
    r"(?P<skip>'''.*?'''|//[^\n]*|/\*.*?\*/)|(?P<end>[\n;])|(?P<range>\d+\s*:\s*\d+)"
    r"|(?P<op>[-(\[+*/%&|^~!<>=?.])",
    re.S,
)
_LOCATION = re.compile(r":(\d+):(\d+)(?:\.\.\d+)?$")
_FLOAT_CONSTANTS = {"pi", "eu", "tau"}
_INT_BINARY: dict[str, Callable[[int, int], int | bool | None]] = {
    "AdditionExpression": operator.add, "SubtractionExpression": operator.sub,
    "ProductExpression": operator.mul, "BitwiseAndExpression": operator.and_,
    "BitwiseOrExpression": operator.or_, "BitwiseXorExpression": operator.xor,
    "CmpEqExpression": operator.eq, "CmpNeExpression": operator.ne,
    "CmpLtExpression": operator.lt, "CmpLeExpression": operator.le,
    "CmpGtExpression": operator.gt, "CmpGeExpression": operator.ge,
    "LogicalAndExpression": lambda a, b: bool(a and b),
    "LogicalOrExpression": lambda a, b: bool(a or b), "LogicalXorExpression": operator.ne,
    "ShiftLeftExpression": lambda a, b: a << b if 0 <= b < 64 else None,
    "ShiftRightExpression": lambda a, b: a >> b if 0 <= b < 64 else None,
}  # fmt: skip
_Value = tuple[str, int | None]  # kind ("i" int/bool, "f" float, "e" rejected by libqasm), value


def cqasm_to_circuit(source: str, name: str = "cqasm") -> QuantumCircuit:
    """Parse cQASM v3 into a circuit (layout: module docstring).

    Raises ``CircuitParseError`` with 1-based line and column, or ``UnsupportedCircuitError``.
    """
    _guard_source(source)
    result = _libqasm(cqv3.Analyzer().analyze_string, source)
    if isinstance(result, list):
        _raise_analyzer_errors(source)
    return _Reader(source, result, name).circuit


def _libqasm(function: Callable[[str, str], Any], source: str) -> Any:
    try:
        return function(source, "")
    except (SystemError, MemoryError, RuntimeError) as exc:  # std::bad_alloc and the like
        raise CircuitParseError("cqasm", f"libqasm failed: {exc}") from None


def _guard_source(source: str) -> None:
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as exc:
        line, column = _position(source, exc.start)
        raise CircuitParseError("cqasm", "text is not valid Unicode", line, column) from None
    count = 0
    has_division = False
    for match in _SCAN.finditer(source):
        kind, text, detail = match.lastgroup, match.group(), ""
        if kind == "end":
            count = 0
        elif kind == "op":
            has_division = has_division or text in "/%"
            count += 1
            if count > _MAX_OPERATORS_PER_STATEMENT:
                detail = f"statement has more than {_MAX_OPERATORS_PER_STATEMENT} operators"
        elif kind == "range":  # libqasm materialises a range before checking it against the size
            first, last = (int(n) for n in text.split(":"))
            if last - first >= _MAX_WIDTH:
                detail = f"index range {first}:{last} is wider than {_MAX_WIDTH}"
        if detail:
            raise CircuitParseError("cqasm", detail, *_position(source, match.start()))
    if has_division:
        _walk_divisions(_syntax_tree(source))


def _position(source: str, index: int) -> tuple[int, int]:
    line_start = source.rfind("\n", 0, index) + 1
    return source.count("\n", 0, index) + 1, index - line_start + 1


def _syntax_tree(source: str) -> Any:
    tree = _load_json(_libqasm(cqv3.Analyzer.parse_string_to_json, source))
    if "errors" in tree:
        _raise_first(tree["errors"])
    return tree


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CircuitParseError("cqasm", f"libqasm returned unreadable output: {exc}") from None


def _raise_analyzer_errors(source: str) -> NoReturn:
    report = _load_json(_libqasm(cqv3.Analyzer().analyze_string_to_json, source))
    _raise_first(report.get("errors", []) if isinstance(report, dict) else [])
    raise CircuitParseError("cqasm", "libqasm rejected the program without saying why")


def _raise_first(errors: list[Any]) -> None:
    if errors:
        start = errors[0].get("range", {}).get("start", {})
        detail = str(errors[0].get("message", "unknown error"))
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
        # libqasm's "character" is already 1-based and counts code points, as editors show.
        line, column = (start.get(k) for k in ("line", "character"))
        raise CircuitParseError("cqasm", detail, _int_or_none(line), _int_or_none(column))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None


def _location(body: Any) -> tuple[int | None, int | None]:
    match = _LOCATION.search(str(body.get("source_location", "")))
    return (int(match[1]), int(match[2])) if match else (None, None)


def _walk_divisions(tree: Any) -> None:
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "DivisionExpression" in node or "ModuloExpression" in node:
                _evaluate(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _evaluate(node: Any) -> _Value:
    """Mirror libqasm's constant folding far enough to spot an integer division by zero."""
    ((kind, body),) = node.items()
    if kind == "IntegerLiteral":
        return "i", _wrap(int(body["value"]))
    if kind == "BooleanLiteral":
        return "i", int(body["value"] not in ("0", "false"))
    if kind == "FloatLiteral":
        return "f", None
    if kind == "Identifier":
        return ("f" if body["name"] in _FLOAT_CONSTANTS else "e"), None
    if kind == "FunctionCall":
        args = [_evaluate(a) for a in body["arguments"]["ExpressionList"]["items"]]
        if any(k == "e" for k, _ in args):
            return "e", None
        if body["name"]["Identifier"]["name"] == "abs" and args and args[0][0] == "i":
            value = args[0][1]
            return "i", None if value is None else _wrap(abs(value))
        return "f", None
    if kind in ("UnaryMinusExpression", "BitwiseNotExpression", "LogicalNotExpression"):
        k, v = _evaluate(body["expr"])
        if k != "i" or v is None:
            return k, None
        return "i", _wrap(-v if kind[0] == "U" else ~v if kind[0] == "B" else int(not v))
    if kind == "TernaryConditionalExpression":
        cond, yes, no = (_evaluate(body[key]) for key in ("cond", "if_true", "if_false"))
        if "e" in (cond[0], yes[0], no[0]):
            return "e", None
        return (yes if cond[1] else no) if cond[1] is not None else ("i", None)
    if "lhs" not in body:
        return "i", None  # unknown construct: assume the worst, an integer of unknown value
    (lk, lv), (rk, rv) = _evaluate(body["lhs"]), _evaluate(body["rhs"])
    if "e" in (lk, rk):
        return "e", None
    if kind in ("DivisionExpression", "ModuloExpression"):
        if "f" in (lk, rk):
            return "f", None
        if rv == 0 or rv is None or (rv == -1 and lv in (None, _INT64_MIN)):
            line, column = _location(body)
            why = "by zero" if rv == 0 else "that cannot be checked for zero or overflow"
            raise CircuitParseError("cqasm", f"integer division {why}", line, column)
        if lv is None:
            return "i", None
        quotient = abs(lv) // abs(rv) * (1 if (lv < 0) == (rv < 0) else -1)  # C truncation
        return "i", _wrap(quotient if kind[0] == "D" else lv - rv * quotient)
    if kind == "PowerExpression":
        return "f", None  # libqasm folds powers to floats: 1/(0**1) does not abort
    if "f" in (lk, rk):
        return ("i" if kind.startswith(("Cmp", "Logical")) else "f"), None
    if kind not in _INT_BINARY or lv is None or rv is None:
        return "i", None
    result = _INT_BINARY[kind](lv, rv)
    return "i", None if result is None else _wrap(int(result))


def _wrap(value: int) -> int:
    return (value - _INT64_MIN) % 2**64 + _INT64_MIN


class _Reader:
    """Builds a circuit from libqasm's semantic tree."""

    def __init__(self, source: str, program: Any, name: str) -> None:
        self.source = source
        self.offsets: dict[str, tuple[str, int, int]] = {}
        sizes = {"qubit": 0, "bit": 0}
        for variable in program.variables:
            kind = {"Qubit": "qubit", "QubitArray": "qubit", "Bit": "bit", "BitArray": "bit"}.get(
                type(variable.typ).__name__
            )
            if kind is None:
                raise UnsupportedCircuitError(f"cQASM variable {variable.name!r} has an odd type")
            self.offsets[variable.name] = (kind, sizes[kind], int(variable.typ.size))
            sizes[kind] += int(variable.typ.size)
        if max(sizes.values()) > _MAX_WIDTH:
            raise UnsupportedCircuitError(f"more than {_MAX_WIDTH} qubits or bits declared")
        registers = [QuantumRegister(sizes["qubit"], "q")] if sizes["qubit"] else []
        registers += [ClassicalRegister(sizes["bit"], "b")] if sizes["bit"] else []
        self.circuit = QuantumCircuit(*registers, name=name)
        self.circuit.metadata = {"cqasm_layout": dict(self.offsets)}
        for index, statement in enumerate(program.block.statements):
            self.statement(index, statement)

    def fail(self, index: int, detail: str, unsupported: bool = False) -> NoReturn:
        line, column = _statement_location(self.source, index)
        if unsupported:
            where = f" (line {line})" if line is not None else ""
            raise UnsupportedCircuitError(f"cQASM {detail}{where} is not supported")
        raise CircuitParseError("cqasm", detail, line, column)

    def operands(self, statement: Any) -> list[list[int]]:
        lists = []
        for operand in statement.operands:
            _, offset, size = self.offsets[operand.variable.name]
            if type(operand).__name__ == "IndexRef":
                lists.append([offset + int(i.value) for i in operand.indices])
            else:
                lists.append(list(range(offset, offset + size)))
        return lists

    def statement(self, index: int, statement: Any) -> None:
        kind = type(statement).__name__
        if kind == "GateInstruction":
            self.gate(index, statement)
            return
        if kind != "NonGateInstruction":
            self.fail(index, f"statement {kind}", unsupported=True)
        name, operands, circuit = statement.name, self.operands(statement), self.circuit
        if name == "measure":
            for bit, qubit in zip(operands[0], operands[1], strict=True):
                circuit.measure(qubit, bit)
        elif name in ("reset", "init"):
            for qubit in operands[0]:
                circuit.reset(qubit)
        elif name == "barrier":
            circuit.barrier(*operands[0])
        elif name != "wait":
            self.fail(index, f"instruction {name!r}", unsupported=True)

    def gate(self, index: int, statement: Any) -> None:
        label = _describe(statement.gate)
        try:
            gate, phase = _make_gate(statement.gate)
        except (QiskitError, ValueError, ArithmeticError) as exc:
            self.fail(index, f"gate {label!r} ({exc})", unsupported=True)
        except KeyError:
            self.fail(index, f"gate {label!r}", unsupported=True)
        if any(isinstance(p, float) and not math.isfinite(p) for p in gate.params):
            self.fail(index, f"gate {label!r} has a non-finite parameter")
        for qubits in zip(*self.operands(statement), strict=True):
            if len(set(qubits)) != len(qubits):
                self.fail(index, f"gate {label!r} uses the same qubit more than once")
            self.circuit.append(gate, list(qubits))
            self.circuit.global_phase += phase


def _describe(gate: Any) -> str:
    params = ", ".join(repr(p.value) for p in gate.parameters)
    text = gate.name + (f"({params})" if params else "")
    return f"{text}.{_describe(gate.gate)}" if gate.gate is not None else text


def _make_gate(gate: Any) -> tuple[Any, float]:
    params = [p.value for p in gate.parameters]
    if gate.name in ("inv", "pow", "ctrl"):
        inner, phase = _make_gate(gate.gate)
        if phase:
            definition = QuantumCircuit(inner.num_qubits, global_phase=phase, name=gate.gate.name)
            definition.append(inner, definition.qubits)
            inner = definition.to_gate()
        if gate.name == "inv":
            return inner.inverse(), 0.0
        return (inner.power(float(params[0])) if gate.name == "pow" else inner.control(1)), 0.0
    if gate.name in _FIXED_GATES:
        return _FIXED_GATES[gate.name](), _GATE_PHASES.get(gate.name, 0.0)
    return _PARAM_GATES[gate.name](params), 0.0


def _statement_location(source: str, index: int) -> tuple[int | None, int | None]:
    """Locate the index-th instruction; the semantic tree libqasm hands over has no positions."""
    try:
        statements = _syntax_tree(source)["Program"]["block"]["GlobalBlock"]["statements"]
        instructions = [s for s in statements if "Variable" not in s]
        return _location(next(iter(instructions[index].values())))
    except (CircuitParseError, KeyError, IndexError, TypeError):
        return None, None


def circuit_to_cqasm(circuit: QuantumCircuit) -> str:
    """Write ``circuit`` as cQASM v3, decomposing gates cQASM lacks; global phase is dropped."""
    if circuit.parameters:
        names = ", ".join(sorted(p.name for p in circuit.parameters))
        raise UnsupportedCircuitError(f"circuit has unbound parameters ({names}); bind them first")
    if getattr(circuit, "num_vars", 0):
        raise UnsupportedCircuitError("cQASM cannot express classical variables")
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp) or operation.name in ("delay", "store"):
            raise UnsupportedCircuitError(
                f"cQASM cannot express {operation.name!r} (classical control flow or timing)"
            )
    if any(i.operation.name not in _WRITABLE for i in circuit.data):
        try:
            circuit = _pass_manager().run(circuit)
        except QiskitError as exc:
            raise UnsupportedCircuitError(f"cannot decompose circuit for cQASM: {exc}") from None
    lines = ["version 3.0", ""] + [f"qubit[{circuit.num_qubits}] q"] * bool(circuit.num_qubits)
    lines += [f"bit[{circuit.num_clbits}] b"] * bool(circuit.num_clbits) + [""]
    for instruction in circuit.data:
        lines.extend(_emit(circuit, instruction))
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=1)
def _pass_manager() -> Any:
    return generate_preset_pass_manager(optimization_level=0, basis_gates=_BASIS)


def _emit(circuit: QuantumCircuit, instruction: Any) -> list[str]:
    name = instruction.operation.name
    qubits = [circuit.find_bit(q).index for q in instruction.qubits]
    if name == "measure":
        return [f"b[{circuit.find_bit(instruction.clbits[0]).index}] = measure q[{qubits[0]}]"]
    if name == "barrier":
        return [f"barrier q[{', '.join(map(str, qubits))}]"] if qubits else []
    if name == "reset":
        return [f"reset q[{qubits[0]}]"]
    if name not in _EMIT:
        raise UnsupportedCircuitError(f"cQASM has no equivalent of {name!r}")
    params = [_format_float(p, name) for p in instruction.operation.params]
    text = _EMIT[name] + (f"({', '.join(params)})" if params else "")
    return [f"{text} {', '.join(f'q[{q}]' for q in qubits)}"]


def _format_float(param: Any, name: str) -> str:
    try:
        value = float(param)
    except (TypeError, ValueError):
        raise UnsupportedCircuitError(f"parameter {param!r} of {name!r} is not a number") from None
    if not math.isfinite(value):
        raise UnsupportedCircuitError(f"parameter of {name!r} is not finite")
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    # libqasm's FLOAT_LITERAL needs a dot ("1e-05" is a syntax error, "1.0e-05" is fine).
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def cqasm_gate_names(basis_gates: Sequence[str]) -> list[str]:
    """The cQASM v3 names of those Qiskit gates in ``basis_gates`` that cQASM has, in order
    (e.g. Quantum Inspire's primitive gate set of a device)."""
    names = _cqasm_names()
    found = [names[g] for g in basis_gates if g in names]
    return list(dict.fromkeys(found))


@lru_cache(maxsize=1)
def _cqasm_names() -> dict[str, str]:
    """Qiskit gate name -> cQASM name: the writer's choice where it has one, else the first
    cQASM gate the reader turns into that Qiskit gate (so ``ccx`` is ``CCNOT``)."""
    table: dict[str, str] = {}
    for cq, make in _FIXED_GATES.items():
        table.setdefault(make().name, cq)
    for cq, make_param in _PARAM_GATES.items():
        table.setdefault(make_param([0.0, 0.0, 0.0]).name, cq)
    # p and u1 are Rz only up to a global phase: the writer may, a gate set may not say so
    table.update({q: cq for q, cq in _EMIT.items() if q not in ("p", "u1")})
    return table


def measured_clbits(circuit: QuantumCircuit) -> dict[int, int]:
    """Map each measured clbit index to the qubit index of the last measurement writing it."""
    result: dict[int, int] = {}
    for instruction in circuit.data:
        if instruction.operation.name == "measure":
            clbit = circuit.find_bit(instruction.clbits[0]).index
            result[clbit] = circuit.find_bit(instruction.qubits[0]).index
    return result


def qubit_counts_to_clbit_counts(
    counts: dict[str, int], num_qubits: int, clbit_to_qubit: dict[int, int], num_clbits: int
) -> dict[str, int]:
    """Turn qubit-keyed counts (qxelarator's) into Qiskit clbit-keyed counts.

    Both key kinds put index 0 rightmost; clbits no measurement wrote read 0.
    """
    if any(not 0 <= q < num_qubits for q in clbit_to_qubit.values()):
        raise ValueError(f"clbit_to_qubit names a qubit outside 0..{num_qubits - 1}")
    result: dict[str, int] = {}
    for key, count in counts.items():
        if len(key) > num_qubits or set(key) - {"0", "1"}:
            raise ValueError(f"count key {key!r} is not a {num_qubits}-qubit bit string")
        key = key.zfill(num_qubits)
        bits = [
            key[num_qubits - 1 - clbit_to_qubit[c]] if c in clbit_to_qubit else "0"
            for c in reversed(range(num_clbits))
        ]
        clbit_key = "".join(bits)
        result[clbit_key] = result.get(clbit_key, 0) + count
    return result
