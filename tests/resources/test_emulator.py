from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from qiskit.circuit import QuantumCircuit

from qhpc.resources import (
    CalibrationSchedule,
    EmulatorResource,
    ManualClock,
    ResourceConfigError,
    ResourceState,
    SamplerResult,
    SamplerTask,
    ScaledClock,
    TaskStatus,
    TimingModel,
    Window,
    device_target,
)

TIMING = TimingModel(task_overhead=1.0, circuit_overhead=0.5, shot_time=0.01)


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> Iterator[EmulatorResource]:
    resource = EmulatorResource(
        "qpu",
        device=device_target("line-5"),
        timing=TIMING,
        calibration=CalibrationSchedule(every=100.0, duration=10.0),
        offline=(Window(300.0, 350.0),),
        noise=False,
        clock=clock,
        seed=4,
    )
    yield resource
    resource.close()


def test_modelled_duration() -> None:
    assert TIMING.duration(circuits=2, shots=100) == pytest.approx(1.0 + 2 * (0.5 + 1.0))


def test_task_takes_exactly_its_modelled_time(
    emulator: EmulatorResource, clock: ManualClock, bell: QuantumCircuit
) -> None:
    task = emulator.task_start(SamplerTask((bell,), shots=100))
    wait_for(lambda: emulator.task_status(task) is TaskStatus.RUNNING)
    assert emulator.status().busy
    clock.advance(2.4)  # needs 1.0 + 0.5 + 1.0 = 2.5 s
    time.sleep(0.05)
    assert emulator.task_status(task) is TaskStatus.RUNNING
    clock.advance(0.1)
    assert emulator.task_wait(task, timeout=20) is TaskStatus.COMPLETED
    result = emulator.task_result(task)
    assert isinstance(result, SamplerResult)
    assert result.metadata["qpu_seconds"] == pytest.approx(2.5)
    assert result.metadata["emulated_end"] - result.metadata["emulated_start"] == pytest.approx(2.5)
    assert set(result.circuits[0].counts) <= {"00", "11"}


def test_calibration_window_holds_tasks_back(
    emulator: EmulatorResource, clock: ManualClock, bell: QuantumCircuit
) -> None:
    assert emulator.status().state is ResourceState.IDLE
    clock.advance(100.0)
    status = emulator.status()
    assert status.state is ResourceState.CALIBRATION
    assert "until t=110" in status.reason
    task = emulator.task_start(SamplerTask((bell,), shots=10))
    time.sleep(0.05)
    assert emulator.task_status(task) is TaskStatus.QUEUED
    assert emulator.status().pending == 1
    clock.advance(10.0)  # calibration over at t=110
    wait_for(lambda: emulator.task_status(task) is TaskStatus.RUNNING)
    clock.advance(5.0)
    assert emulator.task_wait(task, timeout=20) is TaskStatus.COMPLETED
    assert emulator.task_result(task).metadata["emulated_start"] == pytest.approx(110.0)
    assert "waiting: calibrating" in emulator.task_logs(task)
    clock.advance(90.0)  # t=205: second window
    assert emulator.status().state is ResourceState.CALIBRATION


def test_offline_window_and_pause(
    emulator: EmulatorResource, clock: ManualClock, bell: QuantumCircuit
) -> None:
    clock.advance(320.0)
    assert emulator.status().state is ResourceState.OFFLINE
    assert not emulator.is_accessible()
    clock.advance(40.0)  # t=360
    assert emulator.status().state is ResourceState.IDLE
    emulator.pause()
    assert emulator.status().state is ResourceState.MAINTENANCE
    task = emulator.task_start(SamplerTask((bell,), shots=10))
    time.sleep(0.05)
    assert emulator.task_status(task) is TaskStatus.QUEUED
    emulator.resume()
    wait_for(lambda: emulator.task_status(task) is TaskStatus.RUNNING)
    clock.advance(5.0)
    assert emulator.task_wait(task, timeout=20) is TaskStatus.COMPLETED


def test_stop_while_waiting_for_calibration(
    emulator: EmulatorResource, clock: ManualClock, bell: QuantumCircuit
) -> None:
    clock.advance(100.0)
    task = emulator.task_start(SamplerTask((bell,), shots=10))
    emulator.task_stop(task)
    assert emulator.task_wait(task, timeout=20) is TaskStatus.CANCELLED
    clock.advance(10.0)
    after = emulator.task_start(SamplerTask((bell,), shots=10))
    wait_for(lambda: emulator.task_status(after) is TaskStatus.RUNNING)
    clock.advance(5.0)
    assert emulator.task_wait(after, timeout=20) is TaskStatus.COMPLETED


def test_stop_while_running(
    emulator: EmulatorResource, clock: ManualClock, bell: QuantumCircuit
) -> None:
    task = emulator.task_start(SamplerTask((bell,), shots=10))
    wait_for(lambda: emulator.task_status(task) is TaskStatus.RUNNING)
    emulator.task_stop(task)
    assert emulator.task_wait(task, timeout=20) is TaskStatus.CANCELLED


def test_scaled_time_runs_faster_by_the_scale(bell: QuantumCircuit) -> None:
    # 10 s of device time at 100x → 0.1 s of real time.
    resource = EmulatorResource(
        "fast",
        device=device_target("line-5"),
        timing=TimingModel(task_overhead=10.0, circuit_overhead=0.0, shot_time=0.0),
        noise=False,
        clock=ScaledClock(100.0),
    )
    started = time.perf_counter()
    result = resource.run(SamplerTask((bell,), shots=10), timeout=30)
    elapsed = time.perf_counter() - started
    assert result.metadata["qpu_seconds"] == pytest.approx(10.0)
    assert elapsed >= 0.1
    assert elapsed < 5.0  # generous: machines here are shared and noisy
    resource.close()


def test_emulator_transpiles_to_its_device(emulator: EmulatorResource, clock: ManualClock) -> None:
    circuit = QuantumCircuit(3, 3)
    circuit.h(0)
    circuit.cx(0, 2)  # not adjacent on a line: needs routing
    circuit.ccx(0, 1, 2)
    circuit.measure(range(3), range(3))
    task = emulator.task_start(SamplerTask((circuit,), shots=10))
    wait_for(lambda: emulator.task_status(task) is TaskStatus.RUNNING)
    clock.advance(10.0)
    assert emulator.task_wait(task, timeout=20) is TaskStatus.COMPLETED
    assert emulator.task_result(task).metadata["depths"][0] > circuit.depth()


def test_bad_schedules_are_config_errors() -> None:
    with pytest.raises(ResourceConfigError, match="every > duration"):
        CalibrationSchedule(every=10, duration=20)
    with pytest.raises(ResourceConfigError, match="must be after its start"):
        Window(5, 5)
    with pytest.raises(ResourceConfigError, match="time_scale must be positive"):
        ScaledClock(0)


def test_estimates_follow_the_timing_model_and_scale(bell: QuantumCircuit) -> None:
    from qhpc.resources import EstimatorTask

    resource = EmulatorResource(
        "est", device=device_target("line-5"), timing=TIMING, noise=False, clock=ScaledClock(10.0)
    )
    assert resource.estimate_seconds(SamplerTask((bell, bell), shots=100)) == pytest.approx(0.4)
    circuit = bell.remove_final_measurements(inplace=False)
    estimator = EstimatorTask.create(circuit, ["ZZ", "XX"], shots=100)  # two groups
    assert resource.estimate_seconds(estimator) == pytest.approx(0.4)
    resource.close()
