"""App factory: routes as a list, middleware as a list, long-lived resources in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.api import admin, health, rag, sessions
from service.api.endpoint import Endpoint, routes_for
from service.api.openapi import build_openapi
from service.auth import Authenticator
from service.db import Database
from service.downstream import Downstream
from service.errors import ApiError
from service.metrics import Metrics, lag_probe
from service.middleware import RequestContext
from service.settings import Settings, load_settings
from service.state import AppContext

log = logging.getLogger("service")


def all_endpoints() -> list[Endpoint]:
    return [*health.ENDPOINTS, *sessions.ENDPOINTS, *rag.ENDPOINTS, *admin.ENDPOINTS]


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail), "details": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    # Logged with its traceback by the server; the caller gets no stack trace and no SQL.
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    body = {"error": {"code": "internal_error", "message": "internal server error", "details": None}}
    return JSONResponse(body, status_code=500)


def create_app(settings: Settings | None = None, *, downstream: Downstream | None = None) -> Starlette:
    """Build the app. ``downstream`` lets tests inject a client with a fault-injecting transport."""
    settings = settings or load_settings()
    metrics = Metrics()
    endpoints = all_endpoints()
    openapi = build_openapi(endpoints)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        db = Database(
            settings.database_path,
            read_connections=settings.db_read_connections,
            cache_size_kib=settings.db_cache_size_kib,
            busy_timeout_ms=settings.db_busy_timeout_ms,
            synchronous=settings.db_synchronous,
            observer=metrics.db_op if settings.metrics_enabled else None,
        )
        await db.open()
        for line in db.migrations_applied:
            log.info("migration: %s", line)
        # Building the client loads CA certificates from disk: do it off the loop.
        if downstream is not None:
            client = downstream
        else:
            observer = metrics.downstream_call if settings.metrics_enabled else None
            client = await asyncio.to_thread(Downstream, settings, observer=observer)
        try:
            auth = Authenticator(client, ttl_s=settings.auth_cache_ttl_s, max_entries=settings.auth_cache_max_entries)
            async with lag_probe(metrics, settings.loop_lag_interval_s):
                yield {"ctx": AppContext(settings=settings, db=db, downstream=client, auth=auth, metrics=metrics)}
        finally:
            await client.aclose()
            await db.close()
            log.info("shutdown complete: http client closed, database checkpointed and closed")

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    upload_paths = ("/api/documents/process-and-store", "/documents/process-and-store")
    upload_limit = settings.max_upload_bytes * settings.max_upload_files + 65_536

    def body_limit(path: str) -> int:
        return upload_limit if path in upload_paths else settings.max_body_bytes

    routes: list[BaseRoute] = [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *routes_for(endpoints),
    ]
    middleware = [
        Middleware(
            RequestContext,
            max_in_flight=settings.max_in_flight,
            body_limit=body_limit,
            body_timeout_s=settings.body_read_timeout_s,
            metrics=metrics if settings.metrics_enabled else None,
        ),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    return app
