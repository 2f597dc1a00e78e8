"""The five ways of scheduling hybrid work that the study compares.

Each mode says how a job reaches the QPU; the broker's policy objects decide
the order of tasks in every mode (see :mod:`qhpc.study.simulator`). A mode
drives the simulator through :class:`ModeEngine`, the few calls it needs, so
this module sits below the simulator rather than in a circle with it.

- ``exclusive`` (seed 004's *high-level only*): Slurm reserves the QPU for a
  whole job. One job at a time holds an exclusive session; its iterations run
  at once, the QPU idles while the job thinks.
- ``fifo-circuit`` (*low-level only*): jobs run without a reservation and queue
  every circuit as its own task, behind everybody else's.
- ``split`` (seed 002): a hybrid job is split into one Slurm sub-job per quantum
  block, linked by dependencies; each sub-job reserves the QPU only for its
  block, so Slurm can interleave jobs, at the price of one job start per block.
- ``multiplex`` (qhpc): Slurm grants up to ``licences`` hybrid jobs a shared
  session; the broker runs session tasks first and fills every gap with batch
  tasks.
- ``admission`` (qhpc with duty-cycle admission): as ``multiplex``, but Slurm
  grants a session only while the broker's admission controller
  (:class:`qhpc.broker.AdmissionController`, fed the sessions' measured duty
  cycles) says one more fits the latency target; jobs beyond wait for a licence,
  batch work fills the rest.

With fair share on, the base policy is ``fairshare`` (in the broker and for
Slurm's job order); off, ``fifo``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from qhpc.broker import SessionMode
from qhpc.study.workload import BatchJob, Environment, HybridJob


class Mode(StrEnum):
    EXCLUSIVE = "exclusive"
    FIFO_CIRCUIT = "fifo-circuit"
    SPLIT = "split"
    MULTIPLEX = "multiplex"
    ADMISSION = "admission"


#: the modes in which the broker multiplexes sessions and orders batch tasks itself
MULTIPLEXED = frozenset({Mode.MULTIPLEX, Mode.ADMISSION})

MODE_TITLES: dict[Mode, str] = {
    Mode.EXCLUSIVE: "exclusive reservation per job (high-level)",
    Mode.FIFO_CIRCUIT: "FIFO per circuit (low-level)",
    Mode.SPLIT: "split jobs (seed 002)",
    Mode.MULTIPLEX: "qhpc multiplex (sessions first + backfill)",
    Mode.ADMISSION: "qhpc multiplex + duty-cycle admission",
}


@dataclass(frozen=True)
class Strategy:
    mode: Mode
    fairshare: bool

    @property
    def key(self) -> str:
        return f"{self.mode}+fairshare" if self.fairshare else str(self.mode)

    @property
    def base_policy(self) -> str:
        return "fairshare" if self.fairshare else "fifo"

    @classmethod
    def parse(cls, key: str) -> Strategy:
        name, _, extra = key.partition("+")
        try:
            mode = Mode(name)
        except ValueError:
            known = ", ".join(m.value for m in Mode)
            raise ValueError(f"unknown mode {name!r}; known: {known} (add +fairshare)") from None
        if extra not in ("", "fairshare"):
            raise ValueError(f"unknown mode option {extra!r} in {key!r}; only +fairshare")
        return cls(mode, extra == "fairshare")


STRATEGIES: tuple[Strategy, ...] = tuple(Strategy(m, f) for m in Mode for f in (False, True))


class ModeEngine(Protocol):
    """What a mode calls on the simulator (:class:`qhpc.study.simulator.Engine`)."""

    now: float
    environment: Environment

    def after(self, delay: float, action: Callable[[], None]) -> None: ...

    def job_started(self, job_id: str) -> None: ...

    def job_finished(self, job_id: str) -> None: ...

    def open_session(self, job_id: str, account: str, mode: SessionMode) -> str: ...

    def close_session(self, session_id: str) -> None: ...

    def submit(
        self,
        job_id: str,
        account: str,
        circuits_per_task: Sequence[int],
        shots: int,
        session: str | None,
        ready_at: float,
        done: Callable[[], None],
        *,
        iteration: int | None = None,
        requested_at: float | None = None,
    ) -> None: ...

    def request_grant(
        self, job_id: str, account: str, ready_at: float, then: Callable[[], None]
    ) -> None: ...

    def release_grant(self, job_id: str) -> None: ...


def grant_capacity(mode: Mode, licences: int) -> int:
    """How many jobs Slurm lets hold the QPU at once in ``mode`` (0: no gating)."""
    if mode in (Mode.EXCLUSIVE, Mode.SPLIT):
        return 1
    if mode in MULTIPLEXED:
        return licences  # admission: at most; the controller decides how many now
    return 0


def start_hybrid(engine: ModeEngine, job: HybridJob, mode: Mode) -> None:
    """Run one hybrid program from its arrival (``engine.now``) to its last result."""
    ready = engine.now
    if mode is Mode.SPLIT:
        _split_block(engine, job, 0, ready)
        return
    if mode is Mode.FIFO_CIRCUIT:
        latency = engine.environment.job_start_latency
        engine.after(latency, lambda: _iterate(engine, job, 0, None, ready))
        return
    session_mode = SessionMode.EXCLUSIVE if mode is Mode.EXCLUSIVE else SessionMode.MULTIPLEX

    def granted() -> None:
        session = engine.open_session(job.job_id, job.account, session_mode)
        engine.job_started(job.job_id)

        def finished() -> None:
            engine.close_session(session)
            engine.release_grant(job.job_id)
            engine.job_finished(job.job_id)

        _iterate(engine, job, 0, session, ready, finished)

    engine.request_grant(job.job_id, job.account, ready, granted)


def _iterate(
    engine: ModeEngine,
    job: HybridJob,
    index: int,
    session: str | None,
    ready: float,
    finished: Callable[[], None] | None = None,
) -> None:
    if index == 0 and session is None:
        engine.job_started(job.job_id)
    step = job.iterations[index]
    # Without a session (low-level) every circuit is its own task.
    sizes = [step.circuits] if session is not None else [1] * step.circuits

    def done() -> None:
        if index + 1 == len(job.iterations):
            if finished is not None:
                finished()
            else:
                engine.job_finished(job.job_id)
            return
        engine.after(
            step.think, lambda: _iterate(engine, job, index + 1, session, engine.now, finished)
        )

    engine.submit(job.job_id, job.account, sizes, step.shots, session, ready, done, iteration=index)


def _split_block(engine: ModeEngine, job: HybridJob, index: int, ready: float) -> None:
    step = job.iterations[index]

    def granted() -> None:
        session = engine.open_session(job.job_id, job.account, SessionMode.EXCLUSIVE)
        if index == 0:
            engine.job_started(job.job_id)

        def done() -> None:
            engine.close_session(session)
            engine.release_grant(job.job_id)
            if index + 1 == len(job.iterations):
                engine.job_finished(job.job_id)
                return
            engine.after(step.think, lambda: _split_block(engine, job, index + 1, engine.now))

        engine.submit(
            job.job_id, job.account, [step.circuits], step.shots, session, ready, done,
            iteration=index, requested_at=ready,
        )  # fmt: skip

    engine.request_grant(job.job_id, job.account, ready, granted)


def start_batch(engine: ModeEngine, job: BatchJob, mode: Mode) -> None:
    """Submit one batch job at its arrival (``engine.now``)."""
    ready = engine.now
    if mode is Mode.FIFO_CIRCUIT or mode in MULTIPLEXED:
        sizes = [1] * job.circuits if mode is Mode.FIFO_CIRCUIT else job.task_sizes()
        engine.job_started(job.job_id)
        engine.submit(
            job.job_id, job.account, sizes, job.shots, None, ready,
            lambda: engine.job_finished(job.job_id),
        )  # fmt: skip
        return

    def granted() -> None:
        session = engine.open_session(job.job_id, job.account, SessionMode.EXCLUSIVE)
        engine.job_started(job.job_id)

        def done() -> None:
            engine.close_session(session)
            engine.release_grant(job.job_id)
            engine.job_finished(job.job_id)

        engine.submit(job.job_id, job.account, job.task_sizes(), job.shots, session, ready, done)

    engine.request_grant(job.job_id, job.account, ready, granted)
