"""App factory: routes as a list, middleware as a list, long-lived resources in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.api import admin, health, library, profile, rag, sessions
from service.api.endpoint import Endpoint, routes_for
from service.api.openapi import build_openapi
from service.auth import Authenticator
from service.downstream import Downstream
from service.errors import ApiError, error_response
from service.library.jobs import JobRunner
from service.metrics import Metrics, lag_probe
from service.middleware import (
    AccessLogMiddleware,
    BodyReadTimeoutMiddleware,
    BodySizeLimitMiddleware,
    ClientDisconnectMiddleware,
    LoadSheddingMiddleware,
    RequestIdMiddleware,
    ShutdownMiddleware,
)
from service.rag.operations import Rag
from service.settings import Settings, load_settings
from service.state import AppContext
from service.storage import open_storage

log = logging.getLogger("service")


class StartupError(RuntimeError):
    """The lifespan could not start: one line naming the cause, which ``python -m service serve`` prints."""

    def __init__(self, what: str, cause: BaseException) -> None:
        detail = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"{what}: {detail}")


def _database_named(settings: Settings) -> str:
    """Which database start-up tried, for its error line: never the URL itself (it may hold a password)."""
    if settings.database_url.get_secret_value():
        return "DATABASE_URL (PostgreSQL)"
    return f"DATABASE_PATH={settings.database_path}"


def all_endpoints() -> list[Endpoint]:
    return [
        *health.ENDPOINTS,
        *sessions.ENDPOINTS,
        *rag.ENDPOINTS,
        *library.ENDPOINTS,
        *profile.ENDPOINTS,
        *admin.ENDPOINTS,
    ]


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    # Logged with its traceback by the server; the caller gets no stack trace and no SQL.
    log.error("unhandled error on %s %s: %r", request.method, request.url.path, exc)
    return error_response(500, "internal_error", "internal server error")


def create_app(
    settings: Settings | None = None, *, downstream: Downstream | None = None, metrics_dir: str | None = None
) -> Starlette:
    """Build the app. ``downstream`` lets tests inject a client with a fault-injecting transport; ``metrics_dir``
    is a worker's shared multiprocess metrics directory (``service.supervisor``)."""
    settings = settings or load_settings()
    metrics = Metrics(metrics_dir)
    endpoints = all_endpoints()
    openapi = build_openapi(endpoints)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # Whatever is opened is closed again on the way out, also when a later start-up step fails: an open
        # aiosqlite connection's thread would keep the process alive after uvicorn gave up.
        async with AsyncExitStack() as opened:
            observe_db = metrics.db_op if settings.metrics_enabled else None
            try:
                storage = open_storage(
                    settings,
                    observer=observe_db,
                    batch_observer=metrics.db_batch_size if settings.metrics_enabled else None,
                )
                # SQLite migrates here; on PostgreSQL the migration is a one-off job, and a replica finding an
                # older schema starts not-ready (a newer one is refused by open either way)
                await storage.open(run_migrations=storage.migrates_on_start)
            except Exception as exc:
                raise StartupError(f"cannot open the database {_database_named(settings)}", exc) from exc
            opened.push_async_callback(storage.close)
            for line in storage.migrations_applied:
                log.info("migration: %s", line)
            if downstream is not None:
                client = downstream
            else:
                observer = metrics.downstream_call if settings.metrics_enabled else None
                try:  # loads CA certificates from disk: off the loop
                    client = await asyncio.to_thread(Downstream, settings, observer=observer)
                except Exception as exc:
                    raise StartupError("cannot build the downstream HTTP client", exc) from exc
            opened.push_async_callback(client.aclose)
            auth = Authenticator(client, ttl_s=settings.auth_cache_ttl_s, max_entries=settings.auth_cache_max_entries)
            await opened.enter_async_context(lag_probe(metrics, settings.loop_lag_interval_s))
            runner = JobRunner(
                Rag(settings, storage, client),
                poll_s=settings.ingestion_poll_interval_s,
                lease_s=settings.ingestion_lease_s,
                concurrency=settings.ingestion_concurrency,
            )
            runner.start()  # stopped before the client and database close (the stack unwinds in reverse)
            opened.push_async_callback(runner.stop)
            ctx = AppContext(
                settings=settings, storage=storage, downstream=client, auth=auth, metrics=metrics, jobs=runner
            )
            yield {"ctx": ctx}
        log.info("shutdown complete: http client closed, database checkpointed and closed")

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi)

    upload_paths = ("/api/documents/process-and-store", "/documents/process-and-store")
    upload_limit = settings.max_upload_bytes * settings.max_upload_files + 65_536

    library_paths = (library.UPLOAD_PATH, "/api" + library.UPLOAD_PATH)
    library_limit = max(settings.max_upload_bytes + 65_536, settings.max_body_bytes)

    def body_limit(path: str) -> int:
        if path in upload_paths:
            return upload_limit
        return library_limit if path in library_paths else settings.max_body_bytes

    routes: list[BaseRoute] = [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *routes_for(endpoints),
    ]
    # Outermost first. The id before anything that logs or answers; the access log around every answer below;
    # shedding before anything reads a body; the body bounds closest to the app, which reads the body.
    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(AccessLogMiddleware, metrics=metrics if settings.metrics_enabled else None),
        Middleware(ShutdownMiddleware),
        Middleware(ClientDisconnectMiddleware),
        Middleware(
            LoadSheddingMiddleware,
            max_in_flight=settings.max_in_flight,
            exempt=("/health", "/metrics"),
            gauge=metrics.in_flight_source if settings.metrics_enabled else None,
        ),
        Middleware(BodySizeLimitMiddleware, limit_for=body_limit),
        Middleware(BodyReadTimeoutMiddleware, timeout_s=settings.body_read_timeout_s),
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
