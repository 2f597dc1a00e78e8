"""qhpc: quantum processors as shared, scheduled, accounted HPC resources."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qhpc.errors import QhpcError as QhpcError

__version__ = "0.1.0"

__all__ = ["QhpcError", "__version__", "connect"]

if TYPE_CHECKING:
    from qhpc.client import Client


def connect(url: str | None = None, token: str | None = None, timeout: float = 30.0) -> Client:
    """A client of the broker at ``url`` (default ``$QHPC_URL``; see :mod:`qhpc.client`)."""
    from qhpc.client import connect as _connect

    return _connect(url, token, timeout)
