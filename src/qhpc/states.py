"""The one vocabulary of task states, shared by every room (a bottom module).

A task is ``queued``, then ``running``, then final: ``completed``, ``failed`` or
``cancelled``. Resources report it (``task_status``), the store keeps it, the broker
and the API pass it on, clients wait for a final one. :class:`TaskStatus` is a
``StrEnum``: its members are the strings the store and the wire carry, so a member
and its string compare (and hash) equal.
"""

from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


#: the states a task ends in
FINAL_STATES: frozenset[TaskStatus] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
)
#: the states of a task that has not ended
OPEN_STATES: frozenset[TaskStatus] = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})
