"""Resource types as plugins: the ``qhpc.resources`` entry-point group.

A third party adds a resource type by installing a package that declares, in its
``pyproject.toml``::

    [project.entry-points."qhpc.resources"]
    mychip = "mychip_qhpc:RESOURCE_TYPE"

where ``RESOURCE_TYPE`` is a :class:`~qhpc.resources.ResourceType`: the type's name (as written in a
resources file), the options it accepts, and how to build the adapter from a
:class:`~qhpc.resources.config.ResourceSpec`. No change to qhpc is needed; qhpc's own
types (``aer``, ``emulator``, ``qx``, ``qdmi``, ``null``) are declared the same way in qhpc's
``pyproject.toml`` and are also known without it (running from a source tree).

Loading an entry point imports the package that declares it, so only what an admin
installed next to qhpc is ever imported — never anything named in a resources file
or sent by a tenant. A plugin that fails to import, is not a ``ResourceType``, names
itself differently or claims a built-in type's name is skipped with a warning naming
the package; the resources file then gets the usual "unknown type" error.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qhpc.resources"

T = TypeVar("T")


def plugin_types(builtin: Mapping[str, T], kind: type[T]) -> dict[str, T]:
    """``builtin`` and the types installed packages declare: objects of ``kind`` whose
    ``name`` is their entry point's (see the module docstring)."""
    hashable: Any = kind  # a class is hashable; the cache key needs no more
    found: dict[str, Any] = _declared(tuple(sorted(builtin.items())), hashable)
    return {**builtin, **found}


@cache
def _declared(builtin: tuple[tuple[str, Any], ...], kind: type) -> dict[str, Any]:
    known = dict(builtin)
    found: dict[str, Any] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"{entry.value} (package {entry.dist.name if entry.dist else 'unknown'})"
        try:
            declared = entry.load()
        except Exception as exc:  # a broken plugin must not take the others down
            log.warning("resource type %r from %s did not load: %s", entry.name, where, exc)
            continue
        if entry.name in known:
            if declared is not known[entry.name]:
                log.warning("resource type %r from %s: the name is qhpc's own", entry.name, where)
            continue
        if not isinstance(declared, kind) or getattr(declared, "name", None) != entry.name:
            log.warning(
                "resource type %r from %s is not a ResourceType named %r; skipped",
                entry.name, where, entry.name,
            )  # fmt: skip
            continue
        if entry.name in found:
            log.warning("resource type %r is declared twice; %s skipped", entry.name, where)
            continue
        found[entry.name] = declared
    return found
