"""``SessionStore`` on PostgreSQL: each operation one short transaction (or one autocommit statement).

Documents are rendered in Python from the row (``render.session_out``): asyncpg hands ``jsonb`` over as text, so
a row costs one ``json.loads``; rendering in SQL (``jsonb_build_object``) would move that work to the server,
which replicas share, and jsonb's key order would differ from SQLite's. Read-check-write units lock what they
check: the session row ``FOR UPDATE`` (so two racing ends give one success and one 409, and a session's event
ids follow commit order), or a conditional ``UPDATE ... RETURNING``.
"""

from __future__ import annotations

import json
from typing import Any

from service.auth import Principal
from service.errors import Conflict, PayloadTooLarge, session_not_found
from service.sessions import rules
from service.sessions.domain import ACTIVE, OPEN_STATUSES, STATUSES, OpenStatus
from service.sessions.models import (
    MAX_TIME_MS,
    EventCreate,
    EventsQuery,
    ListQuery,
    SessionCreate,
    SessionEnd,
    SessionPatch,
    StatusUpdate,
)
from service.sessions.render import dumps, event_out, session_out
from service.storage.base import EventPage, Rule, SessionPage
from service.storage.postgres.engine import Engine
from service.storage.postgres.sql import (
    EVENT_COLUMNS,
    OPEN_SQL,
    SESSION_COLUMNS,
    Params,
    access,
    insert_event,
    locked_row,
    require_open,
    unnameable,
    visible,
)
from service.timeutil import now_ms


def metadata_bytes(text: str) -> int:
    """The stored metadata's size as SQLite measures it (compact JSON text): jsonb's text has spaces."""
    return len(dumps(json.loads(text)).encode())


