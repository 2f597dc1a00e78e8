"""X-Request-ID: one id per request, in every log record it causes and in its answer.

A client (or a proxy in front of the broker) may name its request with an
``X-Request-ID`` header, so that its own logs and the broker's meet; the id is taken
only if it is short and plain (``[A-Za-z0-9._-]{1,64}``), since it goes into every
record of the request: anything longer or stranger (a newline, a quote, a token-sized
string) is replaced by a fresh id, never echoed. The id goes back in the answer's
``X-Request-ID`` header either way.

Pure ASGI, outermost of qhpc's middleware, so that the body guard's 408/413 carry the
id too; the 500 answer of an unexpected error is written outside all middleware, so
the id also rides in the ASGI scope (:data:`SCOPE_KEY`) for that handler.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qhpc.logcontext import log_scope

HEADER = "X-Request-ID"
#: where the request's id is kept in the ASGI scope
SCOPE_KEY = "qhpc.request_id"
_ACCEPTED = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_NAME = HEADER.lower().encode()


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's id if its first ``X-Request-ID`` header is acceptable, else a new one."""
    for key, value in headers:
        if key == _NAME:
            if _ACCEPTED.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class RequestIds:
    """Pure ASGI middleware: a log scope with the request's id, echoed in the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope.get("headers", []))
        scope[SCOPE_KEY] = rid
        header = (_NAME, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        with log_scope(request_id=rid):
            await self.app(scope, receive, send_with_id)
