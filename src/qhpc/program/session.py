"""A session's QPU over the broker's ZeroMQ fast path, as a stack's bottom.

Inside a Slurm job (or any shell) holding a session, ``QHPC_FASTPATH`` (the
broker's fast-path endpoint) and ``QHPC_SESSION`` (the session token) are set;
:func:`session_qpu` then gives a :class:`SessionQPU` (a :class:`~qhpc.program.LocalQPU`) whose every
payload is one session task: the broker runs it at session priority and
answers without HTTP. The same stack code therefore runs client-driven over a
session exactly as it does over a local resource or a :class:`RemoteQPU`.

The fast path carries tasks only, so the device target (what ``Transpile``
compiles for) comes from the broker's REST API (``QHPC_URL``, read with the
session token) or is given by the caller; :class:`BrokerDevice` reads target and
status that way for the Quantum Inspire endpoint (:class:`qhpc.session.QiEndpoint`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from qhpc.client import Client, ClientError, connect
from qhpc.envvars import FASTPATH_ENV, RESOURCE_ENV, SESSION_ENV, URL_ENV, session_env_for
from qhpc.errors import QhpcError
from qhpc.program.errors import RemoteError
from qhpc.program.executor import LocalQPU
from qhpc.resources.errors import TaskFailedError
from qhpc.resources.payload import Payload, TaskResult
from qhpc.resources.target import DeviceTarget
from qhpc.session import open_channel

if TYPE_CHECKING:
    from qhpc.session import DeviceStatus, SessionChannel

#: ``runner(payload) -> result``: one session task, run to completion
PayloadRunner = Callable[[Payload], TaskResult]


class SessionResource:
    """``run(payload)`` / ``target()`` over a payload runner (a session's fast path).

    Errors of the fast path (a closed session, a failed task) become
    :class:`~qhpc.resources.TaskFailedError`, so the QPU above reports them
    naming the jobs the task carried.
    """

    def __init__(self, runner: PayloadRunner, target: DeviceTarget, name: str) -> None:
        self._runner = runner
        self._target = target
        self.name = name

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        try:
            return self._runner(payload)
        except QhpcError as exc:
            raise TaskFailedError(f"session task on {self.name}: {exc}") from exc

    def target(self) -> DeviceTarget:
        return self._target


class SessionQPU(LocalQPU):
    """A session's resource over the fast path; :meth:`close` ends the connection
    (the session itself stays open: Slurm's epilog or its owner closes it)."""

    def __init__(self, client: SessionChannel, target: DeviceTarget) -> None:
        super().__init__(SessionResource(client.run, target, client.resource), name=client.resource)
        self.client = client
        self.session_id = client.session_id

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> SessionQPU:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def payload_runner(handle: object) -> PayloadRunner:
    """How to run one payload through ``handle``.

    ``handle`` is a session client (the fast path's ``FastPathClient``, the
    runtime's direct channel: ``run(payload)``), the QPU handle a hybrid
    program receives (its payload call, which keeps its timings), or anything
    with ``run_payload(payload)``.
    """
    method = getattr(handle, "run_payload", None)
    if callable(method):
        return method  # type: ignore[no-any-return]
    if hasattr(handle, "estimate") and callable(getattr(handle, "_call", None)):
        return handle._call  # type: ignore[attr-defined,no-any-return]  # the runtime's handle
    if hasattr(handle, "session_id") and callable(getattr(handle, "run", None)):
        return handle.run  # type: ignore[attr-defined,no-any-return]  # a session client
    raise RemoteError(
        f"a {type(handle).__name__} cannot run payloads: give a session client or the "
        "QPU handle of a hybrid program"
    )


def session_qpu(
    endpoint: str | None = None,
    token: str | None = None,
    *,
    target: DeviceTarget | None = None,
    url: str | None = None,
    timeout: float = 600.0,
) -> SessionQPU:
    """The session's resource as a QPU, over the fast path.

    Unset arguments come from ``QHPC_FASTPATH``, ``QHPC_SESSION`` and
    ``QHPC_URL``. Without ``target`` it is read from the broker's REST API.
    """
    endpoint = endpoint or os.environ.get(FASTPATH_ENV)
    token = token or os.environ.get(SESSION_ENV)
    if not endpoint or not token:
        raise RemoteError(
            f"no QPU session: set {FASTPATH_ENV} (the broker's fast-path endpoint) and "
            f"{SESSION_ENV} (a session token), as qhpc's Slurm TaskProlog does"
        )
    # unix:// is the direct channel of a program co-located with the broker
    client = open_channel(endpoint, token, timeout=timeout)
    try:
        if target is None:
            target = _target_over_rest(url or os.environ.get(URL_ENV), token, client.resource)
    except BaseException:
        client.close()
        raise
    return SessionQPU(client, target)


def _target_over_rest(url: str | None, token: str, resource: str) -> DeviceTarget:
    if not url:
        raise RemoteError(
            f"the session's device target is needed to compile for {resource!r}: set "
            f"{URL_ENV} (the broker's REST URL) or pass target="
        )
    try:
        with connect(url, token) as client:
            data: dict[str, Any] = client.resource(resource)
    except ClientError as exc:
        raise RemoteError(f"cannot read the target of {resource!r} at {url}: {exc}") from exc
    return DeviceTarget.from_dict(data["target"])


class BrokerDevice:
    """A session's resource as its own token sees it on the broker's REST API: the device
    target and the broker's status of it (a :class:`qhpc.session.DeviceView`).

    Both threads of a :class:`~qhpc.session.QiEndpoint` read it; one lock keeps their
    requests on the shared HTTP client one at a time.
    """

    def __init__(self, client: Client, resource: str) -> None:
        self.client = client
        self.resource = resource
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, resource: str, url: str | None = None, token: str | None = None) -> Self:
        """``QHPC_URL`` and the session token unless given: ``QHPC_SESSION``, or in a job
        holding several QPUs, ``QHPC_SESSION_<RESOURCE>`` for another than ``QHPC_RESOURCE``."""
        url = url or os.environ.get(URL_ENV)
        if not token:
            held = os.environ.get(RESOURCE_ENV)
            token = os.environ.get(
                SESSION_ENV if held in (None, resource) else session_env_for(resource)
            )
        if not url or not token:
            raise RemoteError(
                f"the device of {resource!r} is read from the broker's REST API: set {URL_ENV} "
                f"and {SESSION_ENV}, as qhpc's Slurm TaskProlog does"
            )
        return cls(connect(url, token), resource)

    def _detail(self) -> dict[str, Any]:
        with self._lock:
            try:
                return self.client.resource(self.resource)
            except ClientError as exc:
                raise RemoteError(f"cannot read {self.resource!r} from the broker: {exc}") from exc

    def target(self) -> DeviceTarget:
        return DeviceTarget.from_dict(self._detail()["target"])

    def status(self) -> DeviceStatus:
        from qhpc.session import DeviceStatus  # on first use: it loads the QI protocol

        data = self._detail()
        return DeviceStatus(
            state=str(data["state"]), reason=str(data.get("reason") or ""),
            queue_length=int(data.get("queue_length") or 0), pending=int(data.get("pending") or 0),
        )  # fmt: skip

    def close(self) -> None:
        self.client.close()
