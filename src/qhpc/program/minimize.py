"""``ScipyMinimize``: variational jobs minimised with ``scipy.optimize.minimize``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qhpc.program.errors import JobError
from qhpc.program.executor import Executor
from qhpc.program.future import check_cancelled
from qhpc.program.job import Batch, Job
from qhpc.program.registry import register_plugin
from qhpc.program.result import BatchResult, Result
from qhpc.program.stack import Plugin


class ScipyMinimize(Plugin):
    """Minimise each open expectation job over its circuit's parameters.

    An *open* job is an expectation job whose parameterised circuit has no
    values. For each, ``scipy.optimize.minimize`` drives
    ``f(θ) = submit(job with parameters θ)`` through the rest of the stack
    (one round trip per evaluation). Every other job passes through in one
    batch. The result's ``value`` is the energy at the optimum, re-evaluated
    once when ``reevaluate`` (a fresh, unbiased estimate when sampling: the
    best of many noisy evaluations is biased low); ``parameters`` the optimum;
    ``meta`` has ``x``, ``fun`` (scipy's best value), ``trace`` ([(θ, value,
    error)…] of every evaluation), ``nfev``, ``nit``, ``success``, ``message``,
    ``method`` and ``seconds``.

    ``x0`` is the starting point: this plugin's ``x0``, else the job's
    ``meta["x0"]``, else uniform in ±``spread`` from ``seed``.

    ``restarts`` runs the method again that many times from the optimum found,
    with ``restart_options`` merged into ``options`` (e.g. ``{"rhobeg": 0.3}``
    for COBYLA): on a sampled, noisy objective an optimiser often stops early,
    and a restart with a smaller first step recovers most of that loss.
    ``nfev`` and ``trace`` cover all runs; ``runs`` lists each run's ``x``/``fun``.
    """

    def __init__(
        self,
        method: str = "COBYLA",
        *,
        tol: float | None = None,
        options: Mapping[str, Any] | None = None,
        x0: Sequence[float] | None = None,
        maxiter: int | None = None,
        bounds: Sequence[tuple[float, float]] | None = None,
        reevaluate: bool = True,
        seed: int | None = 0,
        spread: float = 0.1,
        restarts: int = 0,
        restart_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.tol = tol
        self.options = dict(options or {})
        if maxiter is not None:
            self.options["maxiter"] = int(maxiter)
        self.x0 = None if x0 is None else np.asarray(x0, dtype=float)
        self.bounds = None if bounds is None else list(bounds)
        self.reevaluate = reevaluate
        self.seed = seed
        self.spread = spread
        if restarts < 0:
            raise ValueError(f"restarts must be non-negative, got {restarts}")
        self.restarts = restarts
        self.restart_options = dict(restart_options or {})

    def params(self) -> dict[str, Any]:
        return {
            "method": self.method, "tol": self.tol, "options": self.options,
            "x0": None if self.x0 is None else self.x0.tolist(),
            "bounds": self.bounds, "reevaluate": self.reevaluate, "seed": self.seed,
            "spread": self.spread, "restarts": self.restarts,
            "restart_options": self.restart_options,
        }  # fmt: skip

    def execute(self, batch: Batch, below: Executor) -> BatchResult:
        open_jobs = [i for i, job in enumerate(batch) if _is_open(job)]
        results: list[Result | None] = [None] * len(batch)
        rest = [i for i in range(len(batch)) if i not in set(open_jobs)]
        if rest:
            answered = below.run_batch(Batch((batch[i] for i in rest), batch.meta))
            for i, result in zip(rest, answered, strict=True):
                results[i] = result
        for i in open_jobs:
            results[i] = self.minimize(batch[i], below)
        return BatchResult(tuple(r if r is not None else Result() for r in results), batch.meta)

    def start(self, job: Job) -> np.ndarray[Any, np.dtype[np.float64]]:
        size = job.circuit.num_parameters
        start = self.x0 if self.x0 is not None else job.meta.get("x0")
        if start is None:
            rng = np.random.default_rng(self.seed)
            drawn: np.ndarray[Any, np.dtype[np.float64]] = rng.uniform(
                -self.spread, self.spread, size
            )
            return drawn
        x0 = np.asarray(start, dtype=float).ravel()
        if x0.size != size:
            raise JobError(
                f"{job.label}: x0 has {x0.size} value(s) but the circuit has {size} parameter(s) "
                f"{[p.name for p in job.circuit.parameters]}"
            )
        return x0

    def minimize(self, job: Job, below: Executor) -> Result:
        from scipy.optimize import minimize

        trace: list[tuple[tuple[float, ...], float, float | None]] = []

        def energy(theta: np.ndarray[Any, np.dtype[np.float64]]) -> float:
            check_cancelled()
            result = below.run_batch(Batch([job.bind(theta.tolist())]))[0]
            if result.value is None:
                raise JobError(f"{job.label}: the stack returned no value at θ={list(theta)}")
            trace.append((tuple(float(t) for t in theta), result.value, result.error))
            return result.value

        started = time.perf_counter()
        start = self.start(job)
        runs: list[dict[str, Any]] = []
        options = dict(self.options)
        for run in range(self.restarts + 1):
            if run:
                start = np.asarray(runs[-1]["x"], dtype=float)
                options.update(self.restart_options)
            found = minimize(
                energy,
                start,
                method=self.method,
                tol=self.tol,
                options=options or None,
                bounds=self.bounds,
            )
            runs.append({"x": tuple(map(float, np.atleast_1d(found.x))), "fun": float(found.fun)})
        x = tuple(float(v) for v in np.atleast_1d(found.x))
        value, error = float(found.fun), None
        best = [e for t, v, e in trace if t == x]
        if best:
            error = best[-1]
        if self.reevaluate:
            final = below.run_batch(Batch([job.bind(x)]))[0]
            if final.value is not None:
                value, error = final.value, final.error
        meta = {
            "x": x, "fun": float(found.fun), "trace": trace,
            "nfev": len(trace), "nit": int(getattr(found, "nit", 0)), "runs": runs,
            "success": bool(found.success), "message": str(found.message),
            "method": self.method, "seconds": time.perf_counter() - started,
        }  # fmt: skip
        return Result(value=value, error=error, parameters=x, meta={**job.meta, **meta})


def _is_open(job: Job) -> bool:
    return job.observable is not None and bool(job.free_parameters)


register_plugin("ScipyMinimize", ScipyMinimize)
