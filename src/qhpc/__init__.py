"""qhpc: quantum processors as shared, scheduled, accounted HPC resources."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qhpc.errors import QhpcError as QhpcError

__version__ = "0.1.0"

__all__ = ["QhpcError", "__version__", "connect"]

if TYPE_CHECKING:
    from qhpc.program import Connection


def connect(url: str | None = None, token: str | None = None, timeout: float = 30.0) -> Connection:
    """A client of the broker at ``url`` (default ``$QHPC_URL``; see :mod:`qhpc.client`) whose
    ``qpu(name)`` gives its resources as QPUs (:class:`qhpc.program.Connection`)."""
    # Imported on call: ``import qhpc`` stays free of Qiskit and the programming model.
    from qhpc.program import connect as _connect

    return _connect(url, token, timeout)
