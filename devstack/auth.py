"""Auth-service stand-in: ``GET /users/me`` for fixed and generated dev tokens (not product code)."""

from __future__ import annotations

import functools
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

ROLES = ("admin", "teacher", "student")
_GENERATED = re.compile(r"dev:(admin|teacher|student):([A-Za-z0-9_-]{1,64})")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _user(user_id: str, username: str, role: str, full_name: str) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": username,
        "email": f"{username}@devstack.local",
        "role_name": role,
        "full_name": full_name,
        "is_active": True,
    }


FIXED_TOKENS: dict[str, dict[str, Any]] = {
    "dev-admin-token": _user("u-admin", "admin", "admin", "Dev Admin"),
    "dev-teacher-token": _user("u-teacher", "teacher", "teacher", "Dev Teacher"),
    "dev-teacher2-token": _user("u-teacher2", "teacher2", "teacher", "Dev Teacher Two"),
    "dev-student-token": _user("u-student", "student", "student", "Dev Student"),
}


@functools.lru_cache(maxsize=8192)
def resolve_token(token: str) -> dict[str, Any] | None:
    """The user a dev token stands for: a fixed token, or ``dev:<role>:<user_id>``; else ``None``."""
    fixed = FIXED_TOKENS.get(token)
    if fixed is not None:
        return fixed
    match = _GENERATED.fullmatch(token)
    if match is None:
        return None
    role, user_id = match.groups()
    return _user(user_id, user_id, role, f"Dev {role.title()} {user_id}")


def _unauthorized(detail: str) -> Response:
    return JSONResponse({"detail": detail}, status_code=401, headers=_CHALLENGE)


async def users_me(request: Request) -> Response:
    header = request.headers.get("authorization")
    if not header:
        return _unauthorized("Not authenticated")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 512:
        return _unauthorized("Invalid authorization header")
    user = resolve_token(token)
    if user is None:
        return _unauthorized("Invalid or expired token")
    return JSONResponse(user)