class PostgresSessions:
    def __init__(self, db: Engine) -> None:
        self.db = db

    async def create(self, principal: Principal, body: SessionCreate, *, max_metadata_bytes: int) -> dict[str, Any]:
        row = rules.new_session(principal, body, max_metadata_bytes=max_metadata_bytes)
        session_id, ts = row["session_id"], row["start_time"]
        async with self.db.unit("write") as conn:
            await conn.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) "  # noqa: S608 - constant columns
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)",
                *(row[c.strip()] for c in SESSION_COLUMNS.split(",")),
            )
            # no other unit can see the new row before this one commits: nothing to lock
            event = await insert_event(conn, session_id, "SESSION_STARTED", ts, rules.started_event(body))
        out = session_out(row)
        out["events"] = [event]
        return out

    async def get(self, principal: Principal, session_id: str, *, with_events: bool) -> str:
        if unnameable(session_id):
            raise session_not_found(session_id)
        p = Params(session_id)
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1{visible(principal, p)}"  # noqa: S608
        if not with_events:
            row = await self.db.fetchrow(sql, *p.values)
            if row is None:
                raise session_not_found(session_id)
            return dumps(session_out(row))
        async with self.db.unit("read") as conn:  # one snapshot: the events belong to the row read
            row = await conn.fetchrow(sql, *p.values)
            if row is None:
                raise session_not_found(session_id)
            events = await conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM session_events WHERE session_id = $1 ORDER BY id LIMIT $2",  # noqa: S608
                session_id,
                rules.INLINE_EVENTS + 1,
            )
        out = session_out(row)
        out["events"] = [event_out(e) for e in events[: rules.INLINE_EVENTS]]
        out["events_truncated"] = len(events) > rules.INLINE_EVENTS
        return dumps(out)

    async def list(self, principal: Principal, query: ListQuery, *, after: tuple[int, str] | None) -> SessionPage:
        rules.check_list_filter(principal, query)
        p = Params()
        where = ["true" + visible(principal, p)]
        if query.user_id is not None:
            where.append(f"user_id = {p(query.user_id)}")
        if query.status == ACTIVE:
            where.append("status = 'ACTIVE' AND end_time IS NULL")  # literal: the partial index's predicate
        elif query.status is not None:
            where.append(f"status = {p(query.status)}")
        if query.category is not None:
            where.append(f"metadata ->> 'category' = {p(query.category)}")
        if query.started_after is not None:
            where.append(f"start_time >= {p(query.started_after)}")
        if query.started_before is not None:
            where.append(f"start_time < {p(query.started_before)}")
        for column, low, high in (
            ("end_time", query.ended_after, query.ended_before),
            ("created_at", query.created_after, query.created_before),
        ):
            if low is not None or high is not None:
                lo, hi = p(low or 0), p(MAX_TIME_MS + 1 if high is None else high)
                where.append(f"{column} >= {lo} AND {column} < {hi}")
        if after is not None:
            start, sid = p(after[0]), p(after[1])
            where.append(f"start_time <= {start} AND (start_time < {start} OR session_id > {sid})")
        limit = p(query.limit + 1)
        rows = await self.db.fetch(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)} "  # noqa: S608 - fixed fragments
            f"ORDER BY start_time DESC, session_id ASC LIMIT {limit}",
            *p.values,
        )
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        next_key = (int(rows[-1]["start_time"]), str(rows[-1]["session_id"])) if more and rows else None
        return SessionPage(dumps([session_out(r) for r in rows]), next_key)

    async def patch(
        self, principal: Principal, session_id: str, patch: SessionPatch, *, max_metadata_bytes: int
    ) -> dict[str, Any]:
        changed = rules.check_patch(patch)
        sent = patch.model_fields_set
        if unnameable(session_id):
            raise session_not_found(session_id)
        p = Params(session_id)
        expr = "metadata"
        # fixed names, never from the client; null removes the key (the field renders its default again)
        for field in rules.PATCH_FIELDS:
            if field in sent:
                value = getattr(patch, field)
                if value is None:
                    expr = f"({expr} - '{field}')"
                elif isinstance(value, str):
                    expr = f"({expr} || jsonb_build_object('{field}', {p(value)}::text))"
                else:  # a list or a boolean: set as JSON, not as a string
                    expr = f"({expr} || jsonb_build_object('{field}', {p(dumps(value))}::jsonb))"
        if "metadata" in sent and patch.metadata is not None:
            expr = f"json_merge_patch({expr}, {p(dumps(patch.metadata))}::jsonb)"
        ts = now_ms()
        stamp = p(ts)
        scope = access(principal, p, "own")
        async with self.db.unit("write") as conn:
            # the conditional UPDATE checks access and locks the row (events then follow in commit order)
            row = await conn.fetchrow(
                f"UPDATE sessions SET metadata = {expr}, updated_at = {stamp} "  # noqa: S608 - fixed fragments
                f"WHERE session_id = $1{scope} RETURNING {SESSION_COLUMNS}",
                *p.values,
            )
            if row is None:
                raise session_not_found(session_id)
            if metadata_bytes(row["metadata"]) > max_metadata_bytes:
                raise PayloadTooLarge(f"metadata would exceed {max_metadata_bytes} bytes")
            await insert_event(conn, session_id, "METADATA_UPDATED", ts, {"fields": sorted(sent), "changes": changed})
        return session_out(row)

    async def append_event(self, principal: Principal, session_id: str, body: EventCreate) -> dict[str, Any]:
        rules.check_event(body)
        async with self.db.unit("write") as conn:
            row = await locked_row(conn, principal, session_id)
            require_open(row)
            ts = now_ms()
            appended = rules.appended_events(body, row["current_state"])
            events = [await insert_event(conn, session_id, kind, ts, data) for kind, data in appended]
            state = row["current_state"]
            if body.state is not None:
                await conn.execute(
                    "UPDATE sessions SET current_state = $1, updated_at = $2 WHERE session_id = $3",
                    body.state,
                    ts,
                    session_id,
                )
                state = body.state
        return {"events": events, "current_state": state}

    async def end(self, principal: Principal, session_id: str, body: SessionEnd) -> dict[str, Any]:
        async with self.db.unit("write") as conn:
            row = await locked_row(conn, principal, session_id)  # a racing end waits here, then sees it ended
            if row["status"] not in OPEN_STATUSES:
                raise Conflict(
                    "session already ended", details={"session_id": session_id, "status": row["status"].lower()}
                )
            ts = max(now_ms(), row["start_time"])
            if body.end_state != row["current_state"]:
                await insert_event(
                    conn, session_id, "STATE_CHANGED", ts, {"from": row["current_state"], "to": body.end_state}
                )
            updated = await conn.fetchrow(
                "UPDATE sessions SET status = $1, end_time = $2, end_state = $3, current_state = $3, updated_at = $2 "  # noqa: S608
                f"WHERE session_id = $4 RETURNING {SESSION_COLUMNS}",
                body.status,
                ts,
                body.end_state,
                session_id,
            )
            await insert_event(
                conn,
                session_id,
                "SESSION_ENDED",
                ts,
                {"status": body.status, "end_state": body.end_state, "duration_ms": ts - row["start_time"]},
            )
        return session_out(updated)

    async def set_status(self, principal: Principal, session_id: str, body: StatusUpdate) -> dict[str, Any]:
        new: OpenStatus = body.status
        async with self.db.unit("write") as conn:
            row = await locked_row(conn, principal, session_id)
            old = row["status"]
            if old not in OPEN_STATUSES:
                raise Conflict(
                    "an ended session cannot change status", details={"session_id": session_id, "status": old.lower()}
                )
            if old != new:
                ts = now_ms()
                row = await conn.fetchrow(
                    f"UPDATE sessions SET status = $1, updated_at = $2 WHERE session_id = $3 "  # noqa: S608
                    f"RETURNING {SESSION_COLUMNS}",
                    new,
                    ts,
                    session_id,
                )
                await insert_event(conn, session_id, "STATUS_CHANGED", ts, {"from": old, "to": new})
        return {
            "success": True,
            "session_id": session_id,
            "new_status": new.lower(),
            "updated_session": session_out(row),
        }

    async def delete(self, principal: Principal, session_id: str) -> dict[str, Any]:
        async with self.db.unit("write") as conn:
            await locked_row(conn, principal, session_id)  # appends wait; this statement's successors see them
            events = await conn.fetchval("SELECT count(*) FROM session_events WHERE session_id = $1", session_id)
            await conn.execute("DELETE FROM sessions WHERE session_id = $1", session_id)
        return {"session_id": session_id, "deleted": True, "events_deleted": int(events)}

    async def list_events(self, principal: Principal, session_id: str, query: EventsQuery, *, after: int) -> EventPage:
        # one statement: no row when the session is not visible, one all-NULL event when it has none after `after`
        if unnameable(session_id):
            raise session_not_found(session_id)
        p = Params(session_id, after, query.limit + 1)
        rows = await self.db.fetch(
            "SELECT e.id, e.session_id, e.event_type, e.timestamp, e.event_data FROM sessions s "  # noqa: S608
            "LEFT JOIN LATERAL (SELECT id, session_id, event_type, timestamp, event_data FROM session_events "
            "WHERE session_id = s.session_id AND id > $2 ORDER BY id LIMIT $3) e ON true "
            f"WHERE s.session_id = $1{visible(principal, p)}",
            *p.values,
        )
        if not rows:
            raise session_not_found(session_id)
        events = [r for r in rows if r["id"] is not None]
        more = len(events) > query.limit
        events = events[: query.limit]
        return EventPage([event_out(r) for r in events], int(events[-1]["id"]) if more and events else None)

    async def stats(self, principal: Principal) -> dict[str, Any]:
        own = principal.role != "admin"
        p = Params()
        scope = f"user_id = {p(principal.id)}" if own else "true"
        ended = f"{scope} AND status NOT IN {OPEN_SQL}"
        async with self.db.unit("read") as conn:  # one snapshot for every figure
            by_status = {
                r[0]: int(r[1])
                for r in await conn.fetch(
                    f"SELECT status, count(*) FROM sessions WHERE {scope} GROUP BY status",  # noqa: S608
                    *p.values,
                )
            }
            count, avg = await conn.fetchrow(
                f"SELECT count(*), avg(end_time - start_time) FROM sessions WHERE {ended}",  # noqa: S608
                *p.values,
            )
            percentiles: list[int | None] = []
            for q in (0.5, 0.95):
                if count == 0:
                    percentiles.append(None)
                    continue
                offset = Params(*p.values)
                value = await conn.fetchval(
                    f"SELECT end_time - start_time FROM sessions WHERE {ended} "  # noqa: S608 - fixed fragments
                    f"ORDER BY end_time - start_time LIMIT 1 OFFSET {offset(rules.percentile_offset(count, q))}",
                    *offset.values,
                )
                percentiles.append(None if value is None else int(value))
            if own:
                types = await conn.fetch(
                    "SELECT e.event_type, count(*) FROM session_events e JOIN sessions s USING (session_id) "
                    "WHERE s.user_id = $1 GROUP BY e.event_type",
                    principal.id,
                )
            else:
                types = await conn.fetch("SELECT event_type, count(*) FROM session_events GROUP BY event_type")
        return {
            "total": sum(by_status.values()),
            "by_status": {s.lower(): by_status.get(s, 0) for s in STATUSES},
            "durations": {
                "count": int(count),
                # avg() of bigints is numeric (a Decimal): the API's float, as SQLite's avg() gives
                "avg_ms": None if avg is None else float(avg),
                "p50_ms": percentiles[0],
                "p95_ms": percentiles[1],
            },
            "events_by_type": {r[0]: int(r[1]) for r in types},
        }

    async def require(self, principal: Principal, session_id: str, rule: Rule) -> None:
        if unnameable(session_id):
            raise session_not_found(session_id)
        p = Params(session_id)
        found = await self.db.fetchval(
            f"SELECT 1 FROM sessions WHERE session_id = $1{access(principal, p, rule)}",  # noqa: S608
            *p.values,
        )
        if found is None:
            raise session_not_found(session_id)
