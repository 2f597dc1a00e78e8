"""Deprecated home of the fast path's client: it moved to :mod:`qhpc.session.fastpath`.

``from qhpc.runtime.fastpath import FastPathClient`` still works and warns; import
``FastPathClient`` and ``FastPathError`` from :mod:`qhpc.session`.
"""

from __future__ import annotations

import warnings
from typing import Any

from qhpc.session import fastpath as _moved


def __getattr__(name: str) -> Any:
    # Called only for names this module does not define, i.e. on every old import.
    if name.startswith("__") or not hasattr(_moved, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"qhpc.runtime.fastpath.{name} moved to qhpc.session.fastpath (FastPathClient and "
        "FastPathError: import them from qhpc.session)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_moved, name)
