"""Fault injection, request counting and the ``/_control`` endpoints (devstack only, not product code).

Knobs (env defaults, runtime ``POST /_control``, per-request query string ``?latency_ms=&error_rate=&fault=``):

* ``latency_ms``: added before handling; ``error_rate``: probability of an injected 500;
* ``fault``: none | error500 | invalid_json | hang | disconnect | slow_body | status_<400..599>;
* ``fault_paths``: path prefixes (or ``fnmatch`` patterns with ``*``) the runtime knobs apply to. Without it
  they apply to every path but ``/health``, which is only faulted when a ``fault_paths`` entry names it.
  Query-string overrides are explicit and apply to any path. ``/_control`` is never faulted nor counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import random
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack.settings import DevstackSettings, validate_fault, validate_paths
from devstack.web import ApiError, read_model

MAX_COUNTED_PATHS = 10_000
OTHER_PATHS = "<other>"
RECENT_REQUESTS = 200
RECENT_QUERIES = 50
SLOW_BODY_MAX_PIECES = 64
_QUERY_KNOBS = (b"latency_ms", b"error_rate", b"fault")


def is_control(path: str) -> bool:
    return path == "/_control" or path.startswith("/_control/")


def _matches(path: str, pattern: str) -> bool:
    if "*" in pattern:
        return fnmatch.fnmatchcase(path, pattern)
    prefix = pattern.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


class Control:
    """Mutable knobs and counters; touched only from the event loop."""

    def __init__(self, settings: DevstackSettings) -> None:
        self.settings = settings
        self.inflight = 0
        self.reset()

    def reset(self) -> None:
        s = self.settings
        self.latency_ms = s.latency_ms
        self.error_rate = s.error_rate
        self.fault = s.fault
        self.fault_paths: tuple[str, ...] = s.fault_paths
        self.hang_seconds = s.hang_seconds
        self.slow_body_chunk_bytes = s.slow_body_chunk_bytes
        self.slow_body_delay_ms = s.slow_body_delay_ms
        self.rng = random.Random(s.seed)
        self.reset_counts()

    def reset_counts(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0
        self.recent: deque[dict[str, str | None]] = deque(maxlen=RECENT_REQUESTS)
        self.queries: deque[dict[str, Any]] = deque(maxlen=RECENT_QUERIES)

    def record_query(self, options: dict[str, Any]) -> None:
        """What a ``/query`` asked for (its options, not its history), for tests to check what arrived."""
        self.queries.append(options)

    def record(self, method: str, path: str, request_id: str | None) -> None:
        self.total += 1
        key = path if path in self.counts or len(self.counts) < MAX_COUNTED_PATHS else OTHER_PATHS
        self.counts[key] = self.counts.get(key, 0) + 1
        self.recent.append({"method": method, "path": path, "request_id": request_id})

    def in_scope(self, path: str) -> bool:
        health = path == "/health" or path.startswith("/health/")
        if not self.fault_paths:
            return not health
        return any(_matches(path, p) and (not health or p.startswith("/health")) for p in self.fault_paths)

    def plan(self, path: str, query_string: bytes) -> tuple[float, str]:
        """``(latency_ms, fault)`` for one request; ``ValueError`` for a bad query-string override."""
        scoped = self.in_scope(path)
        latency = self.latency_ms if scoped else 0.0
        rate = self.error_rate if scoped else 0.0
        fault = self.fault if scoped else "none"
        if query_string and any(knob in query_string for knob in _QUERY_KNOBS):
            params = parse_qs(query_string.decode("latin-1"))
            try:
                if "latency_ms" in params:
                    latency = float(params["latency_ms"][-1])
                if "error_rate" in params:
                    rate = float(params["error_rate"][-1])
            except ValueError:
                raise ValueError("latency_ms and error_rate must be numbers") from None
            if not (0 <= latency <= 3_600_000 and 0.0 <= rate <= 1.0):
                raise ValueError("latency_ms must be within 0..3600000 and error_rate within 0..1")
            if "fault" in params:
                fault = validate_fault(params["fault"][-1])
        if fault == "none" and rate > 0 and self.rng.random() < rate:
            fault = "error500"
        return latency, fault

    def snapshot(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "fault": self.fault,
            "fault_paths": list(self.fault_paths),
            "hang_seconds": self.hang_seconds,
            "slow_body_chunk_bytes": self.slow_body_chunk_bytes,
            "slow_body_delay_ms": self.slow_body_delay_ms,
            "seed": self.settings.seed,
            "counts": dict(self.counts),
            "total": self.total,
            "inflight": self.inflight,
            "recent": list(self.recent),
            "queries": list(self.queries),
        }


async def send_json(send: Send, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def wait_for_disconnect(receive: Receive, seconds: float) -> bool:
    """Consume the request until the client goes away (``True``) or ``seconds`` pass (``False``)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
            return True
    return False


