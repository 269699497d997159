"""SPEC 5 access rules as SQL predicates, so visibility costs no extra round trip."""

from __future__ import annotations

from service.auth import Principal
from service.errors import Forbidden


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
