"""Pure ASGI middleware: request id, load shedding, body-size bound, body-read timeout, access log."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import request_id_var
from service.errors import PayloadTooLarge, RequestTimeout
from service.metrics import Metrics

access_log = logging.getLogger("service.access")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
EXEMPT_FROM_SHEDDING = ("/health", "/metrics")
# Longest wait for the next piece of a request body (uvicorn has no such timeout: a client that sends the headers
# and part of the body would hold its request, and an in-flight slot, until it disconnects).
BODY_READ_TIMEOUT_S = 30.0


def _json_error(status: int, code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()


class RequestContext:
    """Gives every request an id (the caller's ``X-Request-ID`` when sane), echoes it, bounds in-flight work
    and body size, and writes one access-log line per request (never the Authorization header)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        body_limit: Callable[[str], int],
        metrics: Metrics | None = None,
        body_timeout_s: float | None = BODY_READ_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.body_limit = body_limit
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if REQUEST_ID_RE.match(candidate):
                    rid = candidate
            elif name == b"content-length":
                declared = int(value) if value.isdigit() else None
        # Not a secret, only unique: a PRNG draw is ~30x cheaper than uuid4 (an os.urandom syscall).
        rid = rid or f"{random.getrandbits(128):032x}"
        token = request_id_var.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        started = time.perf_counter()
        status_holder = [500]
        response_started = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                response_started[0] = True
                message["headers"] = [*message.get("headers", []), rid_header]
            await send(message)

        path: str = scope["path"]
        try:
            if self.in_flight >= self.max_in_flight and not path.startswith(EXEMPT_FROM_SHEDDING):
                await self._reject(
                    send_wrapper,
                    503,
                    "overloaded",
                    "server is at capacity; retry shortly",
                    [(b"retry-after", b"1"), rid_header],
                )
                return
            limit = self.body_limit(path)
            if declared is not None and declared > limit:
                await self._reject(
                    send_wrapper, 413, "payload_too_large", f"request body exceeds {limit} bytes", [rid_header]
                )
                return
            self.in_flight += 1
            if self.metrics is not None:
                self.metrics.in_flight.inc()
            try:
                await self.app(scope, _bounded(receive, limit, self.body_timeout_s), send_wrapper)
            except ClientDisconnect:
                # the client left while its body was being read: nobody to answer (nginx's 499), not a server error
                if not response_started[0]:
                    status_holder[0] = 499
            except asyncio.CancelledError:
                # uvicorn cancels requests still running when SHUTDOWN_TIMEOUT_S expires and would answer them
                # 500 (plus a traceback). Answer 503 instead (mid-response, uvicorn just closes the connection)
                # and end the cancelled task normally.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                if not response_started[0]:
                    await self._reject(
                        send_wrapper,
                        503,
                        "shutting_down",
                        "server is shutting down; retry shortly",
                        [(b"retry-after", b"1"), (b"connection", b"close"), rid_header],
                    )
            finally:
                self.in_flight -= 1
                if self.metrics is not None:
                    self.metrics.in_flight.dec()
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.request_done(scope, status_holder[0], elapsed)
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status_holder[0],
                elapsed * 1000,
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": path,
                    "status": status_holder[0],
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)

    @staticmethod
    async def _reject(send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        body = _json_error(status, code, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *[h for h in headers if h[0] != b"x-request-id"],
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _bounded(receive: Receive, limit: int, timeout_s: float | None) -> Receive:
    """``receive`` that refuses a body over ``limit`` bytes (413) and a body stalled for ``timeout_s`` (408)."""
    seen = 0
    body_done = False

    async def wrapped() -> Message:
        nonlocal seen, body_done
        if body_done or timeout_s is None:
            message = await receive()  # e.g. waiting for http.disconnect after the body: no deadline
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"request body not received within {timeout_s:g}s", headers={"Connection": "close"}
                ) from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            body_done = not message.get("more_body", False)
        else:
            body_done = True
        return message

    return wrapped
