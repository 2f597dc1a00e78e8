"""Counts from aer, qx and the emulator agree statistically on the same circuits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from qiskit.circuit import QuantumCircuit
from qiskit.circuit.random import random_circuit
from scipy.stats import chi2_contingency

from qhpc.resources import (
    AerResource,
    EmulatorResource,
    QuantumResource,
    QxResource,
    SamplerResult,
    SamplerTask,
    ScaledClock,
    TimingModel,
    device_target,
)

SHOTS = 4000


def circuits() -> list[QuantumCircuit]:
    out = []
    for seed in range(6):
        circuit = random_circuit(3, 4, max_operands=2, measure=True, seed=100 + seed)
        circuit.name = f"r{seed}"
        out.append(circuit)
    ghz = QuantumCircuit(3, 3, name="ghz")
    ghz.h(0)
    ghz.cx(0, 1)
    ghz.cx(1, 2)
    ghz.measure(range(3), range(3))
    return [*out, ghz]


@pytest.fixture(scope="module")
def resources() -> Iterator[dict[str, QuantumResource]]:
    made: dict[str, QuantumResource] = {
        "aer": AerResource("aer", seed=11),
        "qx": QxResource("qx", seed=12),
        "emulator": EmulatorResource(
            "emulator",
            device=device_target("line-5"),
            timing=TimingModel(),
            noise=False,
            clock=ScaledClock(1e6),
            seed=13,
        ),
    }
    yield made
    for resource in made.values():
        resource.close()


def sample(resource: QuantumResource, batch: list[QuantumCircuit]) -> list[dict[str, int]]:
    result = resource.run(SamplerTask(tuple(batch), shots=SHOTS), timeout=120)
    assert isinstance(result, SamplerResult)
    return [c.counts for c in result.circuits]


def p_value(a: dict[str, int], b: dict[str, int]) -> float:
    keys = sorted(set(a) | set(b))
    if len(keys) == 1:
        return 1.0
    table = [[a.get(k, 0) for k in keys], [b.get(k, 0) for k in keys]]
    return float(chi2_contingency(table).pvalue)


@pytest.mark.parametrize("other", ["qx", "emulator"])
def test_counts_agree_with_aer(resources: dict[str, QuantumResource], other: str) -> None:
    batch = circuits()
    reference = sample(resources["aer"], batch)
    candidate = sample(resources[other], batch)
    for circuit, a, b in zip(batch, reference, candidate, strict=True):
        assert sum(b.values()) == SHOTS
        # Seeds are fixed, so this is deterministic; 1e-3 over 7 circuits is a
        # loose bar that a wrong bit order or a wrong gate fails by far.
        assert p_value(a, b) > 1e-3, f"{other} disagrees with aer on {circuit.name}: {a} vs {b}"


def test_the_comparison_detects_a_different_distribution(
    resources: dict[str, QuantumResource],
) -> None:
    batch = circuits()
    reference = sample(resources["aer"], batch)
    shuffled = sample(resources["qx"], [batch[-1], *batch[:-1]])
    assert min(p_value(a, b) for a, b in zip(reference, shuffled, strict=True)) < 1e-6
