"""What users import: jobs, stacks of plugins over QPUs, local or remote.

The model follows Atos/Eviden QLM's: a :class:`Job` is one circuit and how to
read it out (counts, or an observable's expectation value), a :class:`Batch`
is jobs submitted together, and a QPU's ``submit`` returns a :class:`Result`
or :class:`BatchResult`. Plugins compose onto a QPU with ``|``; the stack is a
QPU itself::

    from qhpc.program import Job, LocalQPU, ObservableMeasurement, ScipyMinimize, Transpile
    from qhpc.resources import AerResource

    stack = ScipyMinimize() | ObservableMeasurement() | Transpile() | AerResource("aer")
    result = stack.submit(Job.expectation(ansatz, hamiltonian, shots=20_000))
    print(result.value, result.meta["nfev"])

The bottom of a stack is any qhpc resource (wrapped in :class:`LocalQPU`), a
:class:`RemoteQPU` on a broker or a session's :class:`SessionQPU`; the same stack
code runs on all of them. ``qhpc.connect(url, token)`` is :func:`connect` here: a
:class:`Connection` whose ``qpu(name)`` picks the session's fast path or a
:class:`RemoteQPU`.
``submit_async`` returns a :class:`Future` (``result()``/``join()``,
``status()``, ``cancel()``). See ``docs/programming.md``.
"""

from __future__ import annotations

from qhpc.program.connection import Connection, connect
from qhpc.program.errors import (
    CancelledError,
    JobError,
    PluginError,
    PluginSpecError,
    ProgramError,
    RemoteError,
    StackError,
)
from qhpc.program.executor import Executor, LocalQPU, PayloadPlan, as_qpu
from qhpc.program.future import Future
from qhpc.program.generator import JobGenerator, job_generator
from qhpc.program.job import Batch, Job, ObservableLike, ParameterValues
from qhpc.program.minimize import ScipyMinimize
from qhpc.program.mitigation import ReadoutMitigation
from qhpc.program.observables import ObservableMeasurement
from qhpc.program.registry import plugin_spec, register_plugin, registered_plugins
from qhpc.program.remote import RemoteQPU, qpu, target_from_dict
from qhpc.program.result import BatchResult, Result
from qhpc.program.session import BrokerDevice, SessionQPU, session_qpu
from qhpc.program.specs import plugin_from_spec, stack_from_spec, stack_spec
from qhpc.program.stack import Plugin, Stack
from qhpc.program.transpile import Transpile

__all__ = [
    "Batch",
    "BatchResult",
    "BrokerDevice",
    "CancelledError",
    "Connection",
    "Executor",
    "Future",
    "Job",
    "JobError",
    "JobGenerator",
    "LocalQPU",
    "ObservableLike",
    "ObservableMeasurement",
    "ParameterValues",
    "PayloadPlan",
    "Plugin",
    "PluginError",
    "PluginSpecError",
    "ProgramError",
    "ReadoutMitigation",
    "RemoteError",
    "RemoteQPU",
    "Result",
    "ScipyMinimize",
    "SessionQPU",
    "Stack",
    "StackError",
    "Transpile",
    "as_qpu",
    "connect",
    "job_generator",
    "plugin_from_spec",
    "plugin_spec",
    "qpu",
    "register_plugin",
    "registered_plugins",
    "session_qpu",
    "stack_from_spec",
    "stack_spec",
    "target_from_dict",
]