class FaultMiddleware:
    """Pure ASGI middleware: counts requests, then adds latency or replaces the response with a fault."""

    def __init__(self, app: ASGIApp, control: Control) -> None:
        self.app = app
        self.control = control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or is_control(path):
            await self.app(scope, receive, send)
            return
        control = self.control
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        control.record(scope["method"], path, request_id)
        if request_id is not None:
            send = _echo_request_id(send, request_id.encode("latin-1"))
        try:
            latency_ms, fault = control.plan(path, scope.get("query_string", b""))
        except ValueError as exc:
            await send_json(send, 422, {"detail": str(exc)})
            return
        control.inflight += 1
        try:
            if latency_ms > 0:
                await asyncio.sleep(latency_ms / 1000)
            if fault == "none":
                await self.app(scope, receive, send)
            else:
                await self.inject(fault, scope, receive, send)
        finally:
            control.inflight -= 1

    async def inject(self, fault: str, scope: Scope, receive: Receive, send: Send) -> None:
        detail = {"detail": f"injected fault: {fault}"}
        if fault == "error500":
            await send_json(send, 500, detail)
        elif fault.startswith("status_"):
            status = int(fault.removeprefix("status_"))
            await send_json(send, status, detail, {"Retry-After": "1"} if status in (429, 503) else None)
        elif fault == "invalid_json":
            body = b'{"detail": "injected fault: invalid_json", "answer": "this body is cut sh'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        elif fault == "hang":
            if not await wait_for_disconnect(receive, self.control.hang_seconds):
                await send_json(send, 504, {"detail": "injected hang elapsed"})
        elif fault == "disconnect":
            # Promise 4 KiB, deliver a fragment, return: the server closes the connection mid-body.
            headers = [(b"content-type", b"application/json"), (b"content-length", b"4096")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"answer": "partial', "more_body": True})
        elif fault == "slow_body":
            await self.app(scope, receive, self._slow_send(send))
        else:  # pragma: no cover - plan() only returns validated faults
            raise AssertionError(fault)

    def _slow_send(self, send: Send) -> Send:
        delay = self.control.slow_body_delay_ms / 1000
        chunk_bytes = self.control.slow_body_chunk_bytes

        async def slow_send(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            size = max(chunk_bytes, -(-len(body) // SLOW_BODY_MAX_PIECES))
            for start in range(0, len(body), size):
                if start:
                    await asyncio.sleep(delay)
                await send({"type": "http.response.body", "body": body[start : start + size], "more_body": True})
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        return slow_send


def _echo_request_id(send: Send, request_id: bytes) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
        await send(message)

    return wrapped


class ControlUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_ms: float | None = Field(default=None, ge=0, le=3_600_000)
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    fault: str | None = None
    fault_paths: list[str] | None = Field(default=None, max_length=100)
    hang_seconds: float | None = Field(default=None, gt=0, le=86_400)
    slow_body_chunk_bytes: int | None = Field(default=None, ge=1, le=1_048_576)
    slow_body_delay_ms: float | None = Field(default=None, ge=0, le=60_000)
    reset_counts: bool = False


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clear_data: bool = False


class ControlApi:
    def __init__(
        self, control: Control, clear_data: Callable[[], int], on_reset: Callable[[], None] = lambda: None
    ) -> None:
        self.control = control
        self.clear_data = clear_data
        self.on_reset = on_reset  # e.g. the auth stand-in restores its users

    async def get(self, request: Request) -> Response:
        return JSONResponse(self.control.snapshot())

    async def update(self, request: Request) -> Response:
        body = await read_model(request, ControlUpdate, 64 * 1024)
        try:
            fault = validate_fault(body.fault) if body.fault is not None else None
            paths = validate_paths(tuple(body.fault_paths or ())) if "fault_paths" in body.model_fields_set else None
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
        control = self.control
        if fault is not None:
            control.fault = fault
        if paths is not None:
            control.fault_paths = paths
        for name in ("latency_ms", "error_rate", "hang_seconds", "slow_body_chunk_bytes", "slow_body_delay_ms"):
            value = getattr(body, name)
            if value is not None:
                setattr(control, name, value)
        if body.reset_counts:
            control.reset_counts()
        return JSONResponse(control.snapshot())

    async def reset(self, request: Request) -> Response:
        empty = request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers
        body = ResetRequest() if empty else await read_model(request, ResetRequest, 64 * 1024)
        self.control.reset()
        self.on_reset()
        cleared = self.clear_data() if body.clear_data else 0
        return JSONResponse({**self.control.snapshot(), "cleared_chunks": cleared})
