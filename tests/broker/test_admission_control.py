"""The admission controller: how many sessions may hold a QPU (broker/admission_control.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qhpc.broker import (
    Admission,
    AdmissionController,
    AdmissionView,
    LatencyModel,
    PolicyError,
)


def reference(
    controller: AdmissionController, duties: Sequence[float | None], prior: float, licences: int
) -> int:
    """The definition, spelt out: the largest n whose sessions (open ones oldest first,
    then newcomers at the prior) all stay within the target, each judged by the sum of
    the others' duty cycles, and with no more newcomers than ``unmeasured`` less the
    unmeasured sessions held; at least 1."""
    known = [prior if d is None else d for d in duties]
    best = 1
    for n in range(2, licences + 1):
        newcomers = n - len(duties)
        guesses = sum(1 for d in duties[:n] if d is None) + max(0, newcomers)
        limited = controller.unmeasured is not None and newcomers > 0
        if limited and guesses > (controller.unmeasured or 0):
            break
        chosen = (known + [prior] * n)[:n]
        ratios = [controller.model.ratio(sum(chosen) - own) for own in chosen]
        if max(ratios) <= controller.target:
            best = n
        else:
            break
    return best


def test_no_sessions_and_no_measurement_admits_by_the_default_prior() -> None:
    controller = AdmissionController()
    got = controller.admit(AdmissionView(now=5.0, licences=8))
    assert got.open == 0 and got.duty_cycles == () and got.prior == controller.default_prior
    assert got.admitted == reference(controller, [], controller.default_prior, 8)
    assert got.at == 5.0 and got.licences == 8 and got.hold == 8 - got.admitted
    assert got.open_latency_ratio == 1.0


def test_light_sessions_share_and_heavy_ones_do_not() -> None:
    controller = AdmissionController()
    light = controller.admit(AdmissionView(0.0, 8, duties=[0.02, 0.03], prior=0.02))
    heavy = controller.admit(AdmissionView(0.0, 8, duties=[0.34, 0.34], prior=0.34))
    assert light.admitted > 2 and heavy.admitted == 1
    assert light.predicted_latency_ratio <= controller.target
    assert light.admitted == reference(controller, [0.02, 0.03], 0.02, 8)
    # two heavy sessions are open: together they already miss the target
    assert heavy.open_latency_ratio > controller.target


def test_all_unmeasured_sessions_count_at_the_prior() -> None:
    controller = AdmissionController(unmeasured=None)
    unmeasured = controller.admit(AdmissionView(0.0, 6, duties=[None, None, None], prior=0.05))
    measured = controller.admit(AdmissionView(0.0, 6, duties=[0.05, 0.05, 0.05], prior=0.05))
    assert unmeasured.admitted == measured.admitted > 3
    assert unmeasured.predicted_latency_ratio == pytest.approx(measured.predicted_latency_ratio)
    assert unmeasured.duty_cycles == (None, None, None)


def test_no_newcomer_while_a_session_is_held_unmeasured() -> None:
    """A prior is a guess: newcomers wait until the held guesses are measured."""
    controller = AdmissionController()  # unmeasured=1
    light = [0.05, 0.05, 0.05]
    assert controller.admit(AdmissionView(0.0, 6, duties=light, prior=0.05)).admitted == 4
    guessing = controller.admit(AdmissionView(0.0, 6, duties=[0.05, None, 0.05], prior=0.05))
    assert guessing.admitted == 3  # the open ones keep their place; nobody new
    crowd = controller.admit(AdmissionView(0.0, 6, duties=[None] * 5, prior=0.0))
    assert crowd.admitted == 5  # more guesses open than allowed: none is sent away
    two = AdmissionController(unmeasured=2)
    assert two.admit(AdmissionView(0.0, 6, duties=[0.05, None, 0.05], prior=0.05)).admitted == 4
    # with nothing open, the first session is let in
    assert controller.admit(AdmissionView(0.0, 6, duties=[], prior=0.0)).admitted == 1


def test_duty_cycles_summing_past_one_admit_a_single_session() -> None:
    controller = AdmissionController()
    got = controller.admit(AdmissionView(0.0, 4, duties=[0.6, 0.5, 0.4], prior=0.5))
    assert got.admitted == 1 and got.open == 3
    assert got.predicted_latency_ratio == 1.0
    assert got.open_latency_ratio == pytest.approx(controller.model.ratio(1.5 - 0.4))
    assert got.hold == 3


def test_one_licence_admits_one_whatever_the_sessions() -> None:
    controller = AdmissionController()
    for duties in ([], [0.0, 0.0], [1.0]):
        assert controller.admit(AdmissionView(0.0, 1, duties=duties, prior=0.0)).admitted == 1


def test_idle_sessions_fill_every_licence_one_newcomer_at_a_time() -> None:
    idle = AdmissionView(0.0, 16, duties=[0.0] * 3, prior=0.0)
    assert AdmissionController().admit(idle).admitted == 4
    got = AdmissionController(unmeasured=None).admit(idle)
    assert got.admitted == 16 and got.hold == 0


def test_a_session_that_is_not_a_number_counts_as_unmeasured_and_out_of_range_is_clipped() -> None:
    controller = AdmissionController()
    got = controller.admit(AdmissionView(0.0, 4, duties=[math.nan, 2.0, -1.0], prior=math.nan))
    assert got.duty_cycles == (None, 1.0, 0.0)
    assert got.prior == controller.default_prior


def test_resource_and_session_ids_pass_through_and_must_match_the_duties() -> None:
    view = AdmissionView(1.0, 4, duties=[0.1, None], resource="qpu", session_ids=["a", "b"])
    got = AdmissionController().admit(view)
    assert got.resource == "qpu" and got.session_ids == ("a", "b")
    with pytest.raises(PolicyError, match="session_ids"):
        AdmissionController().admit(AdmissionView(1.0, 4, duties=[0.1], session_ids=["a", "b"]))


@pytest.mark.parametrize("licences", [0, -3])
def test_no_licence_is_refused(licences: int) -> None:
    with pytest.raises(PolicyError, match="licences"):
        AdmissionController().admit(AdmissionView(0.0, licences))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target": 0.9},
        {"target": math.nan},
        {"target": math.inf},
        {"default_prior": 1.5},
        {"default_prior": -0.1},
        {"default_prior": math.nan},
        {"unmeasured": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(PolicyError):
        AdmissionController(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"linear": -1.0}, {"quadratic": math.nan}])
def test_bad_models_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(PolicyError):
        LatencyModel(**kwargs)


def test_the_model_grows_with_the_others_load_from_one() -> None:
    model = LatencyModel()
    assert model.ratio(0.0) == 1.0 and model.ratio(-1.0) == 1.0
    assert model.ratio(0.1) < model.ratio(0.2) < model.ratio(1.0)


duty = st.one_of(st.none(), st.floats(0.0, 1.0))


@settings(max_examples=200, deadline=None)
@given(
    duties=st.lists(duty, max_size=12),
    prior=st.floats(0.0, 1.0),
    licences=st.integers(1, 20),
    target=st.floats(1.0, 3.0),
    unmeasured=st.one_of(st.none(), st.integers(1, 4)),
)
def test_admits_what_the_definition_says_within_bounds(
    duties: list[float | None],
    prior: float,
    licences: int,
    target: float,
    unmeasured: int | None,
) -> None:
    controller = AdmissionController(target=target, unmeasured=unmeasured)
    got: Admission = controller.admit(AdmissionView(0.0, licences, duties=duties, prior=prior))
    assert 1 <= got.admitted <= licences
    assert got.admitted == reference(controller, duties, prior, licences)
    if got.admitted > 1:
        assert got.predicted_latency_ratio <= target
    # a looser target, or lighter sessions, never admit fewer
    looser = AdmissionController(target=target + 0.5, unmeasured=unmeasured)
    assert looser.admit(AdmissionView(0.0, licences, duties, prior)).admitted >= got.admitted
    lighter = [None if d is None else d / 2 for d in duties]
    assert (
        controller.admit(AdmissionView(0.0, licences, lighter, prior / 2)).admitted >= got.admitted
    )
