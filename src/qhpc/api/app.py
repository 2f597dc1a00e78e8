"""The FastAPI application: routers under ``/v1``, problem bodies, the body-size guard,
request ids (``X-Request-ID``), ``/metrics`` (mounted from qhpc.web)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

import qhpc
from qhpc.api import routes_admin, routes_jobs, routes_proxy, routes_resources, routes_sessions
from qhpc.api.limits import DEFAULT_BODY_TIMEOUT, BodyLimit
from qhpc.api.problems import PROBLEM_MEDIA_TYPE, install_handlers
from qhpc.api.requestids import RequestIds
from qhpc.api.views import Problem
from qhpc.broker import Broker
from qhpc.proxy import VendorProxies
from qhpc.web import install_metrics, mount_console

API_PREFIX = "/v1"

_DESCRIPTION = """\
REST front of the qhpc broker: resources, batch and hybrid jobs, sessions, reservations,
accounts, accounting, tokens, and the vendor proxy for vendor SDKs inside Slurm jobs.
Authenticate with `Authorization: Bearer <token>`.
Every error is an RFC 9457 problem body (`application/problem+json`).
"""


def _problem_responses() -> dict[int | str, dict[str, Any]]:
    described = {
        401: "missing, malformed, unknown, expired or revoked token",
        403: "the token may not do this",
        404: "no such object (or not visible to this token)",
        408: "the request body did not arrive in time (the connection is closed)",
        409: "conflicts with the current state",
        413: "request body too large (the connection is closed)",
        422: "invalid input: validation, circuits, payloads",
        502: "the vendor proxy's vendor cannot be reached or answered what it will not pass on",
        504: "the vendor proxy's vendor did not answer in time",
    }
    return {
        status: {"model": Problem, "description": text, "content": {PROBLEM_MEDIA_TYPE: {}}}
        for status, text in described.items()
    }


def create_app(
    broker: Broker,
    *,
    max_body_bytes: int | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    metrics_token: str | None = None,
) -> FastAPI:
    """The API over ``broker``; the caller starts and stops the broker.

    ``max_body_bytes`` defaults to the broker's payload limit
    (``BrokerConfig.max_payload_bytes``, i.e. ``MAX_PAYLOAD_BYTES``); a body must
    arrive within ``body_timeout`` seconds (408 otherwise). ``GET /metrics`` answers
    admin tokens and ``metrics_token`` (qhpc.web). The vendor proxies of the broker's
    resources are built here, their credentials read (CredentialError if one is
    unusable), and their connections closed when the app's lifespan ends.
    """
    proxies = VendorProxies.of(broker.resources)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await proxies.aclose()

    app = FastAPI(
        title="qhpc broker",
        version=qhpc.__version__,
        description=_DESCRIPTION,
        responses=_problem_responses(),
        lifespan=lifespan,
    )
    app.state.broker = broker
    app.state.vendor_proxies = proxies
    install_handlers(app)
    v1 = APIRouter(prefix=API_PREFIX)
    for router in (
        routes_resources.system,
        routes_resources.resources,
        routes_resources.pools,
        routes_jobs.jobs,
        routes_jobs.tasks,
        routes_jobs.programs,
        routes_sessions.sessions,
        routes_admin.reservations,
        routes_admin.accounts,
        routes_admin.accounting,
        routes_admin.tokens,
        routes_proxy.proxy,
    ):
        v1.include_router(router)
    app.include_router(v1)
    mount_console(app)  # the console at /dashboard (qhpc.web)
    limit = broker.config.max_payload_bytes if max_body_bytes is None else max_body_bytes
    app.add_middleware(BodyLimit, max_bytes=limit, timeout=body_timeout)
    install_metrics(app, broker, token=metrics_token)  # times the refused too
    app.add_middleware(RequestIds)  # added last: outermost, so every answer carries the id
    return app


def openapi_json(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of ``app``, for publishing (``json.dumps`` it)."""
    return app.openapi()
