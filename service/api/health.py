"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from service.api.endpoint import PUBLIC, Call, Endpoint


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    database: str
    schema_version: int | None


async def health(call: Call[Any, Any]) -> dict[str, Any]:
    return {"status": "ok"}


async def ready(call: Call[Any, Any]) -> Response:
    version = await call.ctx.storage.schema_version()
    ok = version == call.ctx.storage.target_schema_version
    body = {
        "status": "ready" if ok else "not_ready",
        "database": "ok" if version is not None else "unavailable",
        "schema_version": version,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


async def metrics(call: Call[Any, Any]) -> Response:
    return Response(await call.ctx.metrics.export(), media_type=call.ctx.metrics.content_type)


ENDPOINTS = [
    Endpoint("GET", "/health", health, "Liveness (no I/O)", "health", PUBLIC, response=Health),
    Endpoint(
        "GET",
        "/health/ready",
        ready,
        "Readiness: database answers, schema current",
        "health",
        PUBLIC,
        response=Ready,
        errors=(503,),
    ),
    Endpoint("GET", "/metrics", metrics, "Prometheus metrics", "health", PUBLIC, raw_response="text/plain"),
]
