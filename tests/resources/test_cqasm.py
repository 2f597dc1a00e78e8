"""cQASM v3 <-> Qiskit conversion, checked against libqasm and qxelarator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import qxelarator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import ClassicalRegister, QuantumCircuit, QuantumRegister
from qiskit.circuit import Parameter
from qiskit.circuit.random import random_circuit
from qiskit.quantum_info import Operator, Statevector

from qhpc.resources.cqasm import (
    circuit_to_cqasm,
    cqasm_to_circuit,
    measured_clbits,
    qubit_counts_to_clbit_counts,
)
from qhpc.resources.errors import CircuitParseError, UnsupportedCircuitError

HEADER = "version 3.0\nqubit[3] q\nbit[3] b\n"


def _qx_state(source: str, num_qubits: int) -> np.ndarray:
    result = qxelarator.execute_string(source, iterations=1)
    assert not isinstance(result, qxelarator.SimulationError), result
    state = np.zeros(2**num_qubits, dtype=complex)
    for key, amplitude in result.state.items():
        state[int(key, 2)] = complex(amplitude)
    return state


def _unitary_part(circuit: QuantumCircuit) -> Operator:
    return Operator(circuit.remove_final_measurements(inplace=False))


# Each body is prefixed by a preparation that leaves no amplitude zero, so phases show.
QX_PROGRAMS = [
    "I q[0]\nH q[1]\nX q[2]\nY q[0]\nZ q[1]\nS q[2]\nSdag q[0]\nT q[1]\nTdag q[2]",
    "X90 q[0]\nmX90 q[1]\nY90 q[2]\nmY90 q[0]\nZ90 q[1]\nmZ90 q[2]",
    "Rx(0.3) q[0]\nRy(-1.2) q[1]\nRz(2.5) q[2]\nU(0.3, 0.5, 0.7) q[0]",
    "CNOT q[0], q[1]\nCZ q[1], q[2]\nCY q[2], q[0]\nSWAP q[0], q[2]\nCR(0.4) q[1], q[0]",
    "CRk(3) q[2], q[1]\nISWAP q[0], q[1]\nDCNOT q[1], q[2]\nECR q[2], q[0]\nCV q[0], q[2]",
    "CCNOT q[0], q[1], q[2]\nCSWAP q[2], q[0], q[1]",
    "inv.S q[0]\npow(2).T q[1]\npow(0.5).X q[2]\ninv.pow(3).Rx(0.2) q[0]",
    "ctrl.X90 q[0], q[1]\nctrl.Y90 q[1], q[2]\nctrl.mY90 q[2], q[0]\nctrl.inv.T q[0], q[2]",
    "ctrl.pow(0.5).H q[1], q[0]\nctrl.U(0.1, 0.2, 0.3) q[2], q[1]\nH q[0:2]",
    "pow(0.5).Y90 q[0]\ninv.mY90 q[1]\nctrl.pow(2).Y90 q[2], q[0]\nctrl.pow(1.5).mX90 q[0], q[1]",
]
PREPARE = "Ry(0.7) q[0]\nRy(1.1) q[1]\nRy(1.9) q[2]\nRz(0.4) q[0]\nRz(0.9) q[1]\nRz(1.3) q[2]\n"


@pytest.mark.parametrize("body", QX_PROGRAMS)
def test_gates_match_qxelarator_exactly_including_global_phase(body: str) -> None:
    source = "version 3.0\nqubit[3] q\n" + PREPARE + body + "\n"
    circuit = cqasm_to_circuit(source)
    expected = _qx_state(source, 3)
    assert np.allclose(Statevector.from_instruction(circuit).data, expected, atol=1e-9)


def test_variables_are_concatenated_in_declaration_order() -> None:
    source = (
        "version 3.0\nqubit[2] q\nqubit r\nbit[2] b\nbit c\n"
        "X r\nc = measure r\nb = measure q\nb[1] = measure r\n"
    )
    circuit = cqasm_to_circuit(source, name="regs")
    assert circuit.name == "regs"
    assert [(r.name, r.size) for r in circuit.qregs] == [("q", 3)]
    assert [(r.name, r.size) for r in circuit.cregs] == [("b", 3)]
    assert circuit.metadata["cqasm_layout"]["r"] == ("qubit", 2, 1)
    assert circuit.metadata["cqasm_layout"]["c"] == ("bit", 2, 1)
    assert measured_clbits(circuit) == {2: 2, 0: 0, 1: 2}  # the last write to b[1] wins


def test_ranges_lists_and_whole_registers_are_expanded() -> None:
    circuit = cqasm_to_circuit(
        "version 3.0\nqubit[4] q\nH q[0:2]\nCNOT q[0, 1], q[2, 3]\nX q\nbarrier q[1:3]\n"
    )
    names = [(i.operation.name, [circuit.find_bit(q).index for q in i.qubits]) for i in circuit]
    assert names[:5] == [("h", [0]), ("h", [1]), ("h", [2]), ("cx", [0, 2]), ("cx", [1, 3])]
    assert [n for n, _ in names[5:9]] == ["x"] * 4
    assert names[9] == ("barrier", [1, 2, 3])


def test_non_gate_instructions() -> None:
    circuit = cqasm_to_circuit(HEADER + "init q[0]\nreset q\nwait(5) q[1]\nb[2] = measure q[1]\n")
    assert [i.operation.name for i in circuit] == ["reset"] * 4 + ["measure"]


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [
        ("version 3.0\nqubit[2] q\nH q[0\n", 3, 6),
        ("version 3.0\nqubit[2 q\n", 2, 9),
        ("version 3.0\nqubit[2] q\n/* é */ Foo q[0]\n", 3, 9),  # columns count code points
        ("version 1.0\nqubits 2\n", 1, 9),
        ("", 1, 1),
    ],
)
def test_parse_errors_carry_one_based_line_and_column(source: str, line: int, column: int) -> None:
    with pytest.raises(CircuitParseError) as info:
        cqasm_to_circuit(source)
    assert (info.value.format, info.value.line, info.value.column) == ("cqasm", line, column)


def test_unknown_gate_is_reported_with_the_error_count() -> None:
    with pytest.raises(CircuitParseError, match="couldn't find instruction 'Foo'") as info:
        cqasm_to_circuit(HEADER + "Foo q[0]\nBar q[1]\n")
    assert info.value.line == 4
    assert "1 more error" in info.value.detail


@pytest.mark.parametrize(
    ("statement", "name"),
    [
        ("Rn(1, 0, 0, 0.5, 0.1) q[0]", "Rn"),  # qx's Rn is not unitary for unnormalised axes
        ("MS q[0], q[1]", "MS"),
        ("b[0] = measureX q[0]", "measureX"),
        ("asm(backend) '''raw'''", "AsmDeclaration"),
    ],
)
def test_instructions_libqasm_knows_but_we_do_not(statement: str, name: str) -> None:
    with pytest.raises(UnsupportedCircuitError, match=name):
        cqasm_to_circuit(HEADER + statement + "\n")


@pytest.mark.parametrize(
    ("expression", "column"),
    [
        ("1/0", 5),
        ("1 % (2 - 2)", 6),
        ("1.0 + 3/(true && false ? 1 : 0)", 11),
        ("(-9223372036854775807 - 1) / -1", 31),
        ("pi + 2/abs(0)", 10),
    ],
)
def test_integer_division_by_zero_is_refused_before_libqasm_aborts(
    expression: str, column: int
) -> None:
    # libqasm would kill the interpreter with SIGFPE here, so reaching the assert is the test.
    with pytest.raises(CircuitParseError, match="integer division") as info:
        cqasm_to_circuit(HEADER + f"Rx({expression}) q[0]\n")
    assert (info.value.line, info.value.column) == (4, column)


def test_float_and_safe_integer_divisions_are_folded() -> None:
    circuit = cqasm_to_circuit(
        HEADER + "Rx(pi/2) q[0]\nRy(1/0.5 * 0 + 7/2) q[1]\nCRk(8 % 3) q[0], q[1]\n"
    )
    assert circuit.data[0].operation.params[0] == pytest.approx(math.pi / 2)
    assert circuit.data[1].operation.params[0] == pytest.approx(3.0)  # 7/2 is integer division
    assert circuit.data[2].operation.params[0] == pytest.approx(math.pi / 2)


def test_deep_nesting_is_refused_before_libqasm_overflows_its_stack() -> None:
    deep = "(" * 20_000 + "1" + ")" * 20_000
    with pytest.raises(CircuitParseError, match="operators") as info:
        cqasm_to_circuit(HEADER + f"Rx({deep}) q[0]\n")
    assert info.value.line == 4


def test_huge_index_range_is_refused_before_libqasm_allocates_it() -> None:
    with pytest.raises(CircuitParseError, match="wider") as info:
        cqasm_to_circuit(HEADER + "H q[0 : 100000000]\n")
    assert (info.value.line, info.value.column) == (4, 5)


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("CNOT q[1], q[1]", "same qubit"),
        ("Rx(1.0/0.0) q[0]", "non-finite"),
    ],
)
def test_semantic_problems_point_at_the_statement(statement: str, message: str) -> None:
    with pytest.raises(CircuitParseError, match=message) as info:
        cqasm_to_circuit(HEADER + "H q[0]\n  " + statement + "\n")
    assert (info.value.line, info.value.column) == (5, 3)


def test_invalid_unicode_is_a_parse_error() -> None:
    with pytest.raises(CircuitParseError, match="Unicode") as info:
        cqasm_to_circuit(HEADER + "H q[0] // \ud800\n")
    assert (info.value.line, info.value.column) == (4, 11)


@pytest.mark.parametrize("seed", range(12))
def test_random_circuits_round_trip(seed: int) -> None:
    circuit = random_circuit(1 + seed % 4, 4, max_operands=3, measure=True, seed=seed)
    text = circuit_to_cqasm(circuit)
    back = cqasm_to_circuit(text)
    assert _unitary_part(circuit).equiv(_unitary_part(back))
    assert measured_clbits(back) == measured_clbits(circuit)
    assert circuit_to_cqasm(back) == text  # the emitted subset is a fixed point


@pytest.mark.parametrize("seed", range(6))
def test_qxelarator_runs_emitted_random_circuits_to_the_same_state(seed: int) -> None:
    circuit = random_circuit(3, 5, max_operands=3, seed=100 + seed)
    circuit.barrier()
    state = _qx_state(circuit_to_cqasm(circuit), 3)
    assert Statevector(state).equiv(Statevector.from_instruction(circuit))


def test_emitted_text_and_register_flattening() -> None:
    a, b = QuantumRegister(1, "a"), QuantumRegister(2, "z")
    c, d = ClassicalRegister(1, "c"), ClassicalRegister(2, "d")
    circuit = QuantumCircuit(a, b, c, d)
    circuit.sx(b[1])
    circuit.cp(0.25, a[0], b[0])
    circuit.p(1e-05, b[0])
    circuit.rx(-2.5e20, a[0])
    circuit.barrier()
    circuit.reset(b[0])
    circuit.measure(b[1], d[0])
    assert circuit_to_cqasm(circuit) == (
        "version 3.0\n\nqubit[3] q\nbit[3] b\n\n"
        "X90 q[2]\nCR(0.25) q[0], q[1]\nRz(1.0e-05) q[1]\nRx(-2.5e+20) q[0]\n"
        "barrier q[0, 1, 2]\nreset q[1]\nb[1] = measure q[2]\n"
    )


@pytest.mark.parametrize("angle", [1e-05, -3e-300, 1.2345678901234567, 5e22, -math.pi])
def test_angles_survive_exactly(angle: float) -> None:
    circuit = QuantumCircuit(1)
    circuit.rz(angle, 0)
    assert cqasm_to_circuit(circuit_to_cqasm(circuit)).data[0].operation.params[0] == angle


def test_unbound_parameter_is_unsupported() -> None:
    circuit = QuantumCircuit(1)
    circuit.rx(Parameter("theta"), 0)
    with pytest.raises(UnsupportedCircuitError, match="theta"):
        circuit_to_cqasm(circuit)


def test_control_flow_and_delay_are_unsupported() -> None:
    circuit = QuantumCircuit(1, 1)
    circuit.measure(0, 0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.x(0)
    with pytest.raises(UnsupportedCircuitError, match="if_else"):
        circuit_to_cqasm(circuit)
    delayed = QuantumCircuit(1)
    delayed.delay(100, 0)
    with pytest.raises(UnsupportedCircuitError, match="delay"):
        circuit_to_cqasm(delayed)


def test_bell_pair_on_qxelarator() -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    result = qxelarator.execute_string(circuit_to_cqasm(circuit), iterations=200)
    assert not isinstance(result, qxelarator.SimulationError), result
    counts = qubit_counts_to_clbit_counts(
        dict(result.results), circuit.num_qubits, measured_clbits(circuit), circuit.num_clbits
    )
    assert set(counts) <= {"00", "11"}
    assert sum(counts.values()) == 200


def test_qxelarator_counts_are_keyed_by_qubit_and_mapped_to_clbits() -> None:
    circuit = QuantumCircuit(3, 2)
    circuit.x(1)
    circuit.measure(1, 0)
    result = qxelarator.execute_string(circuit_to_cqasm(circuit), iterations=10)
    assert dict(result.results) == {"010": 10}
    mapped = qubit_counts_to_clbit_counts(dict(result.results), 3, measured_clbits(circuit), 2)
    assert mapped == {"01": 10}


def test_counts_mapping_merges_and_validates() -> None:
    counts = {"101": 3, "001": 4, "10": 1}
    assert qubit_counts_to_clbit_counts(counts, 3, {1: 0, 0: 1}, 3) == {"010": 7, "001": 1}
    with pytest.raises(ValueError, match="bit string"):
        qubit_counts_to_clbit_counts({"0x1": 1}, 3, {}, 1)
    with pytest.raises(ValueError, match="outside"):
        qubit_counts_to_clbit_counts({"1": 1}, 1, {0: 3}, 1)


ALLOWED = (CircuitParseError, UnsupportedCircuitError)
CQASM_ALPHABET = "version3.0 qubit[]:,;bit=measure HXCNOTRxkinvpowctrl.()+-*/%!~?<>&|^\n0129"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=120) | st.text(CQASM_ALPHABET, max_size=120).map(HEADER.__add__))
def test_arbitrary_text_only_raises_our_errors(text: str) -> None:
    try:
        cqasm_to_circuit(text)
    except ALLOWED:
        pass


VALID = (
    "version 3.0\n\n// mutated below\nqubit[12] q\nbit[2] b\nH q[0]\nCNOT q[0], q[10]\n"
    "Rx(pi/4) q[1]\nCRk(6/20) q[1], q[2]\ninv.S q[3]\nb[0] = measure q[0]\nb[1] = measure q[10]\n"
)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(VALID) - 1))
def test_deleting_a_character_parses_or_reports_a_line(index: int) -> None:
    try:
        cqasm_to_circuit(VALID[:index] + VALID[index + 1 :])
    except CircuitParseError as exc:
        assert exc.line is not None
        assert exc.line >= 1


def test_gate_sets_are_named_in_cqasm() -> None:
    from qhpc.resources.cqasm import cqasm_gate_names

    assert cqasm_gate_names(["id", "rz", "sx", "x", "cz"]) == ["I", "Rz", "X90", "X", "CZ"]
    # the writer's name where there is one, the reader's first name otherwise; p is Rz
    # only up to a phase, and gates cQASM lacks are left out
    assert cqasm_gate_names(["ry", "ccx", "cp", "p", "rxx", "cx", "cx"]) == [
        "Ry", "CCNOT", "CR", "CNOT",
    ]  # fmt: skip
