"""HTTP (FastAPI) and ZeroMQ in front of the broker: thin, no business logic.

REST: ``create_app(broker)`` builds the app, ``run_server(broker)`` serves it with
uvicorn, ``openapi_json(app)`` gives the spec to publish, and
``bootstrap_admin_token(broker)`` makes the first admin token of a fresh store.
"""

from __future__ import annotations

from qhpc.api.app import API_PREFIX, create_app, openapi_json
from qhpc.api.server import bootstrap_admin_token, run_server

__all__ = ["API_PREFIX", "bootstrap_admin_token", "create_app", "openapi_json", "run_server"]
