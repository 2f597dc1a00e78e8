"""The user's end of a session: its channels to the broker and the QPU handle a program calls.

Public surface; other rooms import only these names (the servers above import the
two protocol modules, :mod:`qhpc.session.fastpath` and :mod:`qhpc.session.direct`,
whose frame names clash)::

    from qhpc.session import QPU

    qpu = QPU.from_env()                       # QHPC_FASTPATH + QHPC_SESSION, e.g. a Slurm job
    counts = qpu.run(circuit, shots=1000)      # one session task, at session priority
    print(qpu.timings.dispatch_overhead_s)

A session's tasks leave by one of two channels, chosen by the endpoint's scheme
(:func:`open_channel`): the broker's ZeroMQ fast path (``tcp://``, ``ipc://``;
:class:`FastPathClient`) or, for a program co-located with the broker, its direct
Unix-socket channel (``unix://``; :class:`DirectClient`). Both run one payload per
call and raise :class:`FastPathError` with the broker's status.

:class:`QiEndpoint` (:mod:`qhpc.session.quantuminspire`) puts a session behind Quantum
Inspire's compute-runtime protocol, so a QI-style hybrid runtime drives it.

This room stands below the programming model (``qhpc.program``), the runtime pool
and the servers (``qhpc.api``, ``qhpc.broker``), and imports only
``qhpc.resources`` and the bottom modules: a hybrid program reaches its session
without loading the broker, FastAPI or the pool.

The errors load at once; the channels and the handle on first use, so that the
runtime pool, which re-exports :class:`QpuNotConfiguredError`, does not load Qiskit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qhpc.session.errors import FastPathError, QpuNotConfiguredError

if TYPE_CHECKING:
    from qhpc.session.direct import DirectClient
    from qhpc.session.fastpath import FastPathClient
    from qhpc.session.handle import (
        QPU,
        QpuTimings,
        SessionChannel,
        SessionLease,
        channel_from_env,
        make_qpu,
        open_channel,
    )
    from qhpc.session.quantuminspire import DeviceStatus, DeviceView, EndpointConfig, QiEndpoint

__all__ = [
    "QPU",
    "DeviceStatus",
    "DeviceView",
    "DirectClient",
    "EndpointConfig",
    "FastPathClient",
    "FastPathError",
    "QiEndpoint",
    "QpuNotConfiguredError",
    "QpuTimings",
    "SessionChannel",
    "SessionLease",
    "channel_from_env",
    "make_qpu",
    "open_channel",
]

_LAZY = {
    "DirectClient": "qhpc.session.direct",
    "FastPathClient": "qhpc.session.fastpath",
    "QPU": "qhpc.session.handle",
    "QpuTimings": "qhpc.session.handle",
    "SessionChannel": "qhpc.session.handle",
    "SessionLease": "qhpc.session.handle",
    "channel_from_env": "qhpc.session.handle",
    "make_qpu": "qhpc.session.handle",
    "DeviceStatus": "qhpc.session.quantuminspire",
    "DeviceView": "qhpc.session.quantuminspire",
    "EndpointConfig": "qhpc.session.quantuminspire",
    "QiEndpoint": "qhpc.session.quantuminspire",
    "open_channel": "qhpc.session.handle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qhpc.session' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
