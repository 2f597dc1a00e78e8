"""The broker's own refusal (the rooms' other errors live in their rooms)."""

from __future__ import annotations

from qhpc.errors import QhpcError


class BrokerError(QhpcError):
    """A request the broker refuses (bad state, limits); the message says why."""
