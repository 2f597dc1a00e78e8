"""The root of qhpc's typed errors.

Every room raises subclasses of :class:`QhpcError` for problems a user can fix
(bad input, unknown names, unreachable services); programming mistakes raise
built-in exceptions. This module imports nothing, so any room may use it.
"""

from __future__ import annotations


class QhpcError(Exception):
    """Base class of every error qhpc raises on purpose."""
