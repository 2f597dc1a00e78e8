"""HTTP (FastAPI) and ZeroMQ in front of the broker: thin, no business logic.

REST: ``create_app(broker)`` builds the app, ``run_server(broker, limits=ServerLimits())``
serves it with uvicorn under timeouts and a connection cap, ``openapi_json(app)``
gives the spec to publish, ``bootstrap_admin_token(broker)`` makes the first admin
token of a fresh store, and ``private_state(db)`` makes a server's files private
before it opens its store; ``MetricsListener(broker, host, port)`` serves ``/metrics``
alone, tokenless, on an address of its own, and ``read_metrics_token(path)`` reads
the secret that may scrape the REST port's ``/metrics``.
ZeroMQ: ``FastPathServer(broker)`` (:mod:`qhpc.api.fastpath`) serves session tasks.

The REST names load on first use, so that a hybrid program importing only the
fast-path client does not pay for FastAPI and the broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qhpc.api.app import API_PREFIX, create_app, openapi_json
    from qhpc.api.fastpath import FastPathServer
    from qhpc.api.server import (
        MetricsListener,
        bootstrap_admin_token,
        private_state,
        read_metrics_token,
        run_server,
        write_secret,
    )
    from qhpc.api.transport import ServerLimits

__all__ = [
    "API_PREFIX",
    "FastPathServer",
    "MetricsListener",
    "ServerLimits",
    "bootstrap_admin_token",
    "create_app",
    "openapi_json",
    "private_state",
    "read_metrics_token",
    "run_server",
    "write_secret",
]

_LAZY = {
    "API_PREFIX": "qhpc.api.app",
    "create_app": "qhpc.api.app",
    "openapi_json": "qhpc.api.app",
    "bootstrap_admin_token": "qhpc.api.server",
    "private_state": "qhpc.api.server",
    "run_server": "qhpc.api.server",
    "write_secret": "qhpc.api.server",
    "MetricsListener": "qhpc.api.server",
    "read_metrics_token": "qhpc.api.server",
    "FastPathServer": "qhpc.api.fastpath",
    "ServerLimits": "qhpc.api.transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qhpc.api' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
