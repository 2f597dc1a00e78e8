"""Deprecated home of the hybrid program's QPU handle: it moved to :mod:`qhpc.session`.

``from qhpc.runtime.program import QPU`` still works and warns; write
``from qhpc.session import QPU``. :func:`make_qpu` stays importable here without a
warning: runtime pools name their QPU factory by the string
``"qhpc.runtime.program:make_qpu"`` (the broker's among them), and a stored string
outlives a release; new pools name ``"qhpc.session:make_qpu"``.
"""

from __future__ import annotations

import warnings
from typing import Any

from qhpc.envvars import FASTPATH_ENV as _FASTPATH_ENV
from qhpc.envvars import SESSION_ENV as _SESSION_ENV
from qhpc.session import QPU as _QPU
from qhpc.session import QpuTimings as _QpuTimings
from qhpc.session import make_qpu
from qhpc.session import open_channel as _open_channel

#: old name here → (what it is, where it is now)
_MOVED: dict[str, tuple[Any, str]] = {
    "QPU": (_QPU, "qhpc.session.QPU"),
    "QpuTimings": (_QpuTimings, "qhpc.session.QpuTimings"),
    "connect": (_open_channel, "qhpc.session.open_channel"),
    "FASTPATH_ENV": (_FASTPATH_ENV, "qhpc.envvars.FASTPATH_ENV"),
    "SESSION_ENV": (_SESSION_ENV, "qhpc.envvars.SESSION_ENV"),
}

__all__ = ["make_qpu"]


def __getattr__(name: str) -> Any:
    # Called only for names this module does not define, i.e. on every old import.
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    found, new = _MOVED[name]
    warnings.warn(f"qhpc.runtime.program.{name} moved: use {new}", DeprecationWarning, stacklevel=2)
    return found
