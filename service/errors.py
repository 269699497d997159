"""The error vocabulary of the API: every failure the caller can see is one of these."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one place the error envelope is shaped: every error answer of the API (exception handlers and
    middlewares alike) is built here, so a change to it is one edit.

    ``detail`` repeats the message at the top level because clients written for the FastAPI gateway this
    replaces (the EBARS web frontend) read ``detail``; ``error`` carries the code and details beside it."""
    return {"error": {"code": code, "message": message, "details": details}, "detail": message}


def error_response(
    status: int, code: str, message: str, *, details: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The envelope as a response; a response is an ASGI app too, so middlewares answer with it as well."""
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, details=self.details, headers=self.headers or None)


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"


class BadGateway(ApiError):
    status, code = 502, "bad_gateway"


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"


class GatewayTimeout(ApiError):
    status, code = 504, "gateway_timeout"


def session_not_found(session_id: str) -> NotFound:
    # Same answer whether the id does not exist or belongs to someone else: no existence oracle.
    return NotFound("session not found", details={"session_id": session_id})


def session_not_open(session_id: str, status: str) -> Conflict:
    # One wording for every action that needs an open (active or inactive) session: events, RAG queries, uploads.
    status = status.lower()  # as the API renders statuses
    return Conflict(f"session is {status}, not open", details={"session_id": session_id, "status": status})
