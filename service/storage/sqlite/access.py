"""Row-level access (SPEC 5) as SQL predicates, so a session check costs no extra round trip.

Which roles may call a route is declared on its endpoint (``service.api.endpoint.Access``) and checked before
the request is parsed; this module decides which sessions a caller may see or change.
"""

from __future__ import annotations

from typing import Literal

from service.auth import Principal
from service.storage.sqlite import Database
from service.errors import session_not_found


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


async def require_session(db: Database, principal: Principal, session_id: str, rule: Literal["see", "own"]) -> None:
    """404 unless the caller may see (or change) the session: the answer the operation itself would give.

    Used only where a request is refused before its operation runs, so the refusal cannot reveal whether a
    session the caller may not see exists.
    """
    clause, params = visible(principal) if rule == "see" else owned(principal)
    rows = await db.read(
        f"SELECT 1 FROM sessions WHERE session_id = ?{clause}",  # noqa: S608 - fixed fragments
        (session_id, *params),
    )
    if not rows:
        raise session_not_found(session_id)
