"""Auth-service stand-in (not product code): ``GET/PUT /users/me`` and ``PUT /users/me/password``.

Users come from fixed and generated dev tokens; their records live in memory per app and really change on a PUT
(``POST /_control/reset`` restores them), so a client's profile edits and password checks behave as against the
real auth service. Every dev user's password is ``DEV_PASSWORD`` until changed.
"""

from __future__ import annotations

import copy
import functools
import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devstack.web import ApiError, read_model

ROLES = ("admin", "teacher", "student")
ROLE_IDS = {"admin": 1, "teacher": 2, "student": 3}
DEV_PASSWORD = "dev-password"
CREATED_AT = "2025-01-06T09:00:00+00:00"
LAST_LOGIN = "2025-06-02T08:30:00+00:00"
_GENERATED = re.compile(r"dev:(admin|teacher|student):([A-Za-z0-9_-]{1,64})")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


def _user(user_id: str, username: str, role: str, first_name: str, last_name: str) -> dict[str, Any]:
    """The fields the real auth service's ``UserResponse`` has (ids here are strings, as sessions store them)."""
    return {
        "id": user_id,
        "username": username,
        "email": f"{username}@devstack.local",
        "first_name": first_name,
        "last_name": last_name,
        "role_id": ROLE_IDS[role],
        "role_name": role,
        "is_active": True,
        "created_at": CREATED_AT,
        "updated_at": CREATED_AT,
        "last_login": LAST_LOGIN,
    }


FIXED_TOKENS: dict[str, dict[str, Any]] = {
    "dev-admin-token": _user("u-admin", "admin", "admin", "Dev", "Admin"),
    "dev-teacher-token": _user("u-teacher", "teacher", "teacher", "Dev", "Teacher"),
    "dev-teacher2-token": _user("u-teacher2", "teacher2", "teacher", "Dev", "Teacher Two"),
    "dev-student-token": _user("u-student", "student", "student", "Dev", "Student"),
}


@functools.lru_cache(maxsize=8192)
def resolve_token(token: str) -> dict[str, Any] | None:
    """The initial record of the user a dev token stands for (fixed, or ``dev:<role>:<user_id>``); else ``None``.

    Shared and cached: never mutate it (``Users`` keeps the per-app copies that PUTs change)."""
    fixed = FIXED_TOKENS.get(token)
    if fixed is not None:
        return fixed
    match = _GENERATED.fullmatch(token)
    if match is None:
        return None
    role, user_id = match.groups()
    return _user(user_id, user_id, role, "Dev", f"{role.title()} {user_id}")


class ProfileUpdate(BaseModel):
    """Like the real ``UserUpdate`` for self-service: role and activation cannot be changed this way."""

    model_config = ConfigDict(extra="ignore")
    username: str | None = Field(default=None, min_length=1, max_length=100)
    email: str | None = Field(default=None, max_length=254, pattern=_EMAIL)
    first_name: str | None = Field(default=None, max_length=100)
    last_name: str | None = Field(default=None, max_length=100)


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="ignore")
    old_password: str = Field(max_length=256)
    new_password: str = Field(min_length=6, max_length=256)


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, headers=_CHALLENGE)


class Users:
    """The app's user records, each made from its token's initial record on first use."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._passwords: dict[str, str] = {}

    def reset(self) -> None:
        self._records.clear()
        self._passwords.clear()

    def _caller(self, request: Request) -> dict[str, Any]:
        header = request.headers.get("authorization")
        if not header:
            raise _unauthorized("Not authenticated")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            raise _unauthorized("Invalid authorization header")
        initial = resolve_token(token)
        if initial is None:
            raise _unauthorized("Invalid or expired token")
        return self._records.setdefault(initial["id"], copy.deepcopy(initial))

    async def me(self, request: Request) -> Response:
        return JSONResponse(self._caller(request))

    async def update_me(self, request: Request) -> Response:
        user = self._caller(request)
        body = await read_model(request, ProfileUpdate, 64 * 1024)
        changes = body.model_dump(exclude_unset=True, exclude_none=True)
        name = changes.get("username")
        if name is not None and any(u["username"] == name and u is not user for u in self._records.values()):
            raise ApiError(400, "Username already taken")
        user.update(changes, updated_at=datetime.now(UTC).isoformat())
        return JSONResponse(user)

    async def change_password(self, request: Request) -> Response:
        user = self._caller(request)
        body = await read_model(request, PasswordChange, 64 * 1024)
        if body.old_password != self._passwords.get(user["id"], DEV_PASSWORD):
            raise ApiError(400, "Incorrect current password")
        self._passwords[user["id"]] = body.new_password
        return JSONResponse({"success": True, "message": "Password changed successfully"})
