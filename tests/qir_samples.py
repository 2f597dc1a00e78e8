# ruff: noqa: E501  (LLVM IR lines are as long as LLVM writes them)
"""QIR programs the tests share: built with pyqir's builder, or written by hand.

pyqir 0.12's builder writes opaque pointers (``ptr``) only, so the typed-pointer
(``%Qubit*``) programs are written by hand in the shape older QIR generators
(pyqir < 0.10, qiskit-qir) emitted: named opaque struct types, ``i8*`` labels reached
through ``getelementptr``.
"""

from __future__ import annotations

import math

import pyqir
import pyqir.qis as qis
import pyqir.rt as rt
from qiskit.circuit import QuantumCircuit


def bell_module() -> pyqir.SimpleModule:
    """H, CNOT, both qubits measured and recorded (base profile, opaque pointers)."""
    module = pyqir.SimpleModule("bell", num_qubits=2, num_results=2)
    builder = pyqir.BasicQisBuilder(module.builder)
    q, r = module.qubits, module.results
    builder.h(q[0])
    builder.cx(q[0], q[1])
    builder.mz(q[0], r[0])
    builder.mz(q[1], r[1])
    label = module.add_byte_string(b"r0")
    rt.result_record_output(module.builder, r[0], label)
    rt.result_record_output(module.builder, r[1], module.add_byte_string(b"r1"))
    return module


def every_gate_module() -> tuple[pyqir.SimpleModule, QuantumCircuit]:
    """Every gate the builder offers on 3 qubits, and the same circuit built in Qiskit."""
    module = pyqir.SimpleModule("gates", num_qubits=3, num_results=3)
    b, q, r = module.builder, module.qubits, module.results
    expected = QuantumCircuit(3, 3, name="gates")
    steps = [
        (lambda: qis.h(b, q[0]), lambda: expected.h(0)),
        (lambda: qis.x(b, q[1]), lambda: expected.x(1)),
        (lambda: qis.y(b, q[2]), lambda: expected.y(2)),
        (lambda: qis.z(b, q[0]), lambda: expected.z(0)),
        (lambda: qis.s(b, q[1]), lambda: expected.s(1)),
        (lambda: qis.s_adj(b, q[2]), lambda: expected.sdg(2)),
        (lambda: qis.t(b, q[0]), lambda: expected.t(0)),
        (lambda: qis.t_adj(b, q[1]), lambda: expected.tdg(1)),
        (lambda: qis.rx(b, 0.3, q[0]), lambda: expected.rx(0.3, 0)),
        (lambda: qis.ry(b, -1.1, q[1]), lambda: expected.ry(-1.1, 1)),
        (lambda: qis.rz(b, math.pi / 5, q[2]), lambda: expected.rz(math.pi / 5, 2)),
        (lambda: qis.cx(b, q[0], q[2]), lambda: expected.cx(0, 2)),
        (lambda: qis.cz(b, q[1], q[0]), lambda: expected.cz(1, 0)),
        (lambda: qis.swap(b, q[0], q[1]), lambda: expected.swap(0, 1)),
        (lambda: qis.ccx(b, q[0], q[1], q[2]), lambda: expected.ccx(0, 1, 2)),
        (lambda: qis.h(b, q[2]), lambda: expected.h(2)),
    ]
    for build, mirror in steps:
        build()
        mirror()
    for i in range(3):
        qis.mz(b, q[i], r[i])
        expected.measure(i, i)
    return module, expected


def adaptive_module() -> tuple[pyqir.SimpleModule, QuantumCircuit]:
    """Measure a superposed qubit and branch on it (pyqir's if_result, opaque pointers)."""
    module = pyqir.SimpleModule("feedback", num_qubits=2, num_results=2)
    b, q, r = module.builder, module.qubits, module.results
    qis.h(b, q[0])
    qis.mz(b, q[0], r[0])
    qis.if_result(b, r[0], one=lambda: qis.x(b, q[1]), zero=lambda: qis.h(b, q[1]))
    qis.mz(b, q[1], r[1])
    expected = QuantumCircuit(2, 2, name="feedback")
    expected.h(0)
    expected.measure(0, 0)
    with expected.if_test((expected.clbits[0], True)) as otherwise:
        expected.x(1)
    with otherwise:
        expected.h(1)
    expected.measure(1, 1)
    return module, expected


