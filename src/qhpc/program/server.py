"""Stacks rebuilt on the broker: the request a client sends and the entry point that runs it.

A stack whose plugins are all registered travels as a *stack request*
(JSON-able)::

    {"v": 1,
     "stack":  {"v": 1, "plugins": [{"plugin": "ScipyMinimize", "params": {...}}, ...],
                "qpu": "aer"},
     "target": {...},          # the device target the client saw (DeviceTarget.to_dict)
     "batch":  "<base64>"}     # the batch, qhpc.program.wire (msgpack + QPY)

The broker checks it with :func:`check_request` before storing anything (a bad
request is refused whole, as a 4xx) and runs :func:`run_stack` as a co-located
hybrid program: the stack is rebuilt over a QPU whose every payload is a
session task on the program's own session (the fast-path handle the runtime
gives the program), so the variational loop runs next to the QPU at session
priority. The answer is ``{"v": 1, "batch_result": "<base64>", ...}``, which
:func:`decode_answer` turns into the same :class:`BatchResult` the local stack
returns.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qhpc.program.errors import JobError, PluginSpecError, StackError
from qhpc.program.executor import LocalQPU
from qhpc.program.job import Batch
from qhpc.program.result import BatchResult
from qhpc.program.session import SessionResource, payload_runner
from qhpc.program.specs import check_stack_spec, stack_from_spec, stack_spec
from qhpc.program.stack import Plugin, Stack
from qhpc.program.wire import decode_batch, decode_batch_result, encode_batch, encode_batch_result
from qhpc.resources.target import DeviceTarget

REQUEST_VERSION = 1
#: the name under which a broker offers server-side stacks, and its function
ENTRY_NAME = "qhpc.stack"
ENTRY_POINT = "qhpc.program.server:run_stack"


@dataclass(frozen=True)
class StackRequest:
    """A checked stack request: plugins rebuilt, target and batch decoded."""

    plugins: tuple[Plugin, ...]
    spec: dict[str, Any]
    target: DeviceTarget
    batch: Batch

    @property
    def resource(self) -> str:
        return str(self.spec["qpu"])

    @property
    def name(self) -> str:
        return " | ".join([p.name for p in self.plugins] + [self.resource])


def make_request(stack: Stack, batch: Batch, target: DeviceTarget | None = None) -> dict[str, Any]:
    """The request that runs ``batch`` through ``stack`` on a broker.

    Raises :class:`PluginSpecError` (naming the plugin) for a plugin the broker
    could not rebuild, :class:`StackError` for a stack without a QPU: nothing
    is sent in either case.
    """
    spec = stack_spec(stack)
    assert stack.qpu is not None  # stack_spec checked it
    specs = target if target is not None else stack.qpu.specs()
    return {
        "v": REQUEST_VERSION,
        "stack": spec,
        "target": specs.to_dict(),
        "batch": base64.b64encode(encode_batch(batch)).decode("ascii"),
    }


def check_request(request: object, screen: Callable[[bytes], None] | None = None) -> StackRequest:
    """A stack request, validated: unknown plugins, bad params, a stack without a QPU,
    a malformed batch or target are errors naming the culprit (a 4xx at the broker)."""
    if not isinstance(request, Mapping):
        raise StackError(f"a stack request must be a map, not {type(request).__name__}")
    if request.get("v") != REQUEST_VERSION:
        raise StackError(
            f"stack request version {request.get('v')!r} is not supported (this qhpc speaks "
            f"version {REQUEST_VERSION})"
        )
    spec = request.get("stack")
    plugins = check_stack_spec(spec)
    assert isinstance(spec, Mapping)
    target_data = request.get("target")
    if not isinstance(target_data, Mapping):
        raise StackError("a stack request needs the device 'target' the stack compiles for")
    try:
        target = DeviceTarget.from_dict(dict(target_data))
    except (TypeError, ValueError) as exc:
        raise StackError(f"a stack request's target is malformed: {exc}") from exc
    encoded = request.get("batch")
    if not isinstance(encoded, str):
        raise JobError("a stack request needs the 'batch' to run (base64 text)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JobError(f"a stack request's batch is not base64: {exc}") from exc
    batch = decode_batch(raw, screen)
    return StackRequest(tuple(plugins), dict(spec), target, batch)


def check_spec(request: Mapping[str, Any], screen: Callable[[bytes], None] | None = None) -> None:
    """The broker's check before it stores a stack job: ValueError naming the culprit.
    ``screen`` sees the batch's QPY before it is decoded here (a decoding worker's
    budget; its LimitExceeded / PayloadError pass through)."""
    from qhpc.program.errors import ProgramError

    try:
        check_request(request, screen)
    except ProgramError as exc:
        raise ValueError(str(exc)) from None


def run_request(request: StackRequest | Mapping[str, Any], qpu: object) -> BatchResult:
    """Run a stack request against ``qpu``: a payload runner's handle (fast-path client,
    a hybrid program's QPU handle) or an executor (a local resource, in tests)."""
    checked = request if isinstance(request, StackRequest) else check_request(request)
    bottom: Any
    if hasattr(qpu, "specs") and hasattr(qpu, "run_batch"):
        bottom = qpu
    elif hasattr(qpu, "target") and hasattr(qpu, "run") and not _is_handle(qpu):
        bottom = LocalQPU(qpu, name=checked.resource)
    else:
        resource = SessionResource(payload_runner(qpu), checked.target, checked.resource)
        bottom = LocalQPU(resource, name=checked.resource)
    stack = stack_from_spec(checked.spec, bottom)
    return stack.run_batch(checked.batch)


def run_stack(qpu: object, request: Mapping[str, Any]) -> dict[str, Any]:
    """The broker's entry point: rebuild the requested stack over ``qpu`` and run it.

    Returns the JSON-able answer (see :func:`decode_answer`).
    """
    started = time.perf_counter()
    result = run_request(request, qpu)
    return {
        "v": REQUEST_VERSION,
        "batch_result": base64.b64encode(encode_batch_result(result)).decode("ascii"),
        "seconds": time.perf_counter() - started,
    }


def decode_answer(answer: object) -> BatchResult:
    """The :class:`BatchResult` of a :func:`run_stack` answer."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("batch_result"), str):
        raise JobError(f"the broker's stack answer is malformed: {str(answer)[:200]}")
    try:
        raw = base64.b64decode(answer["batch_result"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JobError(f"the broker's stack answer is not base64: {exc}") from exc
    return decode_batch_result(raw)


def _is_handle(qpu: object) -> bool:
    """The runtime's QPU handle has ``run(circuits, shots)``, not ``run(payload)``."""
    return hasattr(qpu, "estimate") and hasattr(qpu, "execute_circuit")


__all__ = [
    "ENTRY_NAME",
    "ENTRY_POINT",
    "PluginSpecError",
    "StackRequest",
    "check_request",
    "check_spec",
    "decode_answer",
    "make_request",
    "run_request",
    "run_stack",
]
