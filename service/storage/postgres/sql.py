"""SQL building blocks shared by the PostgreSQL stores: numbered parameters, access predicates, row helpers.

Every fragment is fixed text of this module or a ``$n`` placeholder; no value and no client-supplied name is
ever spelled into SQL.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from service.auth import Principal
from service.errors import session_not_found, session_not_open
from service.sessions.domain import OPEN_STATUSES
from service.sessions.render import dumps, event_out
from service.storage.base import Rule

SESSION_COLUMNS = (
    "session_id, user_id, start_time, end_time, start_state, end_state, current_state, status, metadata, "
    "created_at, updated_at"
)
EVENT_COLUMNS = "id, session_id, event_type, timestamp, event_data"
OPEN_SQL = "(" + ", ".join(f"'{s}'" for s in OPEN_STATUSES) + ")"  # constants, spelled into SQL


class Params:
    """Collects values in order and hands out their ``$n`` placeholders."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def unnameable(key: str) -> bool:
    """True for a key no row can have: PostgreSQL's text cannot hold NUL (every write refuses one in validation).

    Keys from a URL path are not validated: such a lookup answers "not found" without a round trip, as SQLite's
    finds nothing (sent, the NUL makes asyncpg raise CharacterNotInRepertoireError: a 500)."""
    return "\x00" in key


def visible(principal: Principal, p: Params) -> str:
    """``AND ...`` limiting ``sessions`` rows to those the caller may see (``service/sessions/access.py``)."""
    if principal.role == "admin":
        return ""
    if principal.role == "teacher":
        return f" AND user_id = {p(principal.id)}"
    # both terms, literally: they are the predicate of the partial index idx_sessions_active
    return " AND status = 'ACTIVE' AND end_time IS NULL"


def owned(principal: Principal, p: Params) -> str:
    """``AND ...`` limiting rows to those the caller may change: what an admin or teacher sees; none for students."""
    if principal.role == "student":
        return " AND false"
    return visible(principal, p)


def access(principal: Principal, p: Params, rule: Rule) -> str:
    return visible(principal, p) if rule == "see" else owned(principal, p)


async def locked_row(conn: asyncpg.Connection, principal: Principal, session_id: str) -> asyncpg.Record:
    """The session row, locked (``FOR UPDATE``) until the unit ends, if the caller may change it; 404 otherwise."""
    if unnameable(session_id):
        raise session_not_found(session_id)
    p = Params(session_id)
    row = await conn.fetchrow(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1{owned(principal, p)} FOR UPDATE",  # noqa: S608
        *p.values,
    )
    if row is None:
        raise session_not_found(session_id)
    return row


def require_open(row: asyncpg.Record) -> None:
    if row["status"] not in OPEN_STATUSES:
        raise session_not_open(row["session_id"], row["status"])


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # a JSON \u0000 escape, not an escaped backslash + "u0000"


def jsonb_text(value: Any) -> str:
    """JSON text that jsonb accepts. jsonb cannot hold NUL; text from downstream (an answer, an error message)
    may carry one: it is stored with U+FFFD in its place (SQLite keeps the NUL). Clients' own JSON never gets here
    with one: validation refuses it on both engines."""
    text = dumps(value)
    return _NUL_ESCAPE.sub(lambda m: m.group(1) + "\\ufffd", text) if "\\u0000" in text else text


async def insert_event(
    conn: asyncpg.Connection, session_id: str, event_type: str, ts: int, data: Any
) -> dict[str, Any]:
    """One event; the caller holds the session row's lock, so ids follow commit order within the session."""
    text = None if data is None else jsonb_text(data)
    event_id = await conn.fetchval(
        "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES ($1, $2, $3, $4::jsonb) "
        "RETURNING id",
        session_id,
        event_type,
        ts,
        text,
    )
    return event_out(
        {"id": event_id, "session_id": session_id, "event_type": event_type, "timestamp": ts, "event_data": text}
    )
