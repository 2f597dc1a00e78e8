"""Typed errors of the session room; each message names what to fix.

They live here, at the user's end of a session, because a hybrid program raises
and catches them without loading the broker or the runtime pool;
``qhpc.runtime`` and ``qhpc.api.fastpath`` re-export them under their old names.
"""

from __future__ import annotations

from qhpc.errors import QhpcError


class FastPathError(QhpcError):
    """The broker answered a session task (fast path or direct channel) with an error.

    ``status`` is HTTP-like: 400 bad frame, 401 token, 409 session closed, 413 too
    large, 422 payload, 500 task failed, 503 channel down, 504 no answer in time.
    """

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail}")


class QpuNotConfiguredError(QhpcError):
    """A program asked for its QPU handle but holds no session (no ``QHPC_FASTPATH`` /
    ``QHPC_SESSION``, or a runtime pool built without ``qpu_factory``)."""
