"""QIR input: text and bitcode, base and adaptive profiles, typed and opaque pointers.

Programs come from pyqir's own builder (opaque pointers, text and bitcode) and from
hand-written LLVM IR (typed pointers, the adaptive profile's branches); each converted
circuit is compared with the same circuit built in Qiskit, gate for gate and by what
Aer samples. Then the refusals, each with its place, the budgets, the QPY round trip
of the kept program, and the decoding workers that run all of it for the broker.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import NoReturn

import pyqir
import pyqir.qis as qis
import pytest
from qiskit.quantum_info import Statevector
from qiskit_aer import AerSimulator

from qhpc.resources import (
    QIR_ENTRY_METADATA,
    QIR_METADATA,
    CircuitFormat,
    CircuitParseError,
    DecodeLimits,
    DecodePool,
    LimitExceeded,
    PayloadError,
    SamplerTask,
    UnsupportedCircuitError,
    check_qir_metadata,
    decode_payload,
    detect_format,
    drop_qir_metadata,
    dump_circuit,
    dump_qpy,
    encode_payload,
    load_circuit,
    load_circuits,
    load_qpy,
)
from qir_samples import (
    TYPED_GHZ,
    TYPED_TELEPORT,
    adaptive_module,
    bell_module,
    every_gate_module,
    teleport_expected,
    typed_ghz_expected,
)


def counts(circuit, shots: int = 2000, seed: int = 11) -> dict[str, int]:  # type: ignore[no-untyped-def]
    backend = AerSimulator(seed_simulator=seed)
    return dict(backend.run(circuit, shots=shots).result().get_counts())


def same_gates(got, expected) -> bool:  # type: ignore[no-untyped-def]
    """Equal as circuits (Qiskit's equality ignores metadata; names are compared apart)."""
    return bool(got == expected)


# -- reading ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["text", "bitcode"])
def test_builder_base_profile_every_gate(form: str) -> None:
    module, expected = every_gate_module()
    source: str | bytes = module.ir() if form == "text" else module.bitcode()
    assert detect_format(source) is CircuitFormat.QIR
    (circuit,) = load_circuits(source)
    assert same_gates(circuit, expected)
    assert circuit.name == "main"  # the builder's entry point
    assert circuit.metadata[QIR_ENTRY_METADATA] == "main"
    unitary = expected.remove_final_measurements(inplace=False)
    got = Statevector(circuit.remove_final_measurements(inplace=False))
    assert got.equiv(Statevector(unitary))
    assert counts(circuit) == counts(expected)


def test_text_keeps_the_source_and_bitcode_keeps_llvms_text() -> None:
    module = bell_module()
    text, bitcode = module.ir(), module.bitcode()
    assert bitcode.startswith(b"BC\xc0\xde")
    from_text = load_circuit(text)
    from_bitcode = load_circuit(bitcode)
    assert from_text.metadata[QIR_METADATA] == text  # the program as sent
    printed = from_bitcode.metadata[QIR_METADATA]
    assert isinstance(printed, str) and "__quantum__qis__cnot__body" in printed
    assert load_circuit(printed) == from_bitcode  # LLVM's text reads back to the same
    assert from_text.metadata["qhpc_qir_output"] == [["result", 0, "r0"], ["result", 1, "r1"]]
    assert set(counts(from_bitcode)) == {"00", "11"}


def test_bitcode_wrapper_is_detected_and_read() -> None:
    bitcode = bell_module().bitcode()
    # The wrapper: magic, version, offset and size of the bitcode, CPU type (5 x uint32).
    header = (0x0B17C0DE).to_bytes(4, "little") + (0).to_bytes(4, "little")
    header += (20).to_bytes(4, "little") + len(bitcode).to_bytes(4, "little")
    header += (0).to_bytes(4, "little")
    wrapped = header + bitcode
    assert detect_format(wrapped) is CircuitFormat.QIR
    assert load_circuit(wrapped) == load_circuit(bitcode)


def test_typed_pointers_base_profile() -> None:
    assert detect_format(TYPED_GHZ) is CircuitFormat.QIR
    circuit = load_circuit(TYPED_GHZ)
    assert same_gates(circuit, typed_ghz_expected())
    assert circuit.metadata["qhpc_qir_output"] == [
        ["tuple", 3, "t"], ["result", 0, "r0"], ["result", 1, "r1"], ["result", 2, "r2"],
    ]  # fmt: skip
    assert set(counts(circuit)) == {"000", "111"}
    # pyqir 0.12 writes opaque pointers only: the typed program as (upgraded) bitcode
    bitcode = pyqir.Module.from_ir(pyqir.Context(), TYPED_GHZ).bitcode
    assert load_circuit(bitcode) == circuit


def test_adaptive_profile_from_the_builder() -> None:
    module, expected = adaptive_module()
    for source in (module.ir(), module.bitcode()):
        circuit = load_circuit(source)
        assert same_gates(circuit, expected)
        assert counts(circuit) == counts(expected)
        # r0 = 1 flips q1 (always 1 then); r0 = 0 puts it in superposition
        assert {k for k in counts(circuit) if k.endswith("1")} == {"11"}


def test_adaptive_profile_typed_teleport_and_zero_branch() -> None:
    circuit = load_circuit(TYPED_TELEPORT)
    expected = teleport_expected()
    assert same_gates(circuit, expected)
    got = counts(circuit, shots=4000)
    assert got == counts(expected, shots=4000)
    assert {key[:2] for key in got} == {"01"}  # r2 = 1 (teleported), r3 = 0 (not flipped)
    assert len(got) == 4 and min(got.values()) > 800  # r0, r1 uniform


def test_two_entry_points_are_two_circuits_and_a_name_applies_to_one() -> None:
    second = TYPED_GHZ.replace("define void @ghz() #0 {", "define void @ghz2() #0 {")
    both = TYPED_GHZ + second[second.index("define void @ghz2") : second.index("declare")]
    circuits = load_circuits(both)
    assert [c.name for c in circuits] == ["ghz", "ghz2"]
    assert [c.metadata[QIR_ENTRY_METADATA] for c in circuits] == ["ghz", "ghz2"]
    assert load_circuit(TYPED_GHZ, name="mine").name == "mine"


def test_widths_come_from_the_ids_when_not_declared(tmp_path: Path) -> None:
    text = TYPED_GHZ.replace('"required_num_qubits"="3" "required_num_results"="3"', "")
    circuit = load_circuit(text)
    assert (circuit.num_qubits, circuit.num_clbits) == (3, 3)
    path = tmp_path / "prog.bc"
    path.write_bytes(bell_module().bitcode())
    assert load_circuit(path).name == "prog"  # a file's stem names its one circuit


def test_qpy_round_trip_keeps_the_program_and_the_check_accepts_it() -> None:
    circuit = load_circuit(TYPED_TELEPORT)
    (back,) = load_qpy(dump_qpy([circuit]))
    assert back.metadata[QIR_METADATA] == TYPED_TELEPORT
    assert back == circuit
    payload = decode_payload(encode_payload(SamplerTask((circuit,), shots=10)))
    assert payload.circuits[0].metadata[QIR_METADATA] == TYPED_TELEPORT  # type: ignore[union-attr]
    check_qir_metadata([back])


def test_qir_metadata_that_does_not_match_the_gates_is_refused() -> None:
    circuit = load_circuit(TYPED_GHZ)
    changed = circuit.copy()
    changed.x(0)
    with pytest.raises(PayloadError, match="does not describe its gates"):
        check_qir_metadata([changed])
    forged = circuit.copy()
    forged.metadata = {**circuit.metadata, QIR_METADATA: TYPED_GHZ.replace("0.5", "0.25")}
    with pytest.raises(PayloadError, match="circuit 0 carries QIR"):
        check_qir_metadata([forged])
    broken = circuit.copy()
    broken.metadata = {**circuit.metadata, QIR_METADATA: "define void @x( {"}
    with pytest.raises(PayloadError, match="not valid QIR"):
        check_qir_metadata([broken])
    not_text = circuit.copy()
    not_text.metadata = {QIR_METADATA: 5, QIR_ENTRY_METADATA: "ghz"}
    with pytest.raises(PayloadError, match="not text"):
        check_qir_metadata([not_text])


def test_qir_metadata_over_the_source_limit_is_refused_before_llvm_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The QIR kept in a QPY circuit's metadata is a source like any other: bounded by
    ``max_source_bytes`` (in UTF-8 bytes) before LLVM is given it."""
    import qhpc.resources.qir as qir_module

    circuit = load_circuit(TYPED_GHZ)
    size = len(TYPED_GHZ.encode("utf-8"))
    check_qir_metadata([circuit], DecodeLimits(max_source_bytes=size))  # at the limit: read

    def no_llvm(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("the oversized QIR reached LLVM")

    monkeypatch.setattr(qir_module, "qir_to_circuits", no_llvm)
    with pytest.raises(LimitExceeded, match="max_source_bytes = 1000") as caught:
        check_qir_metadata([circuit, circuit], DecodeLimits(max_source_bytes=1000))
    assert caught.value.limit == "max_source_bytes"
    assert str(caught.value).startswith("circuit 0: its QIR metadata")
    # characters are not bytes: 600 two-byte characters are 1200 bytes
    wide = circuit.copy()
    wide.metadata = {**circuit.metadata, QIR_METADATA: "; " + "\u00e9" * 600}
    with pytest.raises(LimitExceeded, match="max_source_bytes"):
        check_qir_metadata([wide], DecodeLimits(max_source_bytes=1000))


def test_qir_is_read_only() -> None:
    with pytest.raises(UnsupportedCircuitError, match="does not write"):
        dump_circuit(load_circuit(TYPED_GHZ), "qir")


# -- refusals ---------------------------------------------------------------------------


def refused(source: str | bytes, limits: DecodeLimits | None = None) -> CircuitParseError:
    with pytest.raises(CircuitParseError) as caught:
        if limits is None:
            load_circuits(source, "qir")
        else:
            load_circuits(source, "qir", limits=limits)
    return caught.value


def test_syntax_error_has_llvms_line_and_column() -> None:
    broken = TYPED_GHZ.replace("call void @__quantum__qis__h__body(%Qubit* null)", "call void @")
    error = refused(broken)
    line = TYPED_GHZ.splitlines().index("  call void @__quantum__qis__h__body(%Qubit* null)") + 1
    assert (error.line, error.column) == (line, 13)  # where LLVM expected the name
    assert f"invalid qir circuit at line {line}, column 13" in str(error)
    text = bell_module().ir().replace("ret void", "ret vid")
    error = refused(text)
    assert error.line == text.splitlines().index("  ret vid") + 1


def test_unknown_intrinsic_wrong_arity_and_unsupported_constructs_name_their_place() -> None:
    base = bell_module().ir()
    cases = {
        "unknown intrinsic": (
            base.replace("__quantum__qis__h__body", "__quantum__qis__hadamard__body"),
            "unknown intrinsic '__quantum__qis__hadamard__body' at main:entry:0",
        ),
        "wrong arity": (
            base.replace(
                "call void @__quantum__qis__h__body(ptr null)",
                "call void @__quantum__qis__h__body(ptr null, ptr null)",
            ).replace(
                "declare void @__quantum__qis__h__body(ptr)",
                "declare void @__quantum__qis__h__body(ptr, ptr)",
            ),
            "__quantum__qis__h__body takes 1 argument(s), not 2, at main:entry:0",
        ),
        "classical arithmetic": (
            base.replace("entry:\n", "entry:\n  %x = add i64 1, 2\n"),
            "unsupported construct at main:entry:0: the instruction add",
        ),
        "dynamic qubit": (
            base.replace(
                "call void @__quantum__qis__h__body(ptr null)",
                "%q = call ptr @__quantum__rt__qubit_allocate()\n"
                "  call void @__quantum__qis__h__body(ptr %q)",
            )
            + "declare ptr @__quantum__rt__qubit_allocate()\n",
            "unknown intrinsic '__quantum__rt__qubit_allocate' at main:entry:0",
        ),
        "id past the declared width": (
            base.replace(
                "inttoptr (i64 1 to ptr))\n  call void @__quantum__qis__mz",
                "inttoptr (i64 7 to ptr))\n  call void @__quantum__qis__mz",
                1,
            ),
            "qubit 7 is used but entry point 'main' declares required_num_qubits=2",
        ),
        "no entry point": (base.replace('"entry_point" ', ""), "no entry point"),
    }
    for what, (source, message) in cases.items():
        error = refused(source)
        assert message in str(error), (what, str(error))


def test_loops_branches_on_plain_values_and_unjoined_branches_are_refused() -> None:
    loop = TYPED_TELEPORT.replace(
        "flip:\n  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 3 to %Qubit*))\n"
        "  br label %done",
        "flip:\n  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 3 to %Qubit*))\n"
        "  br label %after_z",
    )
    assert "unsupported construct at teleport:flip:1: a branch back to an earlier block" in str(
        refused(loop)
    )
    plain = TYPED_TELEPORT.replace("br i1 %m1,", "br i1 true,")
    assert "unsupported construct at teleport:entry:8: a branch on a value that is not" in str(
        refused(plain)
    )
    early = TYPED_TELEPORT.replace(
        "fix_x:\n  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 2 to %Qubit*))\n"
        "  br label %after_x",
        "fix_x:\n  ret void",
    )
    assert "unsupported construct at teleport:entry:8: branches that do not join" in str(
        refused(early)
    )
    inner = TYPED_TELEPORT.replace(  # the outer branches join; an inner one returns early
        "fix_x:\n  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 2 to %Qubit*))\n"
        "  br label %after_x",
        "fix_x:\n  %again = call i1 @__quantum__qis__read_result__body(%Result* null)\n"
        "  br i1 %again, label %bail, label %after_x\nbail:\n  ret void",
    )
    assert "unsupported construct at teleport:fix_x:1: branches that do not join" in str(
        refused(inner)
    )


def test_non_constant_angles_and_calls_of_defined_functions_are_refused() -> None:
    base = bell_module().ir()
    angle = (
        base.replace(
            "call void @__quantum__qis__h__body(ptr null)",
            "%a = fadd double 1.0, 2.0\n  call void @__quantum__qis__rx__body(double %a, ptr null)",
        )
        + "declare void @__quantum__qis__rx__body(double, ptr)\n"
    )
    assert "the instruction fadd" in str(refused(angle))
    helper = (
        base.replace("call void @__quantum__qis__h__body(ptr null)", "call void @helper()")
        + "define void @helper() {\n  ret void\n}\n"
    )
    assert "at main:entry:0: a call of the defined function 'helper'" in str(refused(helper))


def test_bad_bitcode_and_binary_do_not_echo_the_input() -> None:
    secret = b"SECRET-PAYLOAD-" * 20
    error = refused(b"BC\xc0\xde" + secret)
    assert "unreadable bitcode" in str(error)
    assert "SECRET" not in str(error)
    truncated = bell_module().bitcode()[:64]
    assert "unreadable bitcode" in str(refused(truncated))
    with pytest.raises(CircuitParseError, match="not QPY or QIR bitcode"):
        detect_format(b"\xff\xfe" + secret)


def test_budgets_bound_source_ids_and_instructions() -> None:
    module, _ = every_gate_module()
    text = module.ir()
    with pytest.raises(LimitExceeded, match="max_source_bytes"):
        load_circuits(text, limits=DecodeLimits(max_source_bytes=len(text) - 1))
    with pytest.raises(LimitExceeded, match="max_operations"):
        load_circuits(text, limits=DecodeLimits(max_operations=10))
    huge = bell_module().ir().replace("i64 1 to ptr", "i64 1000000000000000 to ptr")
    huge = huge.replace('"required_num_qubits"="2"', "")
    with pytest.raises(LimitExceeded, match="max_register_bits"):
        load_circuits(huge)
    wide = bell_module().ir().replace('"required_num_qubits"="2"', '"required_num_qubits"="99999"')
    with pytest.raises(LimitExceeded, match="max_register_bits"):
        load_circuits(wide)
    # bitcode is compact; the text it prints to (kept on the circuit) is measured too
    many = pyqir.SimpleModule("many", num_qubits=2, num_results=0)
    for i in range(400):
        qis.rx(many.builder, i / 100, many.qubits[i % 2])
    bitcode = many.bitcode()
    assert 2 * len(bitcode) < len(many.ir())
    with pytest.raises(LimitExceeded, match="prints to too much"):
        load_circuits(bitcode, limits=DecodeLimits(max_source_bytes=len(bitcode) + 10))


def test_nesting_is_bounded_by_max_depth() -> None:
    module = pyqir.SimpleModule("deep", num_qubits=1, num_results=1)
    b, q, r = module.builder, module.qubits[0], module.results[0]
    qis.mz(b, q, r)

    def nest(level: int) -> None:
        if level:
            qis.if_result(b, r, one=lambda: nest(level - 1))
        else:
            qis.x(b, q)

    nest(8)
    text = module.ir()
    assert load_circuit(text).num_qubits == 1
    with pytest.raises(LimitExceeded, match="max_depth"):
        load_circuits(text, limits=DecodeLimits(max_depth=4))


# -- through the decoding workers --------------------------------------------------------


def test_workers_read_qir_and_screen_qpy_that_carries_it() -> None:
    module = bell_module()
    pool = DecodePool(DecodeLimits(max_seconds=30), workers=1)
    try:
        text_circuits, bitcode_circuits = pool.circuits([module.ir(), module.bitcode()])
        assert text_circuits[0].metadata[QIR_METADATA] == module.ir()
        assert text_circuits[0] == bitcode_circuits[0]
        good = dump_qpy(text_circuits)
        pool.check_qpy(good)
        (again,) = pool.circuits([good])
        assert again[0].metadata[QIR_METADATA] == module.ir()
        tampered = text_circuits[0].copy()
        tampered.x(1)
        with pytest.raises(PayloadError, match="does not describe its gates"):
            pool.check_qpy(dump_qpy([tampered]))
        with pytest.raises(PayloadError, match="payload 0: circuit 0 carries QIR"):
            pool.check_payloads([encode_payload(SamplerTask((tampered,), shots=5))])
        with pytest.raises(CircuitParseError, match=r"line \d+, column \d+"):
            pool.circuits([module.ir().replace("ret void", "ret vid")])
        # the worker is still there, and well
        assert pool.circuits([TYPED_GHZ])[0][0] == typed_ghz_expected()
    finally:
        pool.close()


def test_base64_bitcode_prefixes_are_fixed() -> None:
    from qhpc.api.wire import BITCODE_BASE64_PREFIXES

    module = bell_module()
    raw = module.bitcode()
    wrapped = (0x0B17C0DE).to_bytes(4, "little") + bytes(16) + raw
    for data in (raw, wrapped):
        assert base64.b64encode(data).decode().startswith(BITCODE_BASE64_PREFIXES)


def test_transpile_plugin_drops_the_qir_it_no_longer_matches() -> None:
    from qhpc.program import Batch, Job
    from qhpc.program.transpile import Transpile
    from qhpc.resources import device_target

    circuit = load_circuit(TYPED_GHZ)
    kept = drop_qir_metadata(circuit)
    assert QIR_METADATA not in kept.metadata and QIR_METADATA in circuit.metadata
    assert kept == circuit  # the same gates, a copy
    plain = typed_ghz_expected()
    assert drop_qir_metadata(plain) is plain
    (job,) = Transpile().compile(Batch([Job.sample(circuit, 10)]), device_target("line-5"))
    assert QIR_METADATA not in (job.circuit.metadata or {})
    check_qir_metadata([job.circuit])  # nothing left to mismatch


def test_a_slow_module_is_stopped_at_the_time_limit_and_the_worker_recovers() -> None:
    """~100,000 gates take 3 s (a quiet machine) to 9 s (a loaded one) to read here; the
    worker is stopped at 0.5 s (the walk's own deadline check, or the pool's kill while
    LLVM parses) and replaced. The limit is far below the fastest read: a budget of 4 s
    was not reached on a quiet CI machine."""
    text = bell_module().ir()
    many = "  call void @__quantum__qis__h__body(ptr null)\n" * 100_000
    slow = text.replace("entry:\n", "entry:\n" + many, 1)
    pool = DecodePool(DecodeLimits(max_seconds=0.5, max_source_bytes=8 << 20), workers=1)
    try:
        began = time.monotonic()
        with pytest.raises(LimitExceeded, match="max_seconds"):
            pool.circuits([slow])
        assert time.monotonic() - began < 0.5 + 3
        assert pool.circuits([TYPED_GHZ])[0][0] == typed_ghz_expected()
    finally:
        pool.close()
