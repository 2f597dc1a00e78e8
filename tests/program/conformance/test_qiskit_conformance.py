"""Qiskit's own StatevectorEstimator/StatevectorSampler tests, run on qhpc's primitives.

The test modules come from the sdist of the installed Qiskit (see
``qiskit_tests``); inside them the names ``StatevectorEstimator`` and
``StatevectorSampler`` build qhpc's :class:`~qhpc.primitives.EstimatorV2` and
:class:`~qhpc.primitives.SamplerV2` over one local ``aer`` resource. Every test
must pass except those in :data:`EXCEPTIONS`, which assert a limitation of
Qiskit's reference implementation or the exact output of its random generator.

Without network (and not under ``CI=true``) the module is skipped; under CI a
failed download is an error.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest
import qiskit_tests

from qhpc.primitives import EstimatorV2, SamplerV2
from qhpc.resources import AerResource

#: "Class::test" or "Class::test[subtest]" → why qhpc rightly differs from Qiskit's
#: reference primitive; each is an expected failure, and an error once it passes
EXCEPTIONS: dict[str, str] = {
    "TestStatevectorEstimator::test_precision_seed": (
        "exact output of Qiskit's random generator: one shot (precision 1.0) with seed 1 "
        "gives 1.9011 on StatevectorEstimator's Gaussian noise; qhpc samples the shot on "
        "aer and gets a sampled value (2.0)"
    ),
    "TestStatevectorSampler::test_run_errors[with control flow]": (
        "limitation of StatevectorSampler, which refuses control flow; aer runs a "
        "for_loop, so qhpc's sampler does too"
    ),
}

_qpu: list[AerResource] = []


def _aer() -> AerResource:
    if not _qpu:
        _qpu.append(AerResource("aer", seed=11))
    return _qpu[0]


def StatevectorEstimator(*, default_precision: float = 0.0, seed: Any = None) -> EstimatorV2:  # noqa: N802
    return EstimatorV2(_aer(), default_precision=default_precision, seed=seed)


def StatevectorSampler(*, default_shots: int = 1024, seed: Any = None) -> SamplerV2:  # noqa: N802
    return SamplerV2(_aer(), default_shots=default_shots, seed=seed)


try:
    _modules = qiskit_tests.load(
        {
            "estimator": {"StatevectorEstimator": StatevectorEstimator},
            "sampler": {"StatevectorSampler": StatevectorSampler},
        }
    )
except qiskit_tests.FetchError as error:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(f"Qiskit's tests unavailable: {error}", allow_module_level=True)


def _expect_failing_subtests(method: Any, reasons: dict[str, str]) -> Any:
    """``method`` with the subtests named in ``reasons`` reported as expected failures."""

    @functools.wraps(method)
    def wrapped(self: Any) -> None:
        subtest = self.subTest

        @contextlib.contextmanager
        def expecting(msg: Any = None, **params: Any) -> Iterator[None]:
            with subtest(msg, **params):
                if msg not in reasons:
                    yield
                    return
                try:
                    yield
                except Exception:  # any failure is the expected one
                    pytest.xfail(reasons[msg])
                raise AssertionError(f"expected to fail, passed: {reasons[msg]}")

        self.subTest = expecting
        method(self)

    return wrapped


def _with_exceptions(cls: type) -> type:
    by_subtest: dict[str, dict[str, str]] = {}
    for test_id, reason in EXCEPTIONS.items():
        owner, _, name = test_id.partition("::")
        if owner != cls.__name__:
            continue
        name, _, subtest = name.removesuffix("]").partition("[")
        method = getattr(cls, name)  # a stale entry is an error
        if subtest:
            by_subtest.setdefault(name, {})[subtest] = reason
        else:
            setattr(cls, name, pytest.mark.xfail(reason=reason, strict=True)(method))
    for name, reasons in by_subtest.items():
        setattr(cls, name, _expect_failing_subtests(getattr(cls, name), reasons))
    return cls


TestStatevectorEstimator = _with_exceptions(_modules["estimator"].TestStatevectorEstimator)
TestStatevectorSampler = _with_exceptions(_modules["sampler"].TestStatevectorSampler)


@pytest.fixture(scope="module", autouse=True)
def _close_aer() -> Iterator[None]:
    yield
    while _qpu:
        _qpu.pop().close()


def test_qiskit_tests_run_qhpc_primitives() -> None:
    assert _modules["estimator"].StatevectorEstimator is StatevectorEstimator
    assert _modules["sampler"].StatevectorSampler is StatevectorSampler
    assert isinstance(StatevectorEstimator(), EstimatorV2)
    assert isinstance(StatevectorSampler(), SamplerV2)
