"""``ReadoutMitigation``: undo measurement errors of small registers with calibration data."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from qiskit.circuit import QuantumCircuit

from qhpc.program.errors import JobError
from qhpc.program.job import Batch, Job
from qhpc.program.registry import register_plugin
from qhpc.program.result import BatchResult, Result
from qhpc.program.stack import Plugin
from qhpc.resources.target import DeviceTarget

_Key = tuple[int, int, tuple[tuple[int, int], ...]]  # qubits, clbits, (qubit, clbit) pairs
METHODS = ("full", "tensored")


@dataclass(frozen=True)
class _Calibration:
    method: str
    matrices: tuple[NDArray[np.float64], ...]  # one 2^n×2^n (full) or n 2×2 (tensored)
    made_at: float


class ReadoutMitigation(Plugin):
    """Correct the counts of sampling jobs for readout errors.

    ``method="full"`` prepares every basis state of the measured qubits
    (2^n calibration circuits, n ≤ ``max_qubits``, default 5) and captures
    correlated errors; ``"tensored"`` prepares all-zeros and all-ones only
    (2 circuits) and assumes independent per-qubit errors (n ≤ 16). The
    calibration circuits join the first batch that needs them (one round trip)
    and are reused for ``max_age`` seconds (None: for the plugin's lifetime).
    Observed distributions are inverted by least squares, negative
    quasi-probabilities clipped and the rest renormalised; corrected counts are
    rounded to the job's shots, raw counts kept in ``meta["raw_counts"]``.

    Place it right above the QPU (``... | Transpile() | ReadoutMitigation() | qpu``)
    so calibration measures the same physical qubits as the jobs. Expectation
    jobs pass through; put ``ObservableMeasurement`` above it to mitigate them.
    """

    def __init__(
        self,
        max_qubits: int = 5,
        shots: int = 8192,
        method: str = "full",
        max_age: float | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        self.method = method
        self.max_qubits = min(max_qubits, 16) if method == "tensored" else max_qubits
        self.shots = shots
        self.max_age = max_age
        self._calibrations: dict[_Key, _Calibration] = {}
        self._lock = threading.Lock()

    def params(self) -> dict[str, Any]:
        return {
            "max_qubits": self.max_qubits, "shots": self.shots,
            "method": self.method, "max_age": self.max_age,
        }  # fmt: skip

    def calibration(self, key: _Key) -> _Calibration | None:
        with self._lock:
            found = self._calibrations.get(key)
        if found is None or (
            self.max_age is not None and time.time() - found.made_at > self.max_age
        ):
            return None
        return found

    def compile(self, batch: Batch, specs: DeviceTarget) -> Batch:
        keys: list[_Key | None] = []
        needed: dict[_Key, int] = {}  # key → index of its first calibration job
        calibrations: list[Job] = []
        for job in batch:
            key = _key(job, self.max_qubits, self.method) if job.observable is None else None
            keys.append(key)
            if key is None or key in needed or self.calibration(key) is not None:
                continue
            needed[key] = len(batch) + len(calibrations)
            calibrations.extend(self._calibration_jobs(key))
        state = (keys, needed)
        return self.remember(Batch([*batch.jobs, *calibrations], batch.meta), state)

    def _calibration_jobs(self, key: _Key) -> list[Job]:
        width, clbits, pairs = key
        states = range(2 ** len(pairs)) if self.method == "full" else (0, 2 ** len(pairs) - 1)
        jobs = []
        for state in states:
            circuit = QuantumCircuit(width, clbits, name=f"readout-cal-{state}")
            for k, (qubit, _) in enumerate(pairs):
                if state >> k & 1:
                    circuit.x(qubit)
            for qubit, clbit in pairs:
                circuit.measure(qubit, clbit)
            jobs.append(Job(circuit, shots=self.shots, name=circuit.name))
        return jobs

    def post_process(self, result: BatchResult) -> BatchResult:
        keys, needed = self.recall(result)
        for key, first in needed.items():
            pairs = key[2]
            count = 2 ** len(pairs) if self.method == "full" else 2
            observed = [
                _distribution(r.counts or {}, pairs) for r in result.results[first : first + count]
            ]
            calibration = _Calibration(self.method, _matrices(observed, self.method), time.time())
            with self._lock:
                self._calibrations[key] = calibration
        out: list[Result] = []
        for key, answer in zip(keys, result.results, strict=False):
            found = None if key is None else self.calibration(key)
            if key is None or found is None or not answer.counts:
                out.append(answer)
                continue
            out.append(_mitigated(answer, key, found))
        return BatchResult(tuple(out), result.meta)


def _key(job: Job, limit: int, method: str) -> _Key:
    pairs: dict[int, int] = {}
    for instruction in job.circuit.data:
        if instruction.operation.name != "measure":
            continue
        qubit = job.circuit.find_bit(instruction.qubits[0]).index
        clbit = job.circuit.find_bit(instruction.clbits[0]).index
        if clbit in pairs:
            raise JobError(
                f"{job.label}: clbit {clbit} is measured twice; ReadoutMitigation handles "
                "one final measurement per bit"
            )
        pairs[clbit] = qubit
    if len(pairs) > limit:
        raise JobError(
            f"{job.label} measures {len(pairs)} bits; ReadoutMitigation(method={method!r}) "
            f"handles at most {limit}"
            + (" (method='tensored' handles up to 16)" if method == "full" else "")
        )
    ordered = tuple(sorted((q, c) for c, q in pairs.items()))
    return job.circuit.num_qubits, job.circuit.num_clbits, ordered


def _distribution(counts: dict[str, int], pairs: tuple[tuple[int, int], ...]) -> NDArray[Any]:
    """Probabilities over the measured bits (bit k of the index = pair k's clbit)."""
    vector = np.zeros(2 ** len(pairs))
    for bits, count in counts.items():
        outcome = int(bits, 2)
        index = sum(((outcome >> clbit) & 1) << k for k, (_, clbit) in enumerate(pairs))
        vector[index] += count
    total = vector.sum()
    return vector / total if total else vector


def _matrices(observed: list[NDArray[Any]], method: str) -> tuple[NDArray[np.float64], ...]:
    if method == "full":  # column j: what preparing basis state j reads as
        return (np.column_stack(observed),)
    zeros, ones = observed
    n = int(np.log2(len(zeros)))
    out = []
    for k in range(n):
        bit = (np.arange(len(zeros)) >> k) & 1
        p10 = float(zeros[bit == 1].sum())  # read 1 when prepared 0
        p01 = float(ones[bit == 0].sum())  # read 0 when prepared 1
        out.append(np.array([[1 - p10, p01], [p10, 1 - p01]]))
    return tuple(out)


def _invert(observed: NDArray[Any], calibration: _Calibration) -> NDArray[Any]:
    if calibration.method == "full":
        estimate = np.linalg.lstsq(calibration.matrices[0], observed, rcond=None)[0]
    else:
        n = len(calibration.matrices)
        tensor = observed.reshape((2,) * n)  # axis 0 is the highest bit
        for k, matrix in enumerate(calibration.matrices):
            axis = n - 1 - k
            tensor = np.moveaxis(
                np.tensordot(np.linalg.pinv(matrix), tensor, ([1], [axis])), 0, axis
            )
        estimate = tensor.reshape(-1)
    estimate = np.clip(estimate, 0.0, None)
    total = estimate.sum()
    return estimate / total if total > 0 else observed


def _mitigated(answer: Result, key: _Key, calibration: _Calibration) -> Result:
    counts = answer.counts or {}
    shots = sum(counts.values())
    pairs, clbits = key[2], key[1]
    probabilities = _invert(_distribution(counts, pairs), calibration)
    # Largest-remainder rounding keeps the total at the job's shots.
    raw = probabilities * shots
    rounded = np.floor(raw).astype(int)
    for index in np.argsort(rounded - raw)[: shots - int(rounded.sum())]:
        rounded[index] += 1
    mitigated: dict[str, int] = {}
    for index, count in enumerate(rounded):
        if count <= 0:
            continue
        outcome = sum(((index >> k) & 1) << clbit for k, (_, clbit) in enumerate(pairs))
        mitigated[format(outcome, f"0{clbits}b")] = int(count)
    meta = {**answer.meta, "readout_mitigated": True, "raw_counts": counts}
    return answer.replace(counts=mitigated, meta=meta)


register_plugin("ReadoutMitigation", ReadoutMitigation)
