"""The environment variables through which a job or program finds its broker.

Defined once, here at the bottom of the dependency graph, so that the places
that set them (the Slurm TaskProlog, the runtime pool for co-located programs)
and those that read them (:func:`qhpc.connect`, ``QPU.from_env()``, the
session QPU of :mod:`qhpc.program`) cannot drift apart. Each name means the
same thing wherever it is set:

=====================  ==========================================================
``QHPC_URL``           the broker's REST API, ``http(s)://host:port``; nothing else
``QHPC_TOKEN``         an API token (users, admins); never set by qhpc itself
``QHPC_SESSION``       a session token, scoped to one session and resource
``QHPC_SESSION_ID``    the session's id (Slurm jobs)
``QHPC_FASTPATH``      where session tasks go: ``tcp://``/``ipc://`` (the ZeroMQ
                       fast path) or ``unix://`` (the direct channel of programs
                       co-located with the broker)
``QHPC_RESOURCE``      the session's resource
``QHPC_PROGRAM_ID``    a co-located program's job id
=====================  ==========================================================
"""

from __future__ import annotations

URL_ENV = "QHPC_URL"
TOKEN_ENV = "QHPC_TOKEN"
SESSION_ENV = "QHPC_SESSION"
SESSION_ID_ENV = "QHPC_SESSION_ID"
FASTPATH_ENV = "QHPC_FASTPATH"
RESOURCE_ENV = "QHPC_RESOURCE"
PROGRAM_ID_ENV = "QHPC_PROGRAM_ID"

__all__ = [
    "FASTPATH_ENV",
    "PROGRAM_ID_ENV",
    "RESOURCE_ENV",
    "SESSION_ENV",
    "SESSION_ID_ENV",
    "TOKEN_ENV",
    "URL_ENV",
]
