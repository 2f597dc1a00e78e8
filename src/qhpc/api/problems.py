"""Errors as RFC 9457 problem bodies: one mapping from qhpc's typed errors to HTTP.

Every error response of the API, including FastAPI's own validation errors,
unknown routes and the request-size guard, is ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``. Input the API cannot use is 422
throughout (validation, circuits, payloads); 400 is left to the HTTP layer
itself (e.g. an unreadable ``Content-Length``). An unexpected exception is
logged here with its traceback and answered with a 500 that carries only an
incident id, so nothing internal leaks to the caller.
"""

from __future__ import annotations

import http
import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qhpc.api.requestids import HEADER, SCOPE_KEY
from qhpc.broker import (
    BrokerError,
    IdempotencyKeyReused,
    InvalidDrain,
    NoMemberFits,
    PolicyError,
    ProgramError,
)
from qhpc.errors import QhpcError
from qhpc.logcontext import fields
from qhpc.proxy import CredentialError, NoProxy, VendorTimeout, VendorUnreachable
from qhpc.resources import (
    CircuitParseError,
    LimitExceeded,
    PayloadError,
    ResourceConfigError,
    ResourceError,
    UnknownResourceError,
    UnknownTaskError,
    UnsupportedCircuitError,
    UnsupportedPayloadError,
)
from qhpc.security import AuthError, PermissionDenied
from qhpc.store import ConflictError, NotFoundError, PurgedError, StoreError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class InvalidRequest(QhpcError):
    """A request that is well-formed JSON but asks for something impossible (HTTP 422)."""


# Looked up along the exception's MRO, so the most specific class wins
# (NotFoundError before its base StoreError, PayloadError before ResourceError).
STATUS_OF: dict[type[QhpcError], int] = {
    AuthError: 401,
    PermissionDenied: 403,
    NotFoundError: 404,
    UnknownResourceError: 404,
    UnknownTaskError: 404,
    ConflictError: 409,
    # Kept for a limited time and purged since (retention): gone for good, unlike 404.
    PurgedError: 410,
    BrokerError: 409,
    IdempotencyKeyReused: 409,
    InvalidRequest: 422,
    InvalidDrain: 422,
    LimitExceeded: 413,
    PayloadError: 422,
    CircuitParseError: 422,
    ResourceConfigError: 422,
    UnsupportedCircuitError: 422,
    UnsupportedPayloadError: 422,
    PolicyError: 422,
    ProgramError: 422,
    # A device adapter or the database failing is the service's state, not the
    # caller's mistake; 503 tells clients to retry later.
    ResourceError: 503,
    StoreError: 503,
    # The vendor proxy: no proxy for the resource; its vendor unreachable or answering
    # what is not passed on (a gateway's 502), or too slow (504); the broker's vendor
    # credential unusable (503, its detail logged only: it names the file).
    NoProxy: 404,
    VendorUnreachable: 502,
    VendorTimeout: 504,
    CredentialError: 503,
    QhpcError: 400,
}


def status_of(exc: QhpcError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


def _slug(name: str) -> str:
    base = name.removesuffix("Error") or name
    return re.sub(r"(?<!^)(?=[A-Z])", "-", base).lower()


def problem(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem response; ``kind`` names the problem type (default: the HTTP phrase)."""
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": f"urn:qhpc:problem:{kind or _slug(title.replace(' ', ''))}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def qhpc_problem(exc: QhpcError) -> JSONResponse:
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    extra: dict[str, Any] = {}
    if isinstance(exc, CircuitParseError):
        extra = {"format": exc.format, "line": exc.line, "column": exc.column}
    elif isinstance(exc, LimitExceeded):
        extra = {"limit": exc.limit, "value": exc.value}
    elif isinstance(exc, UnknownResourceError):
        extra = {"known": sorted(exc.known), "pools": sorted(exc.pools) or None}
    elif isinstance(exc, NoMemberFits):
        extra = {"pool": exc.pool, "members": exc.reasons}
    detail = str(exc)
    if status == 503:
        # Store/adapter messages may name hosts or paths; log them, answer generically.
        log.warning("service unavailable: %s", detail)
        detail = "the broker cannot reach its store or the resource right now; retry later"
    return problem(status, detail, kind=_slug(type(exc).__name__), headers=headers, **extra)


def _location(loc: list[str]) -> str:
    return ".".join(loc) or "request"


def validation_problem(errors: list[dict[str, Any]]) -> JSONResponse:
    cleaned: list[dict[str, Any]] = []
    for error in errors[:50]:
        message = str(error.get("msg", "invalid"))
        ctx = error.get("ctx") or {}
        if "error" in ctx and str(ctx["error"]) not in message:
            message = f"{message}: {ctx['error']}"
        # "input" is left out on purpose: it may echo a large body or a secret.
        cleaned.append(
            {
                "loc": [str(p) for p in error.get("loc", ())],
                "msg": message,
                "type": error.get("type"),
            }
        )
    summary = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in cleaned[:5])
    if len(cleaned) > 5:
        summary += f"; and {len(cleaned) - 5} more"
    return problem(422, summary or "invalid request", kind="validation", errors=cleaned)


async def _on_qhpc_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QhpcError)
    return qhpc_problem(exc)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(list(exc.errors()))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, str(exc.detail), headers=headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex
    # Written outside the middleware (and its log scope): the request id is in the scope.
    rid = request.scope.get(SCOPE_KEY)
    log.error(
        "unexpected error %s on %s %s", incident, request.method, request.url.path,
        exc_info=exc, extra=fields(request_id=rid),
    )  # fmt: skip
    return problem(
        500,
        f"internal error; the operators can find it in the broker log as incident {incident}",
        kind="internal",
        headers={HEADER: rid} if rid else None,
        instance=f"urn:uuid:{uuid.UUID(incident)}",
    )


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(QhpcError, _on_qhpc_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
