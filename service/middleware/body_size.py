"""Request bodies are bounded: by their declared ``Content-Length`` up front, and as they stream in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge


def body_length(scope: Scope) -> int | None:
    """The body's length when the server frames it (``Content-Length``; no header and no ``Transfer-Encoding``
    means none), else ``None`` (chunked, or a length that is not a number): only then must bytes be counted."""
    declared: int | None = 0
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            return None
    return declared


class BodySizeLimitMiddleware:
    """413 ``payload_too_large`` for a body over ``limit_for(path)`` bytes: at once when the declared length is
    over it (the body is never read), else when the bytes received pass it (chunked bodies declare nothing)."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not ``async``: all the work is at request start, so hand on the inner app's coroutine and add no
        # frame that every suspension of the request would have to pass through.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        limit = self.limit_for(scope["path"])
        length = body_length(scope)
        if length is None:
            receive = _bounded(receive, limit)
        elif length > limit:
            return PayloadTooLarge(too_large(limit)).response()(scope, receive, send)
        # else the server delivers at most ``length`` bytes: nothing to count
        return self.app(scope, receive, send)


def too_large(limit: int) -> str:
    return f"request body exceeds {limit} bytes"


def _bounded(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``PayloadTooLarge`` (the app's handler answers 413) past ``limit`` bytes."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(too_large(limit))
        return message

    return bounded
