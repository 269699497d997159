"""Each middleware alone, in-process: a tiny Starlette app (or a bare ASGI callable) wrapped in one of them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.context import request_id_var
from service.errors import ApiError, error_body
from service.metrics import Metrics
from service.middleware import (
    AccessLogMiddleware,
    BodyReadTimeoutMiddleware,
    BodySizeLimitMiddleware,
    ClientDisconnectMiddleware,
    LoadSheddingMiddleware,
    RequestIdMiddleware,
    ShutdownMiddleware,
)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def app_with(middleware: Middleware, *routes: Route) -> Starlette:
    return Starlette(routes=list(routes), middleware=[middleware], exception_handlers={ApiError: api_error})


def client_for(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def http_scope(path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": method, "path": path, "headers": headers or [], "query_string": b""}


class Recorder:
    """A server's ``send``: keeps the messages the app sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        assert len(starts) <= 1, starts
        return starts[0]["status"] if starts else None

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start["headers"]}

    def json(self) -> object:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"))


async def no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


# --------------------------------------------------------------------------------------------- envelope


def test_error_body_is_the_documented_envelope() -> None:
    assert error_body("not_found", "session not found", {"session_id": "x"}) == {
        "error": {"code": "not_found", "message": "session not found", "details": {"session_id": "x"}},
        "detail": "session not found",
    }
    assert error_body("overloaded", "busy") == {
        "error": {"code": "overloaded", "message": "busy", "details": None},
        "detail": "busy",
    }


# --------------------------------------------------------------------------------------------- request id


async def test_request_id_is_set_for_the_handler_echoed_and_reset_after() -> None:
    seen: list[tuple[str, str]] = []

    async def handler(request: Request) -> Response:
        seen.append((request_id_var.get(), request.state.request_id))
        return JSONResponse({})

    async with client_for(app_with(Middleware(RequestIdMiddleware), Route("/", handler))) as client:
        sane = await client.get("/", headers={"X-Request-ID": "abc-1.2:3"})
        generated = await client.get("/")
        hostile = await client.get("/", headers={"X-Request-ID": "bad id\twith spaces"})
    assert sane.headers["x-request-id"] == "abc-1.2:3"
    assert len(generated.headers["x-request-id"]) == 32 and int(generated.headers["x-request-id"], 16) >= 0
    assert hostile.headers["x-request-id"] not in ("", "bad id\twith spaces")
    assert seen == [(r.headers["x-request-id"],) * 2 for r in (sane, generated, hostile)]
    assert request_id_var.get() == "-"


# --------------------------------------------------------------------------------------------- access log


async def test_access_log_has_one_line_per_request_without_headers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")
    metrics = Metrics()

    async def handler(request: Request) -> Response:
        return JSONResponse({}, status_code=201)

    app = Starlette(
        routes=[Route("/things/{id}", handler, methods=["POST"])],
        middleware=[Middleware(RequestIdMiddleware), Middleware(AccessLogMiddleware, metrics=metrics)],
    )
    async with client_for(app) as client:
        r = await client.post("/things/7", headers={"Authorization": "Bearer s3cret", "X-Request-ID": "rid-1"})
    assert r.status_code == 201
    [record] = [rec for rec in caplog.records if rec.name == "service.access"]
    assert (record.method, record.path, record.status, record.request_id) == ("POST", "/things/7", 201, "rid-1")  # type: ignore[attr-defined]
    assert record.duration_ms >= 0  # type: ignore[attr-defined]
    assert "s3cret" not in record.getMessage() and "s3cret" not in repr(record.__dict__)
    labels = {"method": "POST", "route": "/things/{id}", "status": "201"}
    assert metrics.registry.get_sample_value("http_requests_total", labels) == 1.0


async def test_access_log_records_an_app_that_raised_as_500(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await AccessLogMiddleware(broken, metrics=None)(http_scope("/x"), no_body, Recorder())
    assert [getattr(r, "status", None) for r in caplog.records if r.name == "service.access"] == [500]


# --------------------------------------------------------------------------------------------- disconnect


async def test_client_leaving_mid_body_is_logged_499_and_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="service.access")

    async def reads_body(request: Request) -> Response:
        await request.body()
        return JSONResponse({})

    app = Starlette(
        routes=[Route("/", reads_body, methods=["POST"])],
        middleware=[Middleware(AccessLogMiddleware, metrics=None), Middleware(ClientDisconnectMiddleware)],
    )
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"na', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    send = Recorder()
    await app(http_scope("/", "POST"), receive, send)  # Starlette's ServerErrorMiddleware saw no error: no 500
    assert send.status is None
    assert [getattr(r, "status", None) for r in caplog.records if r.name == "service.access"] == [499]


# --------------------------------------------------------------------------------------------- shutdown


