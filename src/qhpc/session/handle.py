"""What a hybrid program holds: a QPU handle with ``run`` and ``estimate``.

A hybrid program is an ordinary function of a QPU handle, called as often as the
program likes (e.g. inside ``scipy.optimize.minimize``)::

    def main(qpu):
        counts = qpu.run(circuit, shots=1000)                  # dict of counts
        energy = qpu.estimate(ansatz, hamiltonian, theta)      # float

The handle sends each call as a task of its session, so session priority
applies. The same program file runs client-driven (anywhere: a laptop, a Slurm
job — ``QHPC_FASTPATH`` and ``QHPC_SESSION`` come from the environment, e.g.
qhpc's TaskProlog; calls go over the broker's ZeroMQ fast path) or co-located in
the broker's runtime pool (:func:`make_qpu` is the pool's factory; calls go over
the direct Unix-socket channel of :mod:`qhpc.session.direct`). Quantum Inspire
programs (``execute(qi)`` + ``finalize(results)``) get the same handle as
``qi``: ``qi.execute_circuit(cqasm, number_of_shots)`` runs unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from qiskit.circuit import QuantumCircuit

from qhpc.envvars import (
    FASTPATH_ENV,
    QRMI_RESOURCES_ENV,
    RESOURCE_ENV,
    SESSION_ENV,
    session_env_for,
)
from qhpc.resources import (
    EstimatorResult,
    EstimatorTask,
    SamplerResult,
    SamplerTask,
    load_circuit,
)
from qhpc.resources.payload import ObservableLike
from qhpc.session.direct import DirectClient, is_direct
from qhpc.session.errors import QpuNotConfiguredError
from qhpc.session.fastpath import FastPathClient

#: the two ends a session's tasks can leave by; both have ``run(payload)``, ``session_id``,
#: ``resource`` and ``close()``
SessionChannel: TypeAlias = FastPathClient | DirectClient


class SessionLease(Protocol):
    """What :func:`make_qpu` reads of a co-located program's context
    (``qhpc.runtime.ProgramContext``): a protocol, so this room needs nothing of the
    runtime pool that sends it."""

    @property
    def endpoint(self) -> str | None: ...

    @property
    def session_token(self) -> str | None: ...


@dataclass
class QpuTimings:
    """Where a program's quantum calls spent their time (seconds)."""

    calls: int = 0
    round_trip_s: float = 0.0
    qpu_s: float = 0.0
    per_call_s: list[float] = field(default_factory=list)

    @property
    def dispatch_overhead_s(self) -> float:
        """Round trips minus the device's own time: what the dispatch path costs."""
        return max(self.round_trip_s - self.qpu_s, 0.0)


class QPU:
    """A session's QPU as a hybrid program sees it."""

    def __init__(self, client: SessionChannel, default_shots: int = 1024) -> None:
        self._client = client
        self.resource = client.resource
        self.session_id = client.session_id
        self.default_shots = default_shots
        self.timings = QpuTimings()
        self.results: list[dict[str, Any]] = []

    @classmethod
    def from_env(cls, timeout: float = 600.0, resource: str | None = None) -> QPU:
        """The session a Slurm job (or a shell) was given through the environment; with
        ``resource``, the session on that one of a job's several QPUs (``--qpu=a,b``)."""
        return cls(channel_from_env(timeout, resource))

    def run(
        self, circuits: QuantumCircuit | Sequence[QuantumCircuit], shots: int | None = None
    ) -> dict[str, int] | list[dict[str, int]]:
        """Counts of one circuit (a dict) or of several (a list of dicts, one task)."""
        single = isinstance(circuits, QuantumCircuit)
        batch = (circuits,) if single else tuple(circuits)
        result = self._call(SamplerTask(batch, shots=shots or self.default_shots))
        assert isinstance(result, SamplerResult)
        counts = [c.counts for c in result.circuits]
        return counts[0] if single else counts

    def estimate(
        self,
        circuit: QuantumCircuit,
        observables: ObservableLike | Sequence[ObservableLike],
        parameters: Sequence[float] | None = None,
        shots: int | None = None,
    ) -> Any:
        """Expectation value(s): a float for one observable, else a list."""
        task = EstimatorTask.create(circuit, observables, parameters, shots=shots)
        result = self._call(task)
        assert isinstance(result, EstimatorResult)
        values = list(result.values[0])
        return values[0] if len(values) == 1 else values

    def execute_circuit(self, circuit: str | QuantumCircuit, number_of_shots: int) -> Any:
        """Quantum Inspire's call, for ``execute(qi)`` programs run unchanged: counts of a
        cQASM (or any accepted) circuit, also kept in :attr:`results` for ``finalize``."""
        parsed = circuit if isinstance(circuit, QuantumCircuit) else load_circuit(circuit)
        counts = self.run(parsed, shots=number_of_shots)
        self.results.append({"counts": counts, "shots": number_of_shots})
        return counts

    def close(self) -> None:
        self._client.close()

    def _call(self, payload: SamplerTask | EstimatorTask) -> SamplerResult | EstimatorResult:
        started = time.perf_counter()
        result = self._client.run(payload)
        took = time.perf_counter() - started
        self.timings.calls += 1
        self.timings.round_trip_s += took
        self.timings.per_call_s.append(took)
        self.timings.qpu_s += float(result.metadata.get("qpu_seconds", 0.0) or 0.0)
        return result


def open_channel(endpoint: str, token: str, timeout: float = 600.0) -> SessionChannel:
    """A session's channel for ``endpoint``: ``unix://PATH`` is the broker's direct dispatch
    socket (co-located programs), ``direct://HOST:PORT`` the same protocol over TCP,
    ``tcp://`` or ``ipc://`` its ZeroMQ fast path."""
    if is_direct(endpoint):
        return DirectClient(endpoint, token, timeout=timeout)
    return FastPathClient(endpoint, token, timeout=timeout)


def channel_from_env(timeout: float = 600.0, resource: str | None = None) -> SessionChannel:
    """The channel of the session a Slurm job (or a shell) was given through the environment
    (``QHPC_FASTPATH``, ``QHPC_SESSION``); with ``resource``, of that one of its QPUs."""
    endpoint = os.environ.get(FASTPATH_ENV)
    token = os.environ.get(SESSION_ENV)
    if resource is not None and resource != os.environ.get(RESOURCE_ENV):
        token = os.environ.get(session_env_for(resource))
        if endpoint and not token:
            held = os.environ.get(QRMI_RESOURCES_ENV) or os.environ.get(RESOURCE_ENV)
            raise QpuNotConfiguredError(
                f"no session on QPU {resource!r} here: this job holds {held or 'none'} "
                f"({session_env_for(resource)} is unset)"
            )
    if not endpoint or not token:
        raise QpuNotConfiguredError(
            f"no QPU session: set {FASTPATH_ENV} (the broker's fast-path endpoint) and "
            f"{SESSION_ENV} (a session token), e.g. from qhpc's Slurm TaskProlog"
        )
    return open_channel(endpoint, token, timeout=timeout)


def make_qpu(context: SessionLease) -> QPU:
    """The runtime pool's factory: a co-located program's QPU from its context."""
    if not context.endpoint or not context.session_token:
        raise QpuNotConfiguredError("this program was started without a QPU session")
    return QPU(open_channel(context.endpoint, context.session_token))
