"""The QRMI-shaped resource interface and the machinery local adapters share.

Mirrors IBM QRMI's ``QuantumResource`` so vendor adapters and admins' knowledge
carry over: ``status``, ``acquire``/``release``, ``task_start`` (asynchronous:
returns an id at once), ``task_stop``, ``task_status``, ``task_result``,
``task_logs``, ``target``, ``metadata``. The broker owns locking; adapters do
not serialise access themselves beyond running one task at a time.
"""

from __future__ import annotations

import abc
import enum
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from qhpc.resources.errors import AcquisitionError, TaskFailedError
from qhpc.resources.payload import Payload, TaskResult
from qhpc.resources.target import DeviceTarget
from qhpc.states import TaskStatus as TaskStatus  # the resource interface's name for it


class ResourceState(enum.StrEnum):
    """A device's state, in QDMI's vocabulary (``QDMI_DEVICE_STATUS_*``).

    An adapter reports ``IDLE`` or ``BUSY`` while the device takes work; the broker
    adds its own view on top (a drained resource shows ``MAINTENANCE`` whatever the
    device says, one running a task shows ``BUSY``).
    """

    OFFLINE = "offline"
    IDLE = "idle"
    BUSY = "busy"
    ERROR = "error"
    MAINTENANCE = "maintenance"
    CALIBRATION = "calibration"

    @property
    def takes_work(self) -> bool:
        """Whether a task may start now (idle, or busy with work of its own)."""
        return self in (ResourceState.IDLE, ResourceState.BUSY)


@dataclass(frozen=True)
class ResourceStatus:
    state: ResourceState
    busy: bool
    pending: int
    reason: str = ""
    #: when the state is expected to change (UNIX s; a drain's or maintenance's end), if known
    until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "busy": self.busy,
            "pending": self.pending,
            "reason": self.reason,
            "until": self.until,
        }


class QuantumResource(abc.ABC):
    """One QPU or simulator. Subclasses implement the QRMI-shaped methods."""

    #: adapter type as written in configuration files (``aer``, ``emulator`` …)
    type_name: str = "abstract"
    #: whether task ids outlive this process (a remote device keeps running a task
    #: after the broker dies), so the broker should store them to stop orphans
    remembers_tasks: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._tokens: set[str] = set()
        self._tokens_lock = threading.Lock()

    # -- acquisition: tokens only; the broker decides who may hold the resource
    def acquire(self) -> str:
        token = uuid.uuid4().hex
        with self._tokens_lock:
            self._tokens.add(token)
        return token

    def release(self, token: str) -> None:
        with self._tokens_lock:
            if token not in self._tokens:
                raise AcquisitionError(f"{self.name}: acquisition token {token!r} is not held")
            self._tokens.discard(token)

    def is_accessible(self) -> bool:
        return self.status().state not in (ResourceState.OFFLINE, ResourceState.ERROR)

    @abc.abstractmethod
    def status(self) -> ResourceStatus: ...

    @abc.abstractmethod
    def target(self) -> DeviceTarget: ...

    @abc.abstractmethod
    def task_start(self, payload: Payload) -> str: ...

    @abc.abstractmethod
    def task_stop(self, task_id: str) -> None: ...

    @abc.abstractmethod
    def task_status(self, task_id: str) -> TaskStatus: ...

    @abc.abstractmethod
    def task_result(self, task_id: str) -> TaskResult: ...

    @abc.abstractmethod
    def task_logs(self, task_id: str) -> str: ...

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type_name}

    def estimate_seconds(self, payload: Payload) -> float | None:
        """Expected device time of ``payload`` before it ran, if the resource can tell."""
        return None

    def task_wait(self, task_id: str, timeout: float | None = None) -> TaskStatus:
        """Block until the task is final or ``timeout`` seconds pass; return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            status = self.task_status(task_id)
            if status.is_final:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def run(self, payload: Payload, timeout: float | None = None) -> TaskResult:
        """Start a task, wait for it, and return its result (raises if it did not complete)."""
        task_id = self.task_start(payload)
        status = self.task_wait(task_id, timeout)
        if not status.is_final:
            self.task_stop(task_id)
            raise TaskFailedError(f"{self.name}: task {task_id} timed out after {timeout} s")
        return self.task_result(task_id)

    def close(self) -> None:
        """Release background threads and connections; the resource is unusable after."""
