"""Row-level access (SPEC 5) as SQLite predicates, so a session check costs no extra round trip.

Which roles may call a route is declared on its endpoint (``service.api.endpoint.Access``) and checked before
the request is parsed; these clauses decide which ``sessions`` rows a caller may see or change, inside the
operation's own statement (a session the caller may not see answers exactly like a missing one).
"""

from __future__ import annotations

from service.auth import Principal


def visible(principal: Principal) -> tuple[str, tuple[str, ...]]:
    """``AND ...`` clause limiting ``sessions`` rows to those the caller may see."""
    if principal.role == "admin":
        return "", ()
    if principal.role == "teacher":
        return " AND user_id = ?", (principal.id,)
    # both terms, literally: they are the condition of the partial index idx_sessions_active
    return " AND status = 'ACTIVE' AND end_time IS NULL", ()


def owned(principal: Principal) -> tuple[str, tuple[str, ...]]:
    """``AND ...`` clause limiting ``sessions`` rows to those the caller may change: what an admin or a teacher
    may see (any, their own); nothing for a student."""
    if principal.role == "student":
        return " AND 0", ()
    return visible(principal)
