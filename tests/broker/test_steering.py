"""Broker.admission: a QPU's open sessions, their measured duty cycles, the controller's
answer (broker/steering.py), on a running broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.broker import (
    AdmissionSettings,
    AdmissionView,
    Broker,
    BrokerConfig,
    PolicyError,
    SessionMode,
)
from qhpc.resources import ResourceRegistry, ResourceSpec, SamplerTask, UnknownResourceError
from qhpc.store import Store

#: an emulator whose tasks take 50 ms of (modelled = real) device time each
EMULATOR = ResourceSpec(
    "emu", "emulator",
    {"noise": False, "seed": 1, "timing": {"task_overhead": 0.05, "circuit_overhead": 0.0,
                                            "shot_time": 0.0}},
)  # fmt: skip


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = ResourceRegistry(
        [ResourceSpec("null", "null", {}), ResourceSpec("other", "null", {}), EMULATOR]
    )
    with Store.open(tmp_path / "steering.db") as store:
        service = Broker(store, registry, BrokerConfig(policy="fifo"))
        service.start()
        try:
            yield service
        finally:
            service.stop()
            registry.close()


def session(broker: Broker, resource: str, mode: SessionMode = SessionMode.MULTIPLEX) -> str:
    record, _ = broker.open_session(
        user="u", account="a", resource=resource, deadline=time.time() + 600, mode=mode
    )
    return record.session_id


def test_no_sessions_admits_by_the_configured_prior(broker: Broker) -> None:
    got = broker.admission("null")
    settings = broker.config.admission
    assert got.resource == "null" and got.open == 0 and got.duty_cycles == ()
    assert got.licences == settings.licences and got.prior == settings.prior
    assert 1 <= got.admitted <= settings.licences
    # nothing measured: the controller's answer for no sessions and the default prior
    assert got.admitted == settings.controller().admit(AdmissionView(0.0, got.licences)).admitted


def test_a_session_is_measured_after_its_tasks_and_feeds_the_prior_when_closed(
    broker: Broker, bell: QuantumCircuit
) -> None:
    sid = session(broker, "emu")
    assert broker.admission("emu").duty_cycles == (None,)  # open, nothing run yet
    for _ in range(broker.config.admission.min_tasks):
        assert broker.run_session_task(sid, SamplerTask((bell,), 10)).state == "completed"
    got = broker.admission("emu")
    assert got.session_ids == (sid,) and got.open == 1
    (duty,) = got.duty_cycles
    # back to back, each task 50 ms of device time: the session keeps the QPU busy
    # most of its time (the rest is the client's and the broker's own overhead)
    assert duty is not None and 0.3 < duty <= 1.0
    assert got.prior == pytest.approx(duty, rel=0.2)  # the one measured session
    broker.close_session(sid)
    after = broker.admission("emu")
    assert after.open == 0 and after.duty_cycles == ()
    assert after.prior == pytest.approx(duty, rel=0.2)  # remembered from the closed one


def test_sessions_of_another_resource_do_not_count(broker: Broker, bell: QuantumCircuit) -> None:
    mine, theirs = session(broker, "null"), session(broker, "other")
    for _ in range(3):
        broker.run_session_task(theirs, SamplerTask((bell,), 1))
    got = broker.admission("null")
    assert got.session_ids == (mine,) and got.duty_cycles == (None,)
    # the other resource's measured session is not this one's prior
    assert got.prior == broker.config.admission.prior
    assert broker.admission("other").duty_cycles == (0.0,)  # null reports no device time


def test_open_sessions_come_oldest_first_and_an_exclusive_one_takes_the_whole_qpu(
    broker: Broker,
) -> None:
    first = session(broker, "null", SessionMode.EXCLUSIVE)
    second = session(broker, "null")
    got = broker.admission("null", licences=6)
    assert got.session_ids == (first, second)
    assert got.duty_cycles == (1.0, None)
    assert got.admitted == 1 and got.hold == 5
    assert got.open_latency_ratio > got.target


def test_licences_given_replace_the_configured_total(broker: Broker) -> None:
    assert broker.admission("null", licences=1).admitted == 1
    assert broker.admission("null", licences=1).licences == 1


@pytest.mark.parametrize("licences", [0, -1, 10_001])
def test_a_licence_total_out_of_range_is_refused(broker: Broker, licences: int) -> None:
    with pytest.raises(PolicyError, match="licences"):
        broker.admission("null", licences=licences)


def test_an_unknown_resource_is_refused(broker: Broker) -> None:
    with pytest.raises(UnknownResourceError):
        broker.admission("no-such-qpu")


def test_settings_are_checked_when_made() -> None:
    for bad in (
        {"target": 0.5},
        {"prior": 2.0},
        {"licences": 0},
        {"half_life": 0.0},
        {"unmeasured": 0},
    ):
        with pytest.raises(PolicyError):
            AdmissionSettings(**bad).duty_cycles()  # type: ignore[arg-type]


def test_the_configured_target_and_prior_are_the_controllers(tmp_path: Path) -> None:
    registry = ResourceRegistry([ResourceSpec("null", "null", {})])
    settings = AdmissionSettings(target=1.5, prior=0.1, licences=9, unmeasured=None)
    with Store.open(tmp_path / "s.db") as store:
        broker = Broker(store, registry, replace(BrokerConfig(), admission=settings))
        got = broker.admission("null")
    registry.close()
    assert got.target == 1.5 and got.prior == 0.1 and got.licences == 9
    # prior 0.1, target 1.5, newcomers not one at a time: several sessions fit (and the
    # answer is the controller's)
    assert got.admitted > 1
    assert got.admitted == settings.controller().admit(AdmissionView(0.0, 9)).admitted
