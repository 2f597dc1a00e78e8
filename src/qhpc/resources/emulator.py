"""A timing-faithful QPU model: what scheduling experiments run against.

The emulator answers like a real device: it has a fixed target (a line or
heavy-hex chip with basis gates, error rates and durations), spends modelled
time on every task (per task, per circuit, per shot), goes to ``calibration`` on a
schedule and ``offline`` in configured windows (tasks wait, a running task is
never interrupted by either), and can be paused by an operator. Counts come
from Aer, noisy by default, on circuits transpiled to the device.

Time is emulated: ``time_scale=1000`` makes one modelled second pass in one
real millisecond, so tests and benchmarks run hours of device time quickly.
A :class:`ManualClock` makes every transition deterministic in tests.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from qiskit.circuit import QuantumCircuit

from qhpc.resources.aer import AerResource
from qhpc.resources.base import ResourceState
from qhpc.resources.errors import ResourceConfigError
from qhpc.resources.estimation import MeasurementPlan
from qhpc.resources.local import LocalTask, SamplingResource, TaskStopped
from qhpc.resources.payload import Payload, SampledCircuit, SamplerTask
from qhpc.resources.target import DeviceTarget


class Clock(Protocol):
    """Emulated seconds since the emulator started."""

    def now(self) -> float: ...

    def wait_until(self, when: float, stop: threading.Event) -> bool:
        """Block until ``now() >= when``; False if ``stop`` was set first."""
        ...


class ScaledClock:
    """Real time multiplied by ``scale`` (1000 → one modelled second per real ms)."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ResourceConfigError(f"time_scale must be positive, got {scale}", key="time_scale")
        self.scale = scale
        self._origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self.scale

    def wait_until(self, when: float, stop: threading.Event) -> bool:
        while True:
            remaining = (when - self.now()) / self.scale
            if remaining <= 0:
                return True
            if stop.wait(remaining):
                return False


