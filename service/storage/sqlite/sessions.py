"""SQLite session store: each operation makes exactly one awaited database call (one thread hop).

Under load that hop is shared with concurrent calls (``batching.py``). The plain functions make no call of their
own: ``owned_row``, ``require_open`` and ``insert_event`` run inside one, on the connection's thread (the RAG store
uses them too); ``session_out`` / ``event_out`` (``service/sessions/render.py``) render rows.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from service.auth import Principal
from service.errors import Conflict, PayloadTooLarge, session_not_found, session_not_open
from service.sessions import rules
from service.sessions.domain import ACTIVE, OPEN_STATUSES, STATUSES, OpenStatus
from service.sessions.models import (
    COUNTERS,
    LIST_FIELDS,
    MAX_TIME_MS,
    RESERVED_METADATA_KEYS,
    TEXT_FIELDS,
    EventCreate,
    EventsQuery,
    ListQuery,
    SessionCreate,
    SessionEnd,
    SessionPatch,
    StatusUpdate,
)
from service.sessions.render import UNTRACKED, dumps, event_out, session_out
from service.storage.base import EventPage, Rule, SessionPage
from service.storage.sqlite import access
from service.storage.sqlite.database import Database
from service.timeutil import now_ms

SESSION_COLUMNS = (
    "session_id, user_id, start_time, end_time, start_state, end_state, current_state, status, metadata, "
    "created_at, updated_at"
)
EVENT_COLUMNS = "id, session_id, event_type, timestamp, event_data"


def _iso_sql(column: str) -> str:
    """SQL for ``iso(column)``: integer arithmetic, so it matches the Python rendering to the millisecond."""
    return (
        f"CASE WHEN {column} IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%S', {column} / 1000, 'unixepoch') "
        f"|| printf('.%03dZ', {column} % 1000) END"
    )


def _text_sql(key: str) -> str:
    """A stored text field, or ``''`` when unset or not text (legacy metadata may hold anything)."""
    return f"CASE json_type(metadata, '$.{key}') WHEN 'text' THEN json_extract(metadata, '$.{key}') ELSE '' END"


def _list_sql(key: str) -> str:
    return (
        f"json(CASE json_type(metadata, '$.{key}') WHEN 'array' THEN json_extract(metadata, '$.{key}') ELSE '[]' END)"
    )


_RESERVED_PATHS = ", ".join(f"'$.{k}'" for k in sorted(RESERVED_METADATA_KEYS))

# The same document as ``session_out``, built by SQLite on the reader's thread (no json.loads/dumps per row on
# the event loop; a 100-row page is one string join). tests/storage/sqlite/test_sql_rendering.py keeps the two
# identical.
SESSION_JSON = (
    "json_object("
    "'session_id', session_id, 'user_id', user_id, 'created_by', user_id, 'status', lower(status), "
    "'name', json_extract(metadata, '$.name'), 'category', json_extract(metadata, '$.category'), "
    + "".join(f"'{k}', {_text_sql(k)}, " for k in TEXT_FIELDS)
    + "".join(f"'{k}', {_list_sql(k)}, " for k in LIST_FIELDS)
    + "'is_public', json(CASE json_type(metadata, '$.is_public') WHEN 'true' THEN 'true' ELSE 'false' END), "
    "'start_state', start_state, 'current_state', current_state, 'end_state', end_state, "
    f"'start_time', {_iso_sql('start_time')}, 'start_time_ms', start_time, "
    f"'end_time', {_iso_sql('end_time')}, 'end_time_ms', end_time, 'duration_ms', end_time - start_time, "
    f"'metadata', json_remove(metadata, {_RESERVED_PATHS}), "
    "'rag_settings', json(coalesce(json_extract(metadata, '$.rag_settings'), '{}')), "
    + "".join(f"'{c}', coalesce(json_extract(metadata, '$.counters.{c}'), 0), " for c in COUNTERS)
    + "".join(f"'{k}', {v!r}, " for k, v in UNTRACKED.items())
    + f"'created_at', {_iso_sql('created_at')}, 'created_at_ms', created_at, "
    f"'updated_at', {_iso_sql('updated_at')}, 'updated_at_ms', updated_at, "
    f"'last_accessed', {_iso_sql('updated_at')})"
)
EVENT_JSON = (
    "json_object('id', id, 'session_id', session_id, 'event_type', event_type, "
    f"'timestamp', {_iso_sql('timestamp')}, 'timestamp_ms', timestamp, 'event_data', json(event_data))"
)


# -- helpers run on the writer's thread ---------------------------------------------------------------------
def insert_event(conn: sqlite3.Connection, session_id: str, event_type: str, ts: int, data: Any) -> dict[str, Any]:
    text = None if data is None else dumps(data)
    cur = conn.execute(
        "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, ?, ?, ?)",
        (session_id, event_type, ts, text),
    )
    return event_out(
        {"id": cur.lastrowid, "session_id": session_id, "event_type": event_type, "timestamp": ts, "event_data": text}
    )


def owned_row(conn: sqlite3.Connection, principal: Principal, session_id: str) -> sqlite3.Row:
    """The session row if the caller may change it; 404 otherwise, whether or not it exists (no oracle).

    Roles that may never change a session are refused by the endpoint's access declaration, before this.
    """
    clause, params = access.owned(principal)
    row: sqlite3.Row | None = conn.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?{clause}",  # noqa: S608 - fixed fragments
        (session_id, *params),
    ).fetchone()
    if row is None:
        raise session_not_found(session_id)
    return row


_OPEN_SQL = "(" + ", ".join(f"'{s}'" for s in OPEN_STATUSES) + ")"  # constants, spelled into SQL


def require_open(row: sqlite3.Row) -> None:
    """409 unless the session is open (active or inactive): its owner keeps working in an inactive one."""
    if row["status"] not in OPEN_STATUSES:
        raise session_not_open(row["session_id"], row["status"])


# -- operations ---------------------------------------------------------------------------------------------
def _percentile(conn: sqlite3.Connection, where: str, args: tuple[Any, ...], count: int, q: float) -> int | None:
    if count == 0:
        return None
    offset = rules.percentile_offset(count, q)
    row = conn.execute(
        f"SELECT end_time - start_time FROM sessions WHERE {where} "  # noqa: S608 - fixed fragments
        "ORDER BY end_time - start_time LIMIT 1 OFFSET ?",
        (*args, offset),
    ).fetchone()
    return None if row is None else int(row[0])


class SqliteSessions:
    """``service.storage.base.SessionStore`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, principal: Principal, body: SessionCreate, *, max_metadata_bytes: int) -> dict[str, Any]:
        row = rules.new_session(principal, body, max_metadata_bytes=max_metadata_bytes)
        session_id, ts = row["session_id"], row["start_time"]

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            conn.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES "  # noqa: S608 - constant columns
                "(:session_id, :user_id, :start_time, :end_time, :start_state, :end_state, :current_state, "
                ":status, :metadata, :created_at, :updated_at)",
                row,
            )
            return insert_event(conn, session_id, "SESSION_STARTED", ts, rules.started_event(body))

        event = await self.db.write(run)
        out = session_out(row)
        out["events"] = [event]
        return out

    async def get(self, principal: Principal, session_id: str, *, with_events: bool) -> str:
        """The session as a JSON document (rendered by SQLite), with its first events when asked."""
        clause, params = access.visible(principal)
        sql = f"SELECT {SESSION_JSON} FROM sessions WHERE session_id = ?{clause}"  # noqa: S608 - fixed fragments
        if not with_events:
            rows = await self.db.read(sql, (session_id, *params))
            if not rows:
                raise session_not_found(session_id)
            return str(rows[0][0])

        def run(conn: sqlite3.Connection) -> tuple[str | None, list[str]]:
            row = conn.execute(sql, (session_id, *params)).fetchone()
            if row is None:
                return None, []
            events = conn.execute(
                f"SELECT {EVENT_JSON} FROM session_events WHERE session_id = ? ORDER BY id LIMIT ?",  # noqa: S608
                (session_id, rules.INLINE_EVENTS + 1),
            ).fetchall()
            return row[0], [e[0] for e in events]

        found, events = await self.db.read_fn(run)
        if found is None:
            raise session_not_found(session_id)
        # More than fit inline: the caller pages the rest through GET /sessions/{id}/events.
        truncated = "true" if len(events) > rules.INLINE_EVENTS else "false"
        return f'{found[:-1]},"events":[{",".join(events[: rules.INLINE_EVENTS])}],"events_truncated":{truncated}}}'

    async def list(self, principal: Principal, query: ListQuery, *, after: tuple[int, str] | None) -> SessionPage:
        """A page: ``sessions_json`` is the JSON array of session documents (rendered by SQLite)."""
        clause, params = access.visible(principal)
        where = ["1 = 1" + clause]
        args: list[Any] = list(params)
        rules.check_list_filter(principal, query)
        if query.user_id is not None:
            where.append("user_id = ?")
            args.append(query.user_id)
        if query.status == ACTIVE:
            # literal, so the partial index idx_sessions_active applies
            where.append("status = 'ACTIVE' AND end_time IS NULL")
        elif query.status is not None:
            where.append("status = ?")
            args.append(query.status)
        if query.category is not None:
            where.append("json_extract(metadata, '$.category') = ?")
            args.append(query.category)
        for value, sql in ((query.started_after, "start_time >= ?"), (query.started_before, "start_time < ?")):
            if value is not None:
                where.append(sql)
                args.append(value)
        # An end_time / created_at filter is always sent as a closed range (an open side gets the widest bound):
        # the planner only prefers the column's index over the ordered start_time scan for a two-sided range.
        for column, low, high in (
            ("end_time", query.ended_after, query.ended_before),
            ("created_at", query.created_after, query.created_before),
        ):
            if low is not None or high is not None:
                where.append(f"{column} >= ? AND {column} < ?")
                args.extend((low or 0, MAX_TIME_MS + 1 if high is None else high))
        if after is not None:
            start, sid = after
            where.append("start_time <= ? AND (start_time < ? OR session_id > ?)")
            args.extend((start, start, sid))
        # ACTIVE rows only, not narrowed to one owner: the small partial index idx_sessions_active serves it (the
        # planner would otherwise pick idx_sessions_status_start). The WHERE holds its condition literally.
        active_only = query.status == ACTIVE or principal.role == "student"
        by_owner = principal.role == "teacher" or query.user_id is not None
        source = "sessions INDEXED BY idx_sessions_active" if active_only and not by_owner else "sessions"
        sql = (
            f"SELECT {SESSION_JSON}, start_time, session_id FROM {source} "  # noqa: S608 - fixed fragments
            f"WHERE {' AND '.join(where)} ORDER BY start_time DESC, session_id ASC LIMIT ?"
        )
        args.append(query.limit + 1)
        rows = await self.db.read(sql, args)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        next_key = (int(rows[-1][1]), str(rows[-1][2])) if more and rows else None
        return SessionPage(f"[{','.join(r[0] for r in rows)}]", next_key)

    async def patch(
        self, principal: Principal, session_id: str, patch: SessionPatch, *, max_metadata_bytes: int
    ) -> dict[str, Any]:
        changed = rules.check_patch(patch)
        sent = patch.model_fields_set
        expr = "metadata"
        args: list[Any] = []
        # fixed names, never from the client; null removes the key (the field renders its default again)
        for field in rules.PATCH_FIELDS:
            if field in sent:
                value = getattr(patch, field)
                if value is None:
                    expr = f"json_remove({expr}, '$.{field}')"
                elif isinstance(value, str):
                    expr = f"json_set({expr}, '$.{field}', ?)"
                    args.append(value)
                else:  # a list or a boolean: set as JSON, not as a string
                    expr = f"json_set({expr}, '$.{field}', json(?))"
                    args.append(dumps(value))
        if "metadata" in sent and patch.metadata is not None:
            expr = f"json_patch({expr}, ?)"
            args.append(dumps(patch.metadata))

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            owned_row(conn, principal, session_id)
            ts = now_ms()
            row = conn.execute(
                f"UPDATE sessions SET metadata = {expr}, updated_at = ? WHERE session_id = ? "  # noqa: S608
                f"RETURNING {SESSION_COLUMNS}",
                (*args, ts, session_id),
            ).fetchone()
            if len(row["metadata"].encode()) > max_metadata_bytes:
                raise PayloadTooLarge(f"metadata would exceed {max_metadata_bytes} bytes")
            insert_event(conn, session_id, "METADATA_UPDATED", ts, {"fields": sorted(sent), "changes": changed})
            return session_out(row)

        return await self.db.write(run)

    async def append_event(self, principal: Principal, session_id: str, body: EventCreate) -> dict[str, Any]:
        rules.check_event(body)

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            row = owned_row(conn, principal, session_id)
            require_open(row)
            ts = now_ms()
            appended = rules.appended_events(body, row["current_state"])
            events = [insert_event(conn, session_id, kind, ts, data) for kind, data in appended]
            state = row["current_state"]
            if body.state is not None:
                conn.execute(
                    "UPDATE sessions SET current_state = ?, updated_at = ? WHERE session_id = ?",
                    (body.state, ts, session_id),
                )
                state = body.state
            return {"events": events, "current_state": state}

        return await self.db.write(run)

    async def end(self, principal: Principal, session_id: str, body: SessionEnd) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            row = owned_row(conn, principal, session_id)
            if row["status"] not in OPEN_STATUSES:
                raise Conflict(
                    "session already ended", details={"session_id": session_id, "status": row["status"].lower()}
                )
            ts = max(now_ms(), row["start_time"])
            if body.end_state != row["current_state"]:
                insert_event(
                    conn, session_id, "STATE_CHANGED", ts, {"from": row["current_state"], "to": body.end_state}
                )
            updated = conn.execute(
                "UPDATE sessions SET status = ?, end_time = ?, end_state = ?, current_state = ?, updated_at = ? "  # noqa: S608
                f"WHERE session_id = ? RETURNING {SESSION_COLUMNS}",
                (body.status, ts, body.end_state, body.end_state, ts, session_id),
            ).fetchone()
            insert_event(
                conn,
                session_id,
                "SESSION_ENDED",
                ts,
                {"status": body.status, "end_state": body.end_state, "duration_ms": ts - row["start_time"]},
            )
            return session_out(updated)

        return await self.db.write(run)

    async def set_status(self, principal: Principal, session_id: str, body: StatusUpdate) -> dict[str, Any]:
        """Toggle an open session between ACTIVE and INACTIVE (the old gateway's status route), with a
        STATUS_CHANGED event when it changes; an ended session is final (409). Setting the current status again
        succeeds and records nothing."""
        new: OpenStatus = body.status

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            row = owned_row(conn, principal, session_id)
            old = row["status"]
            if old not in OPEN_STATUSES:
                raise Conflict(
                    "an ended session cannot change status", details={"session_id": session_id, "status": old.lower()}
                )
            if old != new:
                ts = now_ms()
                row = conn.execute(
                    f"UPDATE sessions SET status = ?, updated_at = ? WHERE session_id = ? "  # noqa: S608
                    f"RETURNING {SESSION_COLUMNS}",
                    (new, ts, session_id),
                ).fetchone()
                insert_event(conn, session_id, "STATUS_CHANGED", ts, {"from": old, "to": new})
            return {
                "success": True,
                "session_id": session_id,
                "new_status": new.lower(),
                "updated_session": session_out(row),
            }

        return await self.db.write(run)

    async def delete(self, principal: Principal, session_id: str) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            owned_row(conn, principal, session_id)
            events = conn.execute("SELECT count(*) FROM session_events WHERE session_id = ?", (session_id,)).fetchone()[
                0
            ]
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            return {"session_id": session_id, "deleted": True, "events_deleted": int(events)}

        return await self.db.write(run)

    async def list_events(self, principal: Principal, session_id: str, query: EventsQuery, *, after: int) -> EventPage:
        clause, params = access.visible(principal)

        def run(conn: sqlite3.Connection) -> list[sqlite3.Row] | None:
            found = conn.execute(
                f"SELECT 1 FROM sessions WHERE session_id = ?{clause}",  # noqa: S608 - fixed fragments
                (session_id, *params),
            ).fetchone()
            if found is None:
                return None
            return conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM session_events WHERE session_id = ? AND id > ? "  # noqa: S608
                "ORDER BY id LIMIT ?",
                (session_id, after, query.limit + 1),
            ).fetchall()

        rows = await self.db.read_fn(run)
        if rows is None:
            raise session_not_found(session_id)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return EventPage([event_out(r) for r in rows], int(rows[-1]["id"]) if more and rows else None)

    async def stats(self, principal: Principal) -> dict[str, Any]:
        own = principal.role != "admin"  # the endpoint admits staff only; anyone else would see just their own
        scope = "user_id = ?" if own else "1 = 1"
        scope_args: tuple[Any, ...] = (principal.id,) if own else ()

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            by_status = {
                r[0]: r[1]
                for r in conn.execute(
                    f"SELECT status, count(*) FROM sessions WHERE {scope} GROUP BY status",  # noqa: S608
                    scope_args,
                )
            }
            ended = f"{scope} AND status NOT IN {_OPEN_SQL}"
            count, avg = conn.execute(
                f"SELECT count(*), avg(end_time - start_time) FROM sessions WHERE {ended}",  # noqa: S608
                scope_args,
            ).fetchone()
            if own:
                types = conn.execute(
                    "SELECT e.event_type, count(*) FROM session_events e JOIN sessions s USING (session_id) "
                    "WHERE s.user_id = ? GROUP BY e.event_type",
                    scope_args,
                ).fetchall()
            else:
                types = conn.execute("SELECT event_type, count(*) FROM session_events GROUP BY event_type").fetchall()
            return {
                "total": sum(by_status.values()),
                "by_status": {s.lower(): by_status.get(s, 0) for s in STATUSES},
                "durations": {
                    "count": count,
                    "avg_ms": None if avg is None else float(avg),
                    "p50_ms": _percentile(conn, ended, scope_args, count, 0.5),
                    "p95_ms": _percentile(conn, ended, scope_args, count, 0.95),
                },
                "events_by_type": {r[0]: r[1] for r in types},
            }

        return await self.db.read_fn(run)

    async def require(self, principal: Principal, session_id: str, rule: Rule) -> None:
        """404 unless the caller may see (or change) the session: the answer the operation itself would give.

        Used only where a request is refused before its operation runs, so the refusal cannot reveal whether a
        session the caller may not see exists.
        """
        clause, params = access.visible(principal) if rule == "see" else access.owned(principal)
        rows = await self.db.read(
            f"SELECT 1 FROM sessions WHERE session_id = ?{clause}",  # noqa: S608 - fixed fragments
            (session_id, *params),
        )
        if not rows:
            raise session_not_found(session_id)
