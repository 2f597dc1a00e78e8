"""The broker's own refusal (the rooms' other errors live in their rooms)."""

from __future__ import annotations

from qhpc.errors import QhpcError


class BrokerError(QhpcError):
    """A request the broker refuses (bad state, limits); the message says why."""


class SessionClosed(BrokerError):
    """A task for a session that has closed or passed its deadline (HTTP 409, problem
    type ``session-closed``: a client tells it from other conflicts by the type)."""