class ManualClock:
    """A clock that moves only when told to (:meth:`advance`), for deterministic tests."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._cond = threading.Condition()

    def now(self) -> float:
        with self._cond:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def wait_until(self, when: float, stop: threading.Event) -> bool:
        with self._cond:
            while self._now < when:
                if stop.is_set():
                    return False
                self._cond.wait(0.005)
            return True


@dataclass(frozen=True)
class TimingModel:
    """Modelled device time of a task, in seconds."""

    task_overhead: float = 0.02
    circuit_overhead: float = 0.002
    shot_time: float = 200e-6

    def duration(self, circuits: int, shots: int) -> float:
        return self.task_overhead + circuits * (self.circuit_overhead + shots * self.shot_time)


@dataclass(frozen=True)
class Window:
    """A span of emulated time ``[start, end)``."""

    start: float
    end: float

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ResourceConfigError(
                f"window end {self.end} must be after its start {self.start}", key="offline"
            )

    def contains(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class CalibrationSchedule:
    """Calibrate for ``duration`` seconds every ``every`` seconds, first at ``first``."""

    every: float
    duration: float
    first: float | None = None

    def __post_init__(self) -> None:
        if self.every <= 0 or not 0 < self.duration < self.every:
            raise ResourceConfigError(
                "calibration needs every > duration > 0 "
                f"(got every={self.every}, duration={self.duration})",
                key="calibration",
            )

    def window_at(self, t: float) -> Window | None:
        first = self.every if self.first is None else self.first
        if t < first:
            return None
        start = first + ((t - first) // self.every) * self.every
        return Window(start, start + self.duration) if t < start + self.duration else None


class EmulatorResource(SamplingResource):
    """A modelled QPU: device target, timing, calibration, offline windows, noise."""

    type_name = "emulator"

    def __init__(
        self,
        name: str,
        *,
        device: DeviceTarget,
        timing: TimingModel | None = None,
        calibration: CalibrationSchedule | None = None,
        offline: tuple[Window, ...] = (),
        noise: bool = True,
        clock: Clock | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(name)
        self.device = device
        self.timing = timing or TimingModel()
        self.calibration = calibration
        self.offline = tuple(offline)
        self.clock: Clock = clock or ScaledClock(1.0)
        self._paused = threading.Event()
        self._aer = AerResource(f"{name}/aer", device=device, noise=noise, seed=seed)

    def target(self) -> DeviceTarget:
        return self.device

    def metadata(self) -> dict[str, Any]:
        scale = getattr(self.clock, "scale", None)
        return {
            **super().metadata(),
            "device": self.device.name,
            "noise": self._aer.noise,
            "time_scale": scale,
            "timing": {
                "task_overhead_s": self.timing.task_overhead,
                "circuit_overhead_s": self.timing.circuit_overhead,
                "shot_time_s": self.timing.shot_time,
            },
            "calibration": None
            if self.calibration is None
            else {"every_s": self.calibration.every, "duration_s": self.calibration.duration},
            "offline": [[w.start, w.end] for w in self.offline],
        }

    def estimate_seconds(self, payload: Payload) -> float | None:
        """Real seconds the payload will occupy the device (modelled time / time scale)."""
        if isinstance(payload, SamplerTask):
            modelled = self.timing.duration(len(payload.circuits), payload.shots)
        else:
            groups = len(MeasurementPlan.build(payload).groups)
            shots = payload.shots or self.default_estimator_shots
            modelled = self.timing.duration(groups * len(payload.parameter_values), shots)
        return modelled / float(getattr(self.clock, "scale", 1.0))

    # -- operator controls ----------------------------------------------------
    def pause(self) -> None:
        """Stop starting new tasks (the running one finishes)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        with self._cond:
            self._cond.notify_all()

    # -- model -------------------------------------------------------------
    def _state(self) -> tuple[ResourceState, str]:
        state, reason, _ = self._state_at(self.clock.now())
        return state, reason

    def _state_at(self, t: float) -> tuple[ResourceState, str, float | None]:
        """State at emulated time ``t`` and when it next may change (None: unknown)."""
        for window in self.offline:
            if window.contains(t):
                return ResourceState.OFFLINE, f"offline until t={window.end:g}s", window.end
        if self.calibration is not None:
            calibrating = self.calibration.window_at(t)
            if calibrating is not None:
                reason = f"calibrating until t={calibrating.end:g}s"
                return ResourceState.CALIBRATION, reason, calibrating.end
        if self._paused.is_set():
            return ResourceState.MAINTENANCE, "paused by operator", None
        return ResourceState.IDLE, "", None

    def _wait_until_available(self, record: LocalTask) -> None:
        while True:
            state, reason, until = self._state_at(self.clock.now())
            if state.takes_work:
                return
            record.log(f"waiting: {reason}")
            if until is None:  # paused: wait for resume or stop
                while self._paused.is_set():
                    if record.stop_requested.wait(0.01):
                        raise TaskStopped
            elif not self.clock.wait_until(until, record.stop_requested):
                raise TaskStopped

    def _sample(
        self,
        circuits: list[QuantumCircuit],
        shots: int,
        memory: bool,
        seed: int | None,
        record: LocalTask,
    ) -> tuple[list[SampledCircuit], dict[str, object]]:
        started = self.clock.now()
        results, meta = self._aer.simulate(circuits, shots, memory, seed, record)
        modelled = self.timing.duration(len(circuits), shots)
        if not self.clock.wait_until(started + modelled, record.stop_requested):
            raise TaskStopped
        finished = self.clock.now()
        record.log(f"device time {modelled:.6g}s (emulated)")
        return results, {
            **meta,
            "simulator": "emulator",
            "device": self.device.name,
            "qpu_seconds": modelled,
            "emulated_start": started,
            "emulated_end": finished,
        }

    def close(self) -> None:
        super().close()
        self._aer.close()
