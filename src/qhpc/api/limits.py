"""A request-body size guard in front of the whole app.

Checked twice on purpose: a declared ``Content-Length`` over the limit is refused
before a byte is read, and the bytes actually received are counted while reading,
so a chunked upload or a lying header cannot push more than the limit into memory.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qhpc.api.problems import problem


class BodyLimit:
    """Pure ASGI middleware: 413 problem body for requests larger than ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        )
        await response(scope, receive, send)