#: base profile, typed pointers, output labels through getelementptr (hand-written)
TYPED_GHZ = r"""
%Qubit = type opaque
%Result = type opaque

@0 = internal constant [3 x i8] c"r0\00"
@1 = internal constant [3 x i8] c"r1\00"
@2 = internal constant [3 x i8] c"r2\00"
@3 = internal constant [2 x i8] c"t\00"

define void @ghz() #0 {
entry:
  call void @__quantum__rt__initialize(i8* null)
  call void @__quantum__qis__h__body(%Qubit* null)
  call void @__quantum__qis__cnot__body(%Qubit* null, %Qubit* inttoptr (i64 1 to %Qubit*))
  call void @__quantum__qis__cnot__body(%Qubit* inttoptr (i64 1 to %Qubit*), %Qubit* inttoptr (i64 2 to %Qubit*))
  call void @__quantum__qis__rz__body(double 0.5, %Qubit* inttoptr (i64 2 to %Qubit*))
  call void @__quantum__qis__mz__body(%Qubit* null, %Result* null)
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 1 to %Qubit*), %Result* inttoptr (i64 1 to %Result*))
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 2 to %Qubit*), %Result* inttoptr (i64 2 to %Result*))
  call void @__quantum__rt__tuple_record_output(i64 3, i8* getelementptr inbounds ([2 x i8], [2 x i8]* @3, i32 0, i32 0))
  call void @__quantum__rt__result_record_output(%Result* null, i8* getelementptr inbounds ([3 x i8], [3 x i8]* @0, i32 0, i32 0))
  call void @__quantum__rt__result_record_output(%Result* inttoptr (i64 1 to %Result*), i8* getelementptr inbounds ([3 x i8], [3 x i8]* @1, i32 0, i32 0))
  call void @__quantum__rt__result_record_output(%Result* inttoptr (i64 2 to %Result*), i8* getelementptr inbounds ([3 x i8], [3 x i8]* @2, i32 0, i32 0))
  ret void
}

declare void @__quantum__rt__initialize(i8*)
declare void @__quantum__qis__h__body(%Qubit*)
declare void @__quantum__qis__cnot__body(%Qubit*, %Qubit*)
declare void @__quantum__qis__rz__body(double, %Qubit*)
declare void @__quantum__qis__mz__body(%Qubit*, %Result* writeonly) #1
declare void @__quantum__rt__tuple_record_output(i64, i8*)
declare void @__quantum__rt__result_record_output(%Result*, i8*)

attributes #0 = { "entry_point" "qir_profiles"="base_profile" "output_labeling_schema"="schema_id" "required_num_qubits"="3" "required_num_results"="3" }
attributes #1 = { "irreversible" }

!llvm.module.flags = !{!0, !1, !2, !3}
!0 = !{i32 1, !"qir_major_version", i32 1}
!1 = !{i32 7, !"qir_minor_version", i32 0}
!2 = !{i32 1, !"dynamic_qubit_management", i1 false}
!3 = !{i32 1, !"dynamic_result_management", i1 false}
"""


def typed_ghz_expected() -> QuantumCircuit:
    expected = QuantumCircuit(3, 3, name="ghz")
    expected.h(0)
    expected.cx(0, 1)
    expected.cx(1, 2)
    expected.rz(0.5, 2)
    for i in range(3):
        expected.measure(i, i)
    return expected


#: adaptive profile, typed pointers, hand-written: a teleported |1> (the corrections
#: are conditional on both measurements, the second test nested in the first's blocks)
#: and a zero-only branch (``br`` whose true side is the join block)
TYPED_TELEPORT = r"""
%Qubit = type opaque
%Result = type opaque

define void @teleport() #0 {
entry:
  call void @__quantum__qis__x__body(%Qubit* null)
  call void @__quantum__qis__h__body(%Qubit* inttoptr (i64 1 to %Qubit*))
  call void @__quantum__qis__cnot__body(%Qubit* inttoptr (i64 1 to %Qubit*), %Qubit* inttoptr (i64 2 to %Qubit*))
  call void @__quantum__qis__cnot__body(%Qubit* null, %Qubit* inttoptr (i64 1 to %Qubit*))
  call void @__quantum__qis__h__body(%Qubit* null)
  call void @__quantum__qis__mz__body(%Qubit* null, %Result* null)
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 1 to %Qubit*), %Result* inttoptr (i64 1 to %Result*))
  %m1 = call i1 @__quantum__qis__read_result__body(%Result* inttoptr (i64 1 to %Result*))
  br i1 %m1, label %fix_x, label %after_x

fix_x:
  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 2 to %Qubit*))
  br label %after_x

after_x:
  %m0 = call i1 @__quantum__qis__read_result__body(%Result* null)
  br i1 %m0, label %fix_z, label %after_z

fix_z:
  call void @__quantum__qis__z__body(%Qubit* inttoptr (i64 2 to %Qubit*))
  br label %after_z

after_z:
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 2 to %Qubit*), %Result* inttoptr (i64 2 to %Result*))
  %m2 = call i1 @__quantum__qis__read_result__body(%Result* inttoptr (i64 2 to %Result*))
  br i1 %m2, label %done, label %flip

flip:
  call void @__quantum__qis__x__body(%Qubit* inttoptr (i64 3 to %Qubit*))
  br label %done

done:
  call void @__quantum__qis__mz__body(%Qubit* inttoptr (i64 3 to %Qubit*), %Result* inttoptr (i64 3 to %Result*))
  call void @__quantum__rt__result_record_output(%Result* inttoptr (i64 2 to %Result*), i8* null)
  call void @__quantum__rt__result_record_output(%Result* inttoptr (i64 3 to %Result*), i8* null)
  ret void
}

declare void @__quantum__qis__x__body(%Qubit*)
declare void @__quantum__qis__z__body(%Qubit*)
declare void @__quantum__qis__h__body(%Qubit*)
declare void @__quantum__qis__cnot__body(%Qubit*, %Qubit*)
declare void @__quantum__qis__mz__body(%Qubit*, %Result* writeonly) #1
declare i1 @__quantum__qis__read_result__body(%Result*)
declare void @__quantum__rt__result_record_output(%Result*, i8*)

attributes #0 = { "entry_point" "qir_profiles"="adaptive_profile" "output_labeling_schema"="schema_id" "required_num_qubits"="4" "required_num_results"="4" }
attributes #1 = { "irreversible" }
"""


def teleport_expected() -> QuantumCircuit:
    expected = QuantumCircuit(4, 4, name="teleport")
    expected.x(0)
    expected.h(1)
    expected.cx(1, 2)
    expected.cx(0, 1)
    expected.h(0)
    expected.measure(0, 0)
    expected.measure(1, 1)
    with expected.if_test((expected.clbits[1], True)):
        expected.x(2)
    with expected.if_test((expected.clbits[0], True)):
        expected.z(2)
    expected.measure(2, 2)
    with expected.if_test((expected.clbits[2], False)):
        expected.x(3)
    expected.measure(3, 3)
    return expected
