"""What an operator does to a resource, and what the broker then says about it.

:class:`Operators` drains and resumes resources (the drains themselves, stored and
lapsing, are :mod:`~qhpc.broker.drains`) and composes the broker's view of a
resource's state: a drain wins over whatever the device reports, and a task of
ours running on an idle device makes it busy. Every reader of a resource's state
above the broker — REST, the console, /metrics, the operator's log — goes through
:meth:`Operators.status`, so they never disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from qhpc.broker.drains import DrainRequest, Drains
from qhpc.broker.executor import ResourceExecutor, Shared
from qhpc.resources import ResourceRegistry, ResourceState, ResourceStatus
from qhpc.store import DrainRecord


class Operators:
    """Drain, resume, and the broker's view of each resource (takes the lock itself)."""

    def __init__(
        self,
        resources: ResourceRegistry,
        drains: Drains,
        executors: Mapping[str, ResourceExecutor],
        shared: Shared,
        clock: Callable[[], float],
    ) -> None:
        self.resources = resources
        self.drains = drains
        self.executors = executors
        self.shared = shared
        self.clock = clock

    def drain(self, resource: str, request: DrainRequest, by: str) -> DrainRecord:
        """Take ``resource`` out of service; with ``request.now`` its running work is
        stopped and queued again, otherwise it finishes."""
        self.resources.spec(resource)  # unknown name → UnknownResourceError
        drain = self.drains.begin(resource, request, by, self.clock())
        with self.shared.cond:
            if request.now:
                self.executors[resource].stop_for_drain()
            self.shared.cond.notify_all()
        return drain

    def resume(self, resource: str, by: str) -> DrainRecord:
        """End the drain of ``resource`` (NotDrained if it has none); the drain ended."""
        self.resources.spec(resource)
        ended = self.drains.end(resource, by)
        with self.shared.cond:
            self.shared.cond.notify_all()
        return ended

    def lapse(self) -> None:
        """End the drains past their end; the executors look again at once."""
        if self.drains.lapse(self.clock()):
            with self.shared.cond:
                self.shared.cond.notify_all()

    def notice(self, resource: str) -> str | None:
        """A line for a session's user while ``resource`` is drained (None: it is not)."""
        drain = self.drains.active(resource, self.clock())
        if drain is None:
            return None
        end = (
            "until resumed"
            if drain.until is None
            else time.strftime("until %Y-%m-%d %H:%M:%S %Z", time.localtime(drain.until))
        )
        return f"qhpc: QPU {resource} is drained {end} ({drain.reason}); your tasks wait"

    def status(self, name: str) -> ResourceStatus:
        """The broker's view of a resource (see the module docstring)."""
        self.resources.spec(name)
        status = self.resources.get(name).status()
        drain = self.drains.active(name, self.clock())
        if drain is not None:
            return replace(
                status, state=ResourceState.MAINTENANCE, reason=f"drained: {drain.reason}",
                until=drain.until,
            )  # fmt: skip
        if status.state is ResourceState.IDLE:
            with self.shared.cond:
                running = self.executors[name].running is not None
            if running:
                return replace(status, state=ResourceState.BUSY)
        return status
