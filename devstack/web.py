"""Small HTTP helpers shared by the devstack routes (dev/test only, not product code)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

M = TypeVar("M", bound=BaseModel)
MAX_ID_LENGTH = 256


class ApiError(Exception):
    """An error answered as ``{"detail": ...}`` with the given status."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


async def read_model(request: Request, model: type[M], max_bytes: int) -> M:
    """Read a bounded JSON body and validate it; 413 when too large, 422 when invalid."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body exceeds {max_bytes} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            raise ApiError(413, f"request body exceeds {max_bytes} bytes")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise ApiError(422, exc.errors(include_url=False, include_context=False, include_input=False)) from None


def path_id(request: Request, name: str = "session_id") -> str:
    value: str = request.path_params[name]
    if not value or len(value) > MAX_ID_LENGTH:
        raise ApiError(422, f"{name} must be 1..{MAX_ID_LENGTH} characters")
    return value


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error_handler(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": "internal error in devstack"}, status_code=500)
