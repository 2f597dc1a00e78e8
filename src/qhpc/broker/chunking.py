"""Shot chunks: a long batch task runs as a sequence of short ones, one task to its owner.

A task is the unit the scheduler orders and it is not preemptible, so a session
task that arrives while a long batch task runs would wait for all of it. A
batch task with many shots therefore runs as *chunks* — the same circuits with
a share of the shots each, every chunk's estimated device time at most
``chunk_seconds`` — and between two chunks the executor asks the policy whether
a waiting session task goes first (cooperative pre-emption). The task stays one
task: one id, one record, one result, one usage entry.

- :func:`shot_chunks` decides how many chunks (pure arithmetic on an affine time
  model: ``fixed + per_shot * shots``, the emulator's and the study's model);
- :func:`plan_chunks` turns a payload into chunk payloads (derived seeds);
- :func:`merge_results` makes the task's result from the chunks' results;
- :func:`run_chunked` runs the chunks, calling back between them.

Not chunked: exact-mode estimator tasks (``shots=None``), tasks of one shot,
tasks whose resource cannot tell their duration, and resources that cannot
chunk (``chunkable = False``; by default those whose tasks outlive the broker —
remote vendor devices, where a chunk would cost a queue round trip).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from threading import Event

from qhpc.broker.runner import Outcome, past_deadline, run_task, watch_deadline
from qhpc.resources import (
    EstimatorResult,
    Payload,
    QuantumResource,
    SampledCircuit,
    SamplerResult,
    TaskResult,
    TaskStatus,
)

#: estimated device seconds of one chunk (the study's choice, docs/benchmarks.md)
DEFAULT_CHUNK_SECONDS = 0.1
#: a task is never cut into more chunks than this (each chunk pays the task overhead)
MAX_CHUNKS = 64
#: seeds of chunks after the first step by this odd number modulo 2**31, so the
#: seeds of one task's chunks are all distinct
_SEED_STRIDE = 0x1E3779B1
_SEED_MODULUS = 1 << 31


def shot_chunks(
    shots: int,
    fixed: float,
    per_shot: float,
    chunk_seconds: float | None,
    max_chunks: int = MAX_CHUNKS,
) -> list[int]:
    """Shots per chunk, in order, so that ``fixed + per_shot * chunk`` <= ``chunk_seconds``.

    One chunk (``[shots]``) when the task fits already, when chunking is off
    (``chunk_seconds`` None or not positive), or when the fixed cost alone exceeds
    ``chunk_seconds`` (more chunks could not meet the bound and would only add
    overhead). At most ``max_chunks`` and at most ``shots`` chunks; sizes differ by
    at most one shot, larger ones first.
    """
    if chunk_seconds is None or not chunk_seconds > 0 or shots <= 1:
        return [shots]
    if not per_shot > 0 or fixed + per_shot * shots <= chunk_seconds:
        return [shots]
    room = chunk_seconds - fixed
    if room < per_shot:
        return [shots]
    per_chunk = max(1, math.floor(room / per_shot))
    count = min(max(1, max_chunks), shots, math.ceil(shots / per_chunk))
    base, extra = divmod(shots, count)
    return [base + 1] * extra + [base] * (count - extra)


def chunk_seed(seed: int | None, index: int) -> int | None:
    """The seed of chunk ``index``: the task's own for chunk 0, derived for the others
    (deterministic, distinct within a task); an unseeded task stays unseeded."""
    if seed is None or index == 0:
        return seed
    return (seed + index * _SEED_STRIDE) % _SEED_MODULUS


def payload_shots(payload: Payload) -> int | None:
    """The shots a chunk plan splits (None: exact mode, not chunkable)."""
    return payload.shots


def with_shots(payload: Payload, shots: int, index: int) -> Payload:
    """Chunk ``index`` of ``payload``: the same circuits with ``shots`` and a derived seed."""
    return replace(payload, shots=shots, seed=chunk_seed(payload.seed, index))


def can_chunk(resource: QuantumResource) -> bool:
    """Whether ``resource`` runs chunks cheaply (its ``chunkable`` attribute if it has
    one; otherwise: not a device whose tasks outlive the broker)."""
    chunkable = getattr(resource, "chunkable", None)
    if isinstance(chunkable, bool):
        return chunkable
    return not resource.remembers_tasks


def plan_chunks(
    payload: Payload,
    estimate: Callable[[Payload], float | None],
    chunk_seconds: float | None,
    max_chunks: int = MAX_CHUNKS,
) -> list[Payload]:
    """``payload`` as chunk payloads (a one-element list: run it whole).

    ``estimate`` is the resource's ``estimate_seconds``; device time is taken as
    affine in the shots, from the estimates of the full task and of one shot.
    """
    shots = payload_shots(payload)
    if shots is None or shots <= 1 or chunk_seconds is None or not chunk_seconds > 0:
        return [payload]
    full = estimate(payload)
    if full is None or full <= chunk_seconds:
        return [payload]
    one = estimate(with_shots(payload, 1, 0))
    if one is None:
        return [payload]
    per_shot = (full - one) / (shots - 1)
    sizes = shot_chunks(shots, one - per_shot, per_shot, chunk_seconds, max_chunks)
    if len(sizes) == 1:
        return [payload]
    return [with_shots(payload, size, index) for index, size in enumerate(sizes)]


def merge_results(chunks: Sequence[Payload], results: Sequence[TaskResult]) -> TaskResult:
    """The task's result from its chunks' results (same order as ``chunks``).

    Sampler: per circuit, counts and shots summed, memory concatenated in chunk
    order. Estimator: each value the shot-weighted mean of the chunks' values, its
    standard error ``sqrt(sum((n_i / N)**2 * se_i**2))`` (independent chunks). The
    metadata is the first chunk's, with ``chunks`` and the summed ``qpu_seconds``.
    """
    if not results or len(results) != len(chunks):
        raise ValueError(f"{len(results)} results for {len(chunks)} chunks")
    metadata = dict(results[0].metadata)
    metadata["chunks"] = len(results)
    if all("qpu_seconds" in r.metadata for r in results):
        metadata["qpu_seconds"] = math.fsum(float(r.metadata["qpu_seconds"]) for r in results)
    first = results[0]
    if isinstance(first, SamplerResult):
        samplers = [r for r in results if isinstance(r, SamplerResult)]
        if len(samplers) != len(results):
            raise ValueError("chunks of one task returned different result kinds")
        merged: list[SampledCircuit] = []
        for index, head in enumerate(first.circuits):
            parts = [r.circuits[index] for r in samplers]
            counts: dict[str, int] = {}
            for part in parts:
                for key, value in part.counts.items():
                    counts[key] = counts.get(key, 0) + value
            memory = None
            if all(p.memory is not None for p in parts):
                memory = tuple(m for p in parts for m in (p.memory or ()))
            merged.append(
                SampledCircuit(
                    counts=counts,
                    shots=sum(p.shots for p in parts),
                    num_bits=head.num_bits,
                    memory=memory,
                )
            )
        return SamplerResult(circuits=tuple(merged), metadata=metadata)
    estimators = [r for r in results if isinstance(r, EstimatorResult)]
    if len(estimators) != len(results):
        raise ValueError("chunks of one task returned different result kinds")
    weights = [float(payload_shots(c) or 0) for c in chunks]
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError("estimator chunks without shots cannot be merged")
    share = [w / total for w in weights]
    values = tuple(
        tuple(
            math.fsum(s * r.values[p][o] for s, r in zip(share, estimators, strict=True))
            for o in range(len(row))
        )
        for p, row in enumerate(estimators[0].values)
    )
    errors = tuple(
        tuple(
            math.sqrt(
                math.fsum(
                    (s * r.std_errors[p][o]) ** 2 for s, r in zip(share, estimators, strict=True)
                )
            )
            for o in range(len(row))
        )
        for p, row in enumerate(estimators[0].std_errors)
    )
    shots = None
    if all(r.shots is not None for r in estimators):
        shots = sum(r.shots or 0 for r in estimators)
    return EstimatorResult(values=values, std_errors=errors, shots=shots, metadata=metadata)


def run_chunked(
    resource: QuantumResource,
    chunks: Sequence[Payload],
    stop_requested: Event,
    between: Callable[[int, float], None],
    clock: Callable[[], float] = time.time,
    on_started: Callable[[str], None] | None = None,
    max_seconds: float | None = None,
) -> Outcome:
    """Run ``chunks`` one after another as one task; never raises for task failures.
    ``max_seconds`` bounds the whole task, all chunks together (see :func:`run_task`).

    Before chunk ``i`` > 0 it calls ``between(i, estimated seconds of chunk i)``,
    where the executor runs waiting session tasks the policy puts first. A stop
    request ends the task at the next boundary (or stops the running chunk):
    ``cancelled``, with the device time of the chunks run so far. A failed chunk
    fails the task. Completed: the merged result (:func:`merge_results`). The
    shots reported are those of the chunks that completed, also when the task did
    not (they ran, and accounting shows them).
    """
    if max_seconds is None:
        return _run_chunks(resource, chunks, stop_requested, between, clock, on_started)
    deadline = watch_deadline(max_seconds, stop_requested)
    try:
        outcome = _run_chunks(resource, chunks, stop_requested, between, clock, on_started)
    finally:
        deadline.done = True
    return past_deadline(outcome, deadline, max_seconds)


def _run_chunks(
    resource: QuantumResource,
    chunks: Sequence[Payload],
    stop_requested: Event,
    between: Callable[[int, float], None],
    clock: Callable[[], float],
    on_started: Callable[[str], None] | None,
) -> Outcome:
    started = clock()
    results: list[TaskResult] = []
    qpu = 0.0
    shots = 0
    circuits = 0
    count = len(chunks)
    for index, chunk in enumerate(chunks):
        if index:
            between(index, _estimate_or_zero(resource, chunk))
            if stop_requested.is_set():
                return Outcome(
                    TaskStatus.CANCELLED, None,
                    f"stopped between chunks ({index} of {count} run)", qpu, shots, circuits,
                    started, clock(),
                )  # fmt: skip
        outcome = run_task(resource, chunk, stop_requested, clock, on_started)
        qpu += outcome.qpu_seconds
        circuits = max(circuits, outcome.circuits)
        if outcome.state is not TaskStatus.COMPLETED or outcome.result is None:
            error = outcome.error or str(outcome.state)
            state = outcome.state if outcome.state.is_final else TaskStatus.FAILED
            if state is TaskStatus.COMPLETED:  # completed without a result
                state = TaskStatus.FAILED
            return Outcome(
                state, None, f"chunk {index + 1} of {count}: {error}", qpu, shots, circuits,
                started, clock(),
            )  # fmt: skip
        results.append(outcome.result)
        shots += outcome.shots
    try:
        merged = merge_results(chunks, results)
    except (ValueError, IndexError) as exc:
        return Outcome(
            TaskStatus.FAILED, None, f"merging {count} chunks failed: {exc}", qpu, shots,
            circuits, started, clock(),
        )  # fmt: skip
    return Outcome(TaskStatus.COMPLETED, merged, None, qpu, shots, circuits, started, clock())


def _estimate_or_zero(resource: QuantumResource, payload: Payload) -> float:
    try:
        return resource.estimate_seconds(payload) or 0.0
    except Exception:  # an estimate is advice; a failing one must not fail the task
        return 0.0


__all__ = [
    "DEFAULT_CHUNK_SECONDS",
    "MAX_CHUNKS",
    "can_chunk",
    "chunk_seed",
    "merge_results",
    "plan_chunks",
    "run_chunked",
    "shot_chunks",
    "with_shots",
]
