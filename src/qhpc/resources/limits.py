"""Budgets for decoding untrusted circuits, and the walk that enforces them.

Every decoder in qhpc reads tenant input: OpenQASM 2/3 and cQASM text, QPY blobs,
encoded payloads. Size limits on the input alone do not bound the work: a 1-qubit
OpenQASM 2 program of 40 nested ``gate`` definitions, each calling the previous one
twice, is 2 kB of text and 2**40 gates once expanded, and a ``for`` loop over
``[0:10**9]`` is one line. So a decoded circuit is measured before anything expands
or runs it: operations after expanding user gate definitions and multiplying loop
bodies by their iteration count, nesting depth, the size of parameter expressions,
and whether every numeric parameter is finite (``rx(1e309)`` is infinite by
expression, not by literal).

The walk costs the size of the *distinct* definitions, not of the expansion:
OpenQASM 2 gate bodies do not depend on their parameters, so each gate is measured
once and its count reused. It stops as soon as a count passes its limit, and checks
a deadline as it goes, so a hostile circuit costs at most ``max_operations`` steps.
Standard gates, opaque gates and anything whose definition would need synthesis
(a ``UnitaryGate``) count as one operation: expanding them is the resource's job, and
a resource's run-time limit bounds that.

:class:`DecodeLimits` holds the numbers (documented in docs/security.md; the broker
takes them from ``qhpc serve`` options); a breach raises
:class:`~qhpc.resources.errors.LimitExceeded`, which names the limit and its value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from qiskit.circuit import ControlFlowOp, ForLoopOp, ParameterExpression, QuantumCircuit

from qhpc.resources.errors import LimitExceeded, PayloadError

try:  # OpenQASM 2's lazily defined gates: measured by name, without their parameters
    from qiskit.qasm2.parse import _DefinedGate
except ImportError:  # pragma: no cover - a Qiskit without it: every definition is walked
    _DefinedGate = None


@dataclass(frozen=True)
class DecodeLimits:
    """What one request's circuits may cost to decode (all circuits of a request together)."""

    #: bytes of circuit source or QPY in one request
    max_source_bytes: int = 4 * 1024 * 1024
    #: qubits or clbits in one register, and in all registers of one circuit (twice this)
    max_register_bits: int = 4096
    #: operations after expanding user gate definitions and loops, over all circuits
    max_operations: int = 1_000_000
    #: nesting of gate definitions and control-flow blocks
    max_depth: int = 64
    #: characters of one parameter expression once printed
    max_expression_chars: int = 2000
    #: circuits in one request
    max_circuits: int = 10_000
    #: wall time of decoding one request, seconds
    max_seconds: float = 10.0
    #: memory a decoding worker may add to its own footprint, bytes (worker only)
    max_memory_bytes: int = 1024 * 1024 * 1024

    def deadline(self) -> float:
        return time.monotonic() + self.max_seconds


DEFAULT_LIMITS = DecodeLimits()

#: how many steps pass between two deadline checks (a clock read costs ~50 ns)
_CLOCK_EVERY = 512


class _Walk:
    """One measurement: counts shared by all circuits of a request."""

    def __init__(self, limits: DecodeLimits, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline
        self.steps = 0
        self.memo: dict[object, int] = {}

    def circuit(self, circuit: QuantumCircuit, depth: int) -> int:
        if depth > self.limits.max_depth:
            raise LimitExceeded(
                "max_depth",
                self.limits.max_depth,
                "gate definitions or control flow nest too deeply",
            )
        total = 0
        for instruction in circuit.data:
            total += self.operation(instruction.operation, depth)
            if total > self.limits.max_operations:
                self._too_many()
        return total

    def operation(self, op: object, depth: int) -> int:
        self.steps += 1
        if self.steps > self.limits.max_operations:
            self._too_many()
        if self.steps % _CLOCK_EVERY == 0 and time.monotonic() > self.deadline:
            raise LimitExceeded(
                "max_seconds", self.limits.max_seconds, "measuring the circuits took too long"
            )
        params = getattr(op, "params", ())
        if isinstance(op, ControlFlowOp):
            body = sum(self.circuit(block, depth + 1) for block in op.blocks)
            if isinstance(op, ForLoopOp):
                body *= len(op.params[0])
            # A while loop's count is unknown until it runs: its body counts once, and
            # the resource's run-time limit bounds the rest.
            return max(1, body)
        self.parameters(params)
        key: object
        if _DefinedGate is not None and isinstance(op, _DefinedGate):
            key = ("qasm2", op.name)  # bodies do not depend on parameters
        else:
            definition = getattr(op, "_definition", None)
            if not isinstance(definition, QuantumCircuit):
                return 1
            key = id(definition)
        known = self.memo.get(key)
        if known is None:
            definition = op.definition  # type: ignore[attr-defined]
            known = 1 if definition is None else max(1, self.circuit(definition, depth + 1))
            self.memo[key] = known
        return known

    def parameters(self, params: Iterable[object]) -> None:
        for value in params:
            if isinstance(value, ParameterExpression):
                if len(str(value)) > self.limits.max_expression_chars:
                    raise LimitExceeded(
                        "max_expression_chars",
                        self.limits.max_expression_chars,
                        "a parameter expression is too large",
                    )
                if not value.parameters:
                    _finite(complex(value))
            elif isinstance(value, float | int | complex) and not isinstance(value, bool):
                _finite(value)

    def _too_many(self) -> None:
        raise LimitExceeded(
            "max_operations",
            self.limits.max_operations,
            "the circuits expand to too many operations",
        )


def _finite(value: complex | float | int) -> None:
    if isinstance(value, complex):
        ok = math.isfinite(value.real) and math.isfinite(value.imag)
    else:
        ok = math.isfinite(value)
    if not ok:
        raise PayloadError("a gate parameter or global phase is not a finite number")


def measure_circuits(
    circuits: Iterable[QuantumCircuit],
    limits: DecodeLimits = DEFAULT_LIMITS,
    deadline: float | None = None,
) -> int:
    """Operations the circuits expand to; raises :class:`LimitExceeded` past a limit and
    :class:`PayloadError` for a parameter that is not finite."""
    walk = _Walk(limits, limits.deadline() if deadline is None else deadline)
    total = 0
    for count, circuit in enumerate(circuits, 1):
        if count > limits.max_circuits:
            raise LimitExceeded("max_circuits", limits.max_circuits, "too many circuits")
        _check_width(circuit, limits)
        _finite_phase(circuit)
        total += walk.circuit(circuit, 0)
        if total > limits.max_operations:
            walk._too_many()
    return total


def _check_width(circuit: QuantumCircuit, limits: DecodeLimits) -> None:
    width = circuit.num_qubits + circuit.num_clbits
    if width > 2 * limits.max_register_bits:
        raise LimitExceeded(
            "max_register_bits",
            limits.max_register_bits,
            f"a circuit has {width} qubits and clbits; at most twice the limit are accepted",
        )


def _finite_phase(circuit: QuantumCircuit) -> None:
    phase = circuit.global_phase
    if isinstance(phase, ParameterExpression):
        if not phase.parameters:
            _finite(complex(phase))
    else:
        _finite(phase)