async def test_request_cancelled_before_answering_gets_503_and_its_task_ends_normally() -> None:
    entered = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await asyncio.sleep(60)

    send = Recorder()

    async def request_task() -> int:
        await ShutdownMiddleware(slow)(http_scope(), no_body, send)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(request_task())
    await entered.wait()
    task.cancel()  # what uvicorn does at SHUTDOWN_TIMEOUT_S
    assert await task == 0  # finished, not cancelled: uvicorn has no 500 to write
    assert send.status == 503
    assert send.headers["connection"] == "close" and send.headers["retry-after"] == "1"
    assert send.json() == error_body("shutting_down", "server is shutting down; retry shortly")


async def test_request_cancelled_mid_response_is_not_answered_twice() -> None:
    entered = asyncio.Event()

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        entered.set()
        await asyncio.sleep(60)

    send = Recorder()
    task = asyncio.create_task(ShutdownMiddleware(streaming)(http_scope(), no_body, send))
    await entered.wait()
    task.cancel()
    await task
    assert not task.cancelled()
    assert send.status == 200 and len(send.messages) == 2


# --------------------------------------------------------------------------------------------- load shedding


async def test_past_max_in_flight_new_requests_are_shed_but_probes_are_served() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("in_flight", "requests being served", registry=registry)
    release = asyncio.Event()
    inside = asyncio.Event()

    async def slow(request: Request) -> Response:
        inside.set()
        await release.wait()
        return JSONResponse({"slow": True})

    async def fast(request: Request) -> Response:
        return JSONResponse({"ok": True})

    shedding = Middleware(LoadSheddingMiddleware, max_in_flight=1, exempt=("/health",), gauge=gauge)
    app = app_with(shedding, Route("/slow", slow), Route("/work", fast), Route("/health", fast))
    async with client_for(app) as client:
        held = asyncio.create_task(client.get("/slow"))
        await inside.wait()
        assert registry.get_sample_value("in_flight") == 1.0
        shed = await client.get("/work")
        probe = await client.get("/health")
        release.set()
        assert (await held).status_code == 200
        after = await client.get("/work")
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
    assert shed.json() == error_body("overloaded", "server is at capacity; retry shortly")
    assert probe.status_code == 200 and after.status_code == 200
    assert registry.get_sample_value("in_flight") == 0.0


# --------------------------------------------------------------------------------------------- body size


def echo_app(middleware: Middleware, calls: list[int] | None = None) -> Starlette:
    async def echo(request: Request) -> Response:
        if calls is not None:
            calls.append(1)
        return Response(await request.body())

    return app_with(middleware, Route("/", echo, methods=["POST"]), Route("/upload", echo, methods=["POST"]))


async def test_declared_oversize_is_413_before_the_app_runs() -> None:
    calls: list[int] = []
    limits = Middleware(BodySizeLimitMiddleware, limit_for=lambda path: 100 if path == "/upload" else 10)
    async with client_for(echo_app(limits, calls)) as client:
        over = await client.post("/", content=b"x" * 11)
        upload = await client.post("/upload", content=b"x" * 11)
    assert over.status_code == 413
    assert over.json() == error_body("payload_too_large", "request body exceeds 10 bytes")
    assert upload.status_code == 200 and upload.content == b"x" * 11
    assert calls == [1]  # only the upload reached the app


async def test_streamed_body_without_length_is_cut_at_the_limit() -> None:
    async def chunks(n: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"12345"

    async with client_for(echo_app(Middleware(BodySizeLimitMiddleware, limit_for=lambda path: 10))) as client:
        over = await client.post("/", content=chunks(3))
        within = await client.post("/", content=chunks(2))
    assert "content-length" not in over.request.headers
    assert over.status_code == 413 and over.json()["error"]["code"] == "payload_too_large"
    assert within.status_code == 200 and within.content == b"1234512345"


# --------------------------------------------------------------------------------------------- body read timeout


async def call_with(app: ASGIApp, receive: Callable[[], Awaitable[Message]]) -> Recorder:
    send = Recorder()
    await app(http_scope("/", "POST", [(b"content-length", b"100")]), receive, send)
    return send


async def test_stalled_body_gets_408_with_connection_close() -> None:
    app = echo_app(Middleware(BodyReadTimeoutMiddleware, timeout_s=0.05))
    sent = [{"type": "http.request", "body": b"part", "more_body": True}]

    async def stalls() -> Message:
        if sent:
            return sent.pop()
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    send = await asyncio.wait_for(call_with(app, stalls), 5)
    assert send.status == 408 and send.headers["connection"] == "close"
    assert send.json() == error_body("request_timeout", "request body not received within 0.05s")


async def test_no_deadline_once_the_body_is_complete() -> None:
    """After the body, waiting for ``http.disconnect`` is not a stalled body."""
    got: list[str] = []

    async def waits_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        got.append((await receive())["type"])
        got.append((await receive())["type"])  # longer than the timeout: must not raise

    queue: list[Message] = [{"type": "http.request", "body": b"{}", "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> Message:
        message = queue.pop(0)
        if message["type"] == "http.disconnect":
            await asyncio.sleep(0.2)
        return message

    await call_with(BodyReadTimeoutMiddleware(waits_for_disconnect, timeout_s=0.05), receive)
    assert got == ["http.request", "http.disconnect"]
