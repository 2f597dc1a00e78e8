from __future__ import annotations

from collections.abc import Iterator

import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.resources import AerResource


@pytest.fixture
def bell() -> QuantumCircuit:
    circuit = QuantumCircuit(2, 2, name="bell")
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.measure([0, 1], [0, 1])
    return circuit


@pytest.fixture
def aer() -> Iterator[AerResource]:
    resource = AerResource("aer", seed=42)
    yield resource
    resource.close()
