"""A request-body guard in front of the whole app: size and time.

Size is checked twice on purpose: a declared ``Content-Length`` over the limit is
refused before a byte is read, and the bytes actually received are counted while
reading, so a chunked upload or a lying header cannot push more than the limit into
memory. Time: the whole body must arrive within ``timeout`` seconds, or the request
is answered 408 (uvicorn has no such timeout; without it a client that sends half a
body and stalls would hold its connection forever). Both refusals close the
connection (``Connection: close``), since the rest of the body is never read.

Pure ASGI (not ``BaseHTTPMiddleware``): the body is read here, in the event loop,
before any handler thread is taken, so a slow client costs a socket, not a worker.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qhpc.api.problems import problem

#: seconds a client may take to send a whole request body
DEFAULT_BODY_TIMEOUT = 30.0
_CLOSE = {"Connection": "close"}


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes``, 408 for slower than
    ``timeout`` seconds."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"the body timeout must be positive, got {timeout}")
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await problem(400, "Content-Length is not a number")(scope, receive, send)
                    return
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send, f"{declared} bytes declared")
            return
        # Buffer the body (the app would read it whole anyway) so the count is exact.
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    # Client went away before finishing its body: nothing to answer.
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    await self._too_large(
                        scope, receive, send, f"more than {self.max_bytes} bytes sent"
                    )
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            response = problem(
                408,
                f"the request body did not arrive within {self.timeout:g} s",
                kind="request-timeout",
                headers=_CLOSE,
            )
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        response = problem(
            413,
            f"request body too large: {what}; the limit is {self.max_bytes} bytes",
            kind="body-too-large",
            headers=_CLOSE,
        )
        await response(scope, receive, send)
