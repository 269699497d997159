"""The caller's profile (SPEC 3): read from, and changed through, the auth service (``/users/me``)."""

from __future__ import annotations

from typing import Any

from service.api.endpoint import ANY_ROLE, Call, Endpoint
from service.downstream.client import Reply
from service.errors import (
    ApiError,
    BadGateway,
    BadRequest,
    Conflict,
    Unauthorized,
    ValidationFailed,
)
from service.rag.models import PasswordChange, PasswordChanged, Profile, ProfileUpdate

# The auth service's refusals the caller can act on: passed through with its own status and message. Any other
# non-2xx (a 403 or 404 for a token that has just resolved to this very user is not a sane answer) is a 502.
PASSED_THROUGH: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    409: Conflict,
    422: ValidationFailed,
}


async def profile(call: Call[Any, Any]) -> dict[str, Any]:
    return {**call.principal.profile, "role_name": call.principal.role}


async def _change(call: Call[Any, Any], path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
    """PUT the change to the auth service as the caller, map its refusal, and forget the cached principal so the
    next request (``GET /profile`` included) sees the change."""
    header = call.request.headers.get("authorization")
    reply = await call.ctx.downstream.call(
        "auth",
        "PUT",
        path,
        json_body=body,
        headers={"Authorization": header or ""},
        idempotent=idempotent,
        ok_statuses=frozenset(PASSED_THROUGH),
    )
    call.ctx.auth.forget(header)
    if reply.status in PASSED_THROUGH:
        raise refusal(reply)
    if not isinstance(reply.body, dict):
        raise BadGateway("auth service gave an unusable answer", details={"service": "auth"})
    return reply.body


def refusal(reply: Reply) -> ApiError:
    """The auth service's 4xx as ours: its ``detail`` string is the message (FastAPI's shape), else a generic one."""
    detail = reply.body.get("detail") if isinstance(reply.body, dict) else None
    message = detail if isinstance(detail, str) and detail else f"the auth service refused the change ({reply.status})"
    error = PASSED_THROUGH[reply.status](message[:500], details=None if isinstance(detail, str) else detail)
    if reply.status == 401:
        error.headers["WWW-Authenticate"] = "Bearer"
    return error


async def update_profile(call: Call[ProfileUpdate, Any]) -> dict[str, Any]:
    fields = call.body.model_dump(exclude_unset=True)
    if not fields or any(v is None for v in fields.values()):
        raise ValidationFailed("send one or more of username, email, first_name, last_name (strings, not null)")
    user = await _change(call, "/users/me", fields, idempotent=True)
    return {**user, "role_name": user.get("role_name", call.principal.role)}


async def change_password(call: Call[PasswordChange, Any]) -> dict[str, Any]:
    # Not retried once sent: a repeat after a success would meet the new password and answer "incorrect".
    return await _change(call, "/users/me/password", call.body.model_dump(), idempotent=False)


TAG = "auth"
ENDPOINTS = [
    Endpoint("GET", "/profile", profile, "The caller's profile from the auth service", TAG, ANY_ROLE, response=Profile),
    Endpoint(
        "PUT",
        "/profile",
        update_profile,
        "Change the caller's own profile (passed to the auth service)",
        TAG,
        ANY_ROLE,
        body=ProfileUpdate,
        response=Profile,
        errors=(400, 401, 409, 422, 502, 503, 504),
    ),
    Endpoint(
        "PUT",
        "/profile/change-password",
        change_password,
        "Change the caller's own password (the auth service checks the old one)",
        TAG,
        ANY_ROLE,
        body=PasswordChange,
        response=PasswordChanged,
        errors=(400, 401, 409, 422, 502, 503, 504),
    ),
]
