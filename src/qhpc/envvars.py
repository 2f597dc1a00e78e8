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
``QHPC_PROXY``         the broker's vendor proxy for the session's resource,
                       ``$QHPC_URL/v1/proxy/<resource>``: a vendor SDK's endpoint
                       (answers 404 when the resource has no vendor proxy)
``QHPC_SESSION_<QPU>``  with several QPUs (``--qpu=a,b``), each one's session token
                       (and ``QHPC_SESSION_ID_<QPU>``, ``QHPC_PROXY_<QPU>``);
                       ``<QPU>`` is the name in capitals, other characters as ``_``
``QHPC_QI_TOKEN``      the token a Quantum Inspire runtime must send in ``initialize``
                       to ``qhpc session qi-endpoint`` (over TCP, else generated)
``QRMI_JOB_QPU_RESOURCES``  the job's QPUs, comma-separated (IBM QRMI's contract)
``QRMI_JOB_QPU_TYPES``  their resource types, in the same order (QRMI's contract)
=====================  ==========================================================
"""

from __future__ import annotations

from urllib.parse import quote

URL_ENV = "QHPC_URL"
TOKEN_ENV = "QHPC_TOKEN"
SESSION_ENV = "QHPC_SESSION"
SESSION_ID_ENV = "QHPC_SESSION_ID"
FASTPATH_ENV = "QHPC_FASTPATH"
RESOURCE_ENV = "QHPC_RESOURCE"
PROGRAM_ID_ENV = "QHPC_PROGRAM_ID"
PROXY_ENV = "QHPC_PROXY"
#: where the broker serves the vendor proxy of a resource, below its URL
PROXY_PATH = "/v1/proxy"
QI_TOKEN_ENV = "QHPC_QI_TOKEN"
QRMI_RESOURCES_ENV = "QRMI_JOB_QPU_RESOURCES"
QRMI_TYPES_ENV = "QRMI_JOB_QPU_TYPES"


def _key(resource: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in resource).upper()


def session_env_for(resource: str) -> str:
    """The variable holding the session token of ``resource`` in a job with several QPUs."""
    return f"{SESSION_ENV}_{_key(resource)}"


def session_id_env_for(resource: str) -> str:
    return f"{SESSION_ID_ENV}_{_key(resource)}"


def proxy_env_for(resource: str) -> str:
    """The variable holding the vendor proxy URL of ``resource`` in a job with several QPUs."""
    return f"{PROXY_ENV}_{_key(resource)}"


def proxy_url(url: str, resource: str) -> str:
    """The vendor proxy of ``resource`` at the broker whose REST API is ``url``."""
    return f"{url.rstrip('/')}{PROXY_PATH}/{quote(resource, safe='')}"


__all__ = [
    "FASTPATH_ENV",
    "PROGRAM_ID_ENV",
    "PROXY_ENV",
    "PROXY_PATH",
    "QI_TOKEN_ENV",
    "QRMI_RESOURCES_ENV",
    "QRMI_TYPES_ENV",
    "RESOURCE_ENV",
    "SESSION_ENV",
    "SESSION_ID_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "proxy_env_for",
    "proxy_url",
    "session_env_for",
    "session_id_env_for",
]
