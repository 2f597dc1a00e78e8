"""Typed errors of the store.

Callers catch :class:`NotFoundError` and :class:`ConflictError` to turn them into
404/409-style answers; anything else the database says arrives as :class:`StoreError`.
Invalid arguments (an unknown state name, a task of another job) raise ``ValueError``:
they are programming mistakes, not conditions of the stored data.
"""

from __future__ import annotations

from qhpc.errors import QhpcError


class StoreError(QhpcError):
    """The store could not do what was asked (bad URL, unreachable database, ...)."""


class NotFoundError(StoreError):
    """No row has the given id."""


class ConflictError(StoreError):
    """The request contradicts stored data: duplicate id, task already final, ..."""
