from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit.circuit import QuantumCircuit
from qiskit.quantum_info import Operator

from qhpc.resources import (
    CircuitFormat,
    CircuitParseError,
    LimitExceeded,
    UnsupportedCircuitError,
    detect_format,
    dump_circuit,
    load_circuit,
    load_circuits,
)

QASM2_BELL = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q -> c;
"""
QASM3_BELL = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
bit[2] c;
h q[0];
cx q[0], q[1];
c = measure q;
"""
CQASM_BELL = """version 3.0
qubit[2] q
bit[2] b
H q[0]
CNOT q[0], q[1]
b = measure q
"""


def unitary_part(circuit: QuantumCircuit) -> Operator:
    return Operator(circuit.remove_final_measurements(inplace=False))


@pytest.mark.parametrize(
    ("source", "fmt"),
    [
        (QASM2_BELL, CircuitFormat.QASM2),
        (QASM3_BELL, CircuitFormat.QASM3),
        (CQASM_BELL, CircuitFormat.CQASM),
        ("// a comment\n" + QASM2_BELL, CircuitFormat.QASM2),
    ],
)
def test_every_format_reads_to_the_same_circuit(
    source: str, fmt: CircuitFormat, bell: QuantumCircuit
) -> None:
    assert detect_format(source) is fmt
    circuit = load_circuit(source)
    assert circuit.num_qubits == 2
    assert circuit.num_clbits == 2
    assert unitary_part(circuit).equiv(unitary_part(bell))


def test_qpy_round_trip_with_several_circuits(bell: QuantumCircuit, tmp_path: Path) -> None:
    other = bell.copy(name="other")
    other.x(0)
    from qiskit import qpy

    path = tmp_path / "two.qpy"
    with path.open("wb") as handle:
        qpy.dump([bell, other], handle)
    circuits = load_circuits(path)
    assert [c.name for c in circuits] == ["bell", "other"]
    assert detect_format(path.read_bytes()) is CircuitFormat.QPY
    data = dump_circuit(bell, "qpy")
    assert isinstance(data, bytes)
    assert load_circuit(data).name == "bell"


@pytest.mark.parametrize("fmt", ["qasm2", "qasm3", "cqasm"])
def test_dump_and_load_round_trip(fmt: str, bell: QuantumCircuit) -> None:
    text = dump_circuit(bell, fmt)
    assert isinstance(text, str)
    assert unitary_part(load_circuit(text)).equiv(unitary_part(bell))


@pytest.mark.parametrize(
    ("source", "fmt", "line", "column"),
    [
        ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0;\n', "OpenQASM 2", 4, 6),
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nh q[0;\n', "OpenQASM 3", 4, 6),
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nfoo q[0];\n', "OpenQASM 3", 4, 1),
        ("version 3.0\nqubit[2] q\nH q[5\n", "cqasm", 3, None),
    ],
)
def test_parse_errors_report_line_and_column(
    source: str, fmt: str, line: int, column: int | None
) -> None:
    with pytest.raises(CircuitParseError) as caught:
        load_circuit(source)
    error = caught.value
    assert error.format == fmt
    assert error.line == line
    if column is not None:
        assert error.column == column
    assert f"line {line}" in str(error)


def test_unknown_and_unsupported_inputs() -> None:
    with pytest.raises(CircuitParseError, match="unknown format"):
        detect_format("hello world")
    with pytest.raises(CircuitParseError, match="only v3"):
        detect_format("version 1.0\nqubits 2\n")
    with pytest.raises(CircuitParseError, match="unsupported OpenQASM version 4"):
        detect_format("OPENQASM 4.0;")
    with pytest.raises(CircuitParseError, match="binary data that is not QPY"):
        detect_format(b"\xff\xfe\x00garbage")
    with pytest.raises(CircuitParseError, match="unreadable QPY"):
        load_circuits(b"QISKIT-but-broken")
    with pytest.raises(CircuitParseError, match="cannot read"):
        load_circuits(Path("/nonexistent/file.qasm"))


def test_cqasm_export_refuses_what_it_cannot_express() -> None:
    from qiskit.circuit import Parameter

    circuit = QuantumCircuit(1)
    circuit.rx(Parameter("a"), 0)
    with pytest.raises(UnsupportedCircuitError):
        dump_circuit(circuit, "cqasm")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_loading_arbitrary_text_raises_only_parse_errors(text: str) -> None:
    try:
        load_circuits(text)
    except (CircuitParseError, UnsupportedCircuitError):
        pass


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([QASM2_BELL, QASM3_BELL, CQASM_BELL]),
    st.integers(min_value=0, max_value=10_000),
)
def test_mutated_programs_parse_or_fail_cleanly(source: str, position: int) -> None:
    index = position % len(source)
    mutated = source[:index] + source[index + 1 :]
    try:
        circuit = load_circuit(mutated)
    except (CircuitParseError, UnsupportedCircuitError) as exc:
        if isinstance(exc, CircuitParseError) and exc.line is not None:
            assert exc.line >= 1
    else:
        assert circuit.num_qubits >= 1


@pytest.mark.parametrize(
    "source",
    [
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[100000000];\n',
        "OPENQASM 3.0;\nqubit[5000] q;\n",
        "OPENQASM 2.0;\nqreg a[4000];\nqreg b[4000];\nqreg c[4000];\n",
        "OPENQASM 2.0;\nqreg q[" + "9" * 500 + "];\n",
    ],
)
def test_huge_register_declarations_are_refused_before_parsing(source: str) -> None:
    with pytest.raises(LimitExceeded, match="limit max_register_bits = 4096"):
        load_circuits(source)
