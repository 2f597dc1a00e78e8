"""The hybrid runtime: warm program processes, isolation, stop conditions, timings.

Public surface; other rooms import only these names::

    from qhpc.runtime import Limits, ProgramContext, RuntimePool

    with RuntimePool(size=2) as pool:             # template imports numpy/scipy/qiskit/aer
        outcome = pool.run("vqe.py", args={"layers": 2}, timeout=600)
        print(outcome.status, outcome.return_value, outcome.timings)

        handle = pool.start_program(source, max_iterations=100)
        handle.progress                           # Progress(iteration=17, value=-1.137, …)
        handle.cancel()

Inside a program, :func:`current_program` gives its context, QPU handle and
``report(iteration, value, **fields)``.
"""

from __future__ import annotations

from qhpc.runtime.api import (
    CpuLimitExceeded,
    IterationLimitReached,
    ProgramRuntime,
    ProgramStopped,
    current_program,
)
from qhpc.runtime.errors import (
    NoSpareError,
    PoolClosedError,
    ProgramArgumentsError,
    QpuNotConfiguredError,
    RuntimeBaseError,
    TemplateStartError,
    WaitTimeout,
    WireError,
)
from qhpc.runtime.handle import OutputCallback, ProgramHandle
from qhpc.runtime.hooks import QpuFactory, UnconfiguredQpu
from qhpc.runtime.isolation import Limits, RunAs
from qhpc.runtime.outcome import ProgramContext, ProgramOutcome, ProgramStatus, Progress
from qhpc.runtime.pool import DEFAULT_PRELOAD, PoolStats, RuntimePool

__all__ = [
    "DEFAULT_PRELOAD",
    "CpuLimitExceeded",
    "IterationLimitReached",
    "Limits",
    "NoSpareError",
    "OutputCallback",
    "PoolClosedError",
    "PoolStats",
    "ProgramArgumentsError",
    "ProgramContext",
    "ProgramHandle",
    "ProgramOutcome",
    "ProgramRuntime",
    "ProgramStatus",
    "ProgramStopped",
    "Progress",
    "QpuFactory",
    "QpuNotConfiguredError",
    "RunAs",
    "RuntimeBaseError",
    "RuntimePool",
    "TemplateStartError",
    "UnconfiguredQpu",
    "WaitTimeout",
    "WireError",
    "current_program",
]
