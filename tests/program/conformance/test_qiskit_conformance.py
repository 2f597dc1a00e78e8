"""Qiskit's own StatevectorEstimator/StatevectorSampler tests, run on qhpc's primitives.

The test modules come from the sdist of the installed Qiskit (``qiskit_tests``);
inside them the names ``StatevectorEstimator`` and ``StatevectorSampler`` build
qhpc's :class:`~qhpc.primitives.EstimatorV2` and :class:`~qhpc.primitives.SamplerV2`
over one local ``aer`` resource. Every test must pass except those in
``qiskit_tests.EXCEPTIONS``. Without network (and not under ``CI=true``) the
module is skipped; under CI a failed download is an error.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import qiskit_tests

from qhpc.primitives import EstimatorV2, SamplerV2
from qhpc.resources import AerResource

_qpu: list[AerResource] = []


def _aer() -> AerResource:
    if not _qpu:
        _qpu.append(AerResource("aer", seed=11))
    return _qpu[0]


TestStatevectorEstimator, TestStatevectorSampler, _modules = qiskit_tests.conformance_classes(
    _aer, prefix="qhpc_qiskit_tests_aer"
)


@pytest.fixture(scope="module", autouse=True)
def _close_aer() -> Iterator[None]:
    yield
    while _qpu:
        _qpu.pop().close()


def test_qiskit_tests_run_qhpc_primitives() -> None:
    estimator = _modules["estimator"].StatevectorEstimator(default_precision=0.5)
    sampler = _modules["sampler"].StatevectorSampler(default_shots=7)
    assert isinstance(estimator, EstimatorV2) and estimator.default_precision == 0.5
    assert isinstance(sampler, SamplerV2) and sampler.default_shots == 7
