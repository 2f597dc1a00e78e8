"""qhpc: quantum processors as shared, scheduled, accounted HPC resources."""

from qhpc.errors import QhpcError as QhpcError

__version__ = "0.1.0"

__all__ = ["QhpcError", "__version__"]
