"""One access-log line and the request metrics per request.

Both need the same two facts (the status the client got, the time it took), so one ``send`` wrapper feeds both.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import request_id_var
from service.metrics import Metrics

access_log = logging.getLogger("service.access")
# Scope key through which an inner middleware says which status to record for a request that sent no answer
# (the way the router reports the matched route in ``scope["route"]``); without it such a request is a 500.
UNANSWERED_STATUS = "service.unanswered_status"


class AccessLogMiddleware:
    """Records method, path, status and duration, with the request id; never a header (no Authorization)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = [0]

        async def send_recording_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            elapsed = time.perf_counter() - started
            status: int = sent[0] or scope.get(UNANSWERED_STATUS, 500)
            if self.metrics is not None:
                self.metrics.request_done(scope, status, elapsed)
            method, path = scope["method"], scope["path"]
            access_log.info(
                "%s %s %d %.1fms",
                method,
                path,
                status,
                elapsed * 1000,
                extra={
                    "request_id": request_id_var.get(),
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
