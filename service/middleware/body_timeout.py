"""Each wait for the next piece of a request body is bounded.

uvicorn has no such timeout: a client that sends the headers and part of the body would hold its request, and
an in-flight slot, until it disconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RequestTimeout
from service.middleware.body_size import body_length


class BodyReadTimeoutMiddleware:
    """408 ``request_timeout`` with ``Connection: close`` when the next piece of the body takes longer than
    ``timeout_s`` (a bound on each wait, so a slow but steady body is fine)."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not ``async``, like BodySizeLimitMiddleware: no frame of its own in the request's await chain.
        if scope["type"] == "http" and body_length(scope) != 0:  # a request without a body has nothing to wait for
            receive = _timed(receive, self.timeout_s)
        return self.app(scope, receive, send)


def _timed(receive: Receive, timeout_s: float) -> Receive:
    """``receive`` that raises ``RequestTimeout`` (the app's handler answers 408) on a stalled body; once the
    body is complete, waiting (e.g. for ``http.disconnect``) has no deadline."""
    body_done = False

    async def timed() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout(timeout_s):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(
                f"request body not received within {timeout_s:g}s", headers={"Connection": "close"}
            ) from None
        body_done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return timed
