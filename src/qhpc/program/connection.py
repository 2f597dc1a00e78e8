"""A broker's QPUs: what ``qhpc.connect(url, token)`` returns.

:class:`Connection` is the REST :class:`~qhpc.client.Client` plus :meth:`~Connection.qpu`,
the programming model's way onto a broker. It lives here, above the client, so that
the client stays a plain REST client that imports nothing of the programming model
(nor Qiskit until a circuit is handled), and the Slurm hooks can use it too::

    import qhpc

    qpu = qhpc.connect().qpu()                 # inside a session: its fast path
    remote = qhpc.connect(url, token).qpu("aer", fastpath=False)   # a RemoteQPU
"""

from __future__ import annotations

import os
from typing import Any

from qhpc.client import DEFAULT_RETRIES, Client, ClientError, open_client
from qhpc.envvars import FASTPATH_ENV, RESOURCE_ENV, SESSION_ENV
from qhpc.program.remote import RemoteQPU
from qhpc.program.session import SessionQPU, session_qpu
from qhpc.resources.target import DeviceTarget


class Connection(Client):
    """A client of one broker that also hands out its resources as QPUs."""

    def qpu(
        self, name: str | None = None, *, fastpath: bool | None = None, **options: Any
    ) -> RemoteQPU | SessionQPU:
        """A QPU on this broker with the same interface as a local one (``submit`` …).

        Inside a session (``QHPC_FASTPATH`` and ``QHPC_SESSION`` set, as in a
        Slurm job with ``--qpu``), the session's resource is reached over the
        ZeroMQ fast path: every payload is a session task (session priority, no
        HTTP). Elsewhere, or for another resource, it is a :class:`RemoteQPU`
        (one broker job per batch; whole stacks run on the broker).
        ``fastpath=True`` insists on the session, ``False`` refuses it; ``name``
        defaults to ``QHPC_RESOURCE``. ``options`` go to :class:`RemoteQPU`.
        """
        name = name or os.environ.get(RESOURCE_ENV)
        if not name:
            raise ClientError(f"name a resource: qpu('aer'), or set {RESOURCE_ENV}")
        session_resource = os.environ.get(RESOURCE_ENV)
        in_session = bool(os.environ.get(FASTPATH_ENV) and os.environ.get(SESSION_ENV))
        if fastpath is None:
            fastpath = in_session and (session_resource is None or session_resource == name)
        if fastpath:
            if options:
                raise ClientError(f"options {sorted(options)} do not apply to a session's QPU")
            return session_qpu(target=DeviceTarget.from_dict(self.resource(name)["target"]))
        return RemoteQPU(self, name, **options)


def connect(
    url: str | None = None,
    token: str | None = None,
    timeout: float = 30.0,
    *,
    retries: int = DEFAULT_RETRIES,
) -> Connection:
    """A :class:`Connection` to the broker at ``url``; arguments as :func:`qhpc.client.connect`
    (unset, ``$QHPC_URL`` and ``$QHPC_TOKEN`` or ``$QHPC_SESSION``)."""
    return open_client(Connection, url, token, timeout, retries=retries)
