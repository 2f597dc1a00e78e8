from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from qiskit.circuit import QuantumCircuit

from helpers import LogCapture
from qhpc.logcontext import CaptureIds, JsonFormatter
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


@pytest.fixture
def qhpc_log() -> Iterator[LogCapture]:
    """Every qhpc record at INFO and above while the test runs."""
    capture = LogCapture()
    handler = logging.StreamHandler(capture.stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CaptureIds())
    logger = logging.getLogger("qhpc")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
