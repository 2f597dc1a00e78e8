"""The operator and user console (server-rendered) and, beside it, /metrics; mounted by api/.

Public surface; ``qhpc.api`` imports only these names.
"""

from qhpc.web.console import mount_console
from qhpc.web.metrics import (
    CONTENT_TYPE,
    METRICS_PATH,
    install_metrics,
    metrics_app,
    read_metrics_token,
)

__all__ = [
    "CONTENT_TYPE",
    "METRICS_PATH",
    "install_metrics",
    "metrics_app",
    "mount_console",
    "read_metrics_token",
]
