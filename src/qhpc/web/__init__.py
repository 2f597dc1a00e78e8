"""The operator and user console (server-rendered) and, beside it, /metrics; mounted by api/.

Public surface; ``qhpc.api`` imports only these names.
"""

from qhpc.web.console import mount_console

__all__ = ["mount_console"]
