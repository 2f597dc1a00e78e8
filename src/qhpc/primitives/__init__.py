"""Qiskit primitives (V2) on qhpc QPUs: unmodified Qiskit primitives code runs on qhpc.

:class:`SamplerV2` and :class:`EstimatorV2` implement Qiskit's
``BaseSamplerV2`` / ``BaseEstimatorV2``: they take the same pubs (circuit,
parameter values broadcast by NumPy's rules, shots or precision), return the
same ``PrimitiveResult`` of ``SamplerPubResult`` / ``PubResult`` (``BitArray``
per classical register; ``evs`` and ``stds`` in the pub's shape) with the same
metadata keys as Qiskit's ``StatevectorSampler`` / ``StatevectorEstimator``,
and hand back a Qiskit ``PrimitiveJob`` (``result()``, ``status()``,
``done()``, ``cancel()`` — cancelling succeeds only before the job starts).

The task-runner protocol
------------------------
Both primitives run on anything with two methods (:class:`TaskRunner`)::

    run(payload: SamplerTask | EstimatorTask, timeout: float | None = None)
        -> SamplerResult | EstimatorResult
    target() -> DeviceTarget

``run`` blocks until the task is done and raises a ``ResourceError`` if it
fails; ``target`` gives the width and shot/circuit limits checked before
submission. Every :class:`~qhpc.resources.QuantumResource` (aer, emulator, qx,
qrmi) qualifies as it is; so does any remote handle with these two methods.
Circuits are passed as written: a resource that needs a device's layout and
gate set (the emulator) transpiles them itself.

Example::

    from qhpc.primitives import EstimatorV2, SamplerV2
    from qhpc.resources import AerResource

    qpu = AerResource("aer", seed=7)
    counts = SamplerV2(qpu).run([bell]).result()[0].data.meas.get_counts()
    evs = EstimatorV2(qpu).run([(ansatz, ["ZZ", "XX"], thetas)]).result()[0].data.evs
"""

from __future__ import annotations

import warnings
from typing import Any

from qhpc.primitives.estimator import EstimatorV2, shots_for_precision
from qhpc.primitives.sampler import SamplerV2
from qhpc.primitives.shared import PrimitiveOptions, SeedLike, TaskRunner

__all__ = [
    "EstimatorV2",
    "PrimitiveOptions",
    "SamplerV2",
    "SeedLike",
    "TaskRunner",
    "shots_for_precision",
]


def __getattr__(name: str) -> Any:
    # The protocol was called QPU, which is the hybrid program's handle (qhpc.session.QPU).
    if name != "QPU":
        raise AttributeError(f"module 'qhpc.primitives' has no attribute {name!r}")
    warnings.warn(
        "qhpc.primitives.QPU is now qhpc.primitives.TaskRunner", DeprecationWarning, stacklevel=2
    )
    return TaskRunner
