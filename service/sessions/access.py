"""SPEC 5 access rules as SQL predicates, so visibility costs no extra round trip."""

from __future__ import annotations

from service.auth import Principal
from service.db import Database
from service.errors import ApiError, Forbidden, session_not_found


def visible(principal: Principal) -> tuple[str, tuple[str, ...]]:
    """``AND ...`` clause limiting ``sessions`` rows to those the caller may see."""
    if principal.role == "admin":
        return "", ()
    if principal.role == "teacher":
        return " AND user_id = ?", (principal.id,)
    # both terms, literally: they are the condition of the partial index idx_sessions_active
    return " AND status = 'ACTIVE' AND end_time IS NULL", ()


def can_modify(principal: Principal, owner_id: str) -> bool:
    return principal.role == "admin" or (principal.role == "teacher" and principal.id == owner_id)


def require_creator(principal: Principal) -> None:
    if principal.role == "student":
        raise Forbidden("students cannot create sessions")


async def refusal(db: Database, principal: Principal, session_id: str) -> ApiError:
    """403 when the caller can see the session but not change it, 404 otherwise (no existence oracle)."""
    clause, params = visible(principal)
    rows = await db.read(
        "SELECT 1 FROM sessions WHERE session_id = ?" + clause,  # noqa: S608 - fixed fragments only
        (session_id, *params),
    )
    if rows:
        return Forbidden("your role may not change this session")
    return session_not_found(session_id)
