"""``/metrics``: the broker's telemetry in the OpenMetrics text format, for Prometheus.

Two ways to serve it (docs/monitoring.md weighs them):

* on the REST port (:func:`install_metrics`, mounted by the API), for a bearer token:
  an admin token, or the *metrics token* — a secret the operator keeps in a file
  (``qhpc serve --metrics-token-file``) that may scrape and do nothing else, so the
  Prometheus host never holds an admin token;
* on a listener of its own (:func:`metrics_app`, ``qhpc serve --metrics-bind``),
  without a token, for a private scrape network: that app has one route and no other.

What is rendered is the broker's own registry (``broker.telemetry.registry``): the
instruments counted as work happens and the state read at scrape time. The figures
are operators' figures (accounts, usage, queues of every tenant), hence no user or
session token may read them.

:class:`RequestMetrics` times every REST request by its route *template*
(``/v1/jobs/{job_id}``), never the raw path: label values must stay few, and a path
is whatever a client sends. A request that matched no route is ``(unmatched)``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
import time
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request, Response
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qhpc.broker import Broker, Telemetry
from qhpc.security import AuthError, PermissionDenied, Role

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
#: ``application/openmetrics-text; version=1.0.0; charset=utf-8``
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
#: the route label of a request no route matched (a 404 for an unknown path)
UNMATCHED: Final = "(unmatched)"
#: a metrics token shorter than this is refused: it guards every tenant's figures
MIN_TOKEN_CHARS: Final = 16


def render(broker: Broker) -> bytes:
    """The broker's metrics now, in the OpenMetrics text format."""
    data: bytes = generate_latest(broker.telemetry.registry)  # type: ignore[no-untyped-call]
    return data


class MetricsAccess:
    """Who may scrape on the REST port: an admin token, or the metrics token."""

    def __init__(self, broker: Broker, token: str | None) -> None:
        self.broker = broker
        # Only a digest is kept, compared in constant time like the store's hashes.
        self._digest = None if token is None else _digest(token)

    def check(self, header: str | None) -> None:
        """Raise AuthError (401) or PermissionDenied (403) unless ``header`` may scrape."""
        if header is None:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, secret = header.strip().partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            raise AuthError("malformed Authorization header: expected 'Bearer <token>'")
        if self._digest is not None and hmac.compare_digest(_digest(secret), self._digest):
            return
        principal = self.broker.access.authenticate(secret)  # unknown → AuthError
        if principal.role is not Role.ADMIN:
            raise PermissionDenied("/metrics needs an admin token or the metrics token")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def install_metrics(app: FastAPI, broker: Broker, *, token: str | None = None) -> None:
    """Serve ``GET /metrics`` on ``app`` (admin or metrics ``token``) and time its
    requests. Call after the app's other middleware: the timing then also sees the
    requests they refuse (413, 408)."""
    access = MetricsAccess(broker, token)

    # A plain def: FastAPI runs it on a worker thread, since a scrape takes the
    # broker's lock and may wait for a remote device's state.
    def metrics(request: Request) -> Response:
        access.check(request.headers.get("authorization"))
        return Response(render(broker), media_type=CONTENT_TYPE)

    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(RequestMetrics, telemetry=broker.telemetry)


def metrics_app(broker: Broker) -> Starlette:
    """An app with ``GET /metrics`` alone, no token: for a listener on a private network."""

    def metrics(request: Request) -> Response:
        return Response(render(broker), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route(METRICS_PATH, metrics, methods=["GET"])])


class RequestMetrics:
    """Pure ASGI middleware: every HTTP request's route template, method, status, time."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry
        #: id(route) → (route, its full template); as many entries as the app has
        #: routes (APIRoute is unhashable; the route is kept, so its id stays its own)
        self._templates: dict[int, tuple[object, str]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception the server turns into 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            try:
                self.telemetry.http_request(
                    self._template(scope),
                    str(scope.get("method", "")),
                    status,
                    time.perf_counter() - started,
                )
            except Exception:  # counting never fails a request
                log.exception("metrics: timing %s failed", scope.get("method"))

    def _template(self, scope: Scope) -> str:
        """The template of the route the router matched (it leaves it in the scope)."""
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        known = self._templates.get(id(route))
        if known is None:
            known = self._templates[id(route)] = (route, _full_template(scope, route))
        return known[1]


def _full_template(scope: Scope, route: object) -> str:
    """``/v1/jobs/{job_id}`` for the route of ``get_job``.

    A route's own ``path`` lacks the prefixes of the routers that include it (FastAPI
    includes routers lazily), so the app itself renders the route's path with each
    parameter as its placeholder (``url_path_for``, public API). Two routes of one
    name would render each other's: the result must end with the route's own path,
    else that path is the label (shorter, still a template).
    """
    path = getattr(route, "path", None)
    own = path if isinstance(path, str) else UNMATCHED
    name = getattr(route, "name", None)
    params = getattr(route, "param_convertors", None) or {}
    try:
        full = str(scope["app"].url_path_for(name, **{p: "{" + p + "}" for p in params}))
    except Exception:  # no app, no name, a parameter that is not a string
        return own
    return full if full.endswith(own) else own


def read_metrics_token(path: Path) -> str:
    """The metrics token kept in ``path``; ValueError naming the problem (never the
    file's content) if it is unreadable, too short, or readable by every user."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ValueError(f"cannot read the metrics token file {path}: {reason}") from None
    if info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ValueError(
            f"the metrics token file {path} is open to every user of the machine; "
            "chmod o-rw it (the Prometheus user may read it through its group)"
        )
    if len(text) < MIN_TOKEN_CHARS or any(c.isspace() for c in text):
        raise ValueError(
            f"the metrics token in {path} must be one word of at least {MIN_TOKEN_CHARS} "
            "characters (e.g. `openssl rand -hex 32 > FILE`)"
        )
    return text
