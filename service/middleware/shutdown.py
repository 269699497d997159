"""A request still running when the shutdown timeout expires answers 503, not 500."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response


class ShutdownMiddleware:
    """uvicorn cancels the requests still running when ``SHUTDOWN_TIMEOUT_S`` expires and would answer them 500
    (plus a traceback). Answer 503 ``shutting_down`` with ``Connection: close`` instead (mid-response, uvicorn
    just closes the connection) and end the cancelled task normally."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = [False]

        async def send_noting_start(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if not started[0]:
                headers = {"Retry-After": "1", "Connection": "close"}
                answer = error_response(503, "shutting_down", "server is shutting down; retry shortly", headers=headers)
                await answer(scope, receive, send)
