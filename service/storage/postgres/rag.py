"""``RagStore`` on PostgreSQL: the session reads before a downstream call and the one write after it."""

from __future__ import annotations

import json
from typing import Any

from service.auth import Principal
from service.errors import session_not_found
from service.sessions.models import COUNTERS
from service.storage.base import JobProgress
from service.storage.postgres.engine import Engine
from service.storage.postgres.jobs import apply_progress
from service.storage.postgres.sql import Params, insert_event, owned, require_open, unnameable, visible
from service.timeutil import now_ms


class PostgresRag:
    def __init__(self, db: Engine) -> None:
        self.db = db

    async def session_for_read(self, principal: Principal, session_id: str) -> dict[str, Any]:
        if unnameable(session_id):
            raise session_not_found(session_id)
        p = Params(session_id)
        row = await self.db.fetchrow(
            "SELECT user_id, status, metadata -> 'rag_settings' AS rag FROM sessions "  # noqa: S608
            f"WHERE session_id = $1{visible(principal, p)}",
            *p.values,
        )
        if row is None:
            raise session_not_found(session_id)
        return {"status": row["status"], "user_id": row["user_id"], "rag_settings": json.loads(row["rag"] or "{}")}

    async def session_for_change(self, principal: Principal, session_id: str, *, open_only: bool) -> dict[str, Any]:
        if unnameable(session_id):
            raise session_not_found(session_id)
        p = Params(session_id)
        row = await self.db.fetchrow(
            "SELECT session_id, status, metadata -> 'rag_settings' AS rag, metadata -> 'counters' AS counters "  # noqa: S608
            f"FROM sessions WHERE session_id = $1{owned(principal, p)}",
            *p.values,
        )
        if row is None:
            raise session_not_found(session_id)
        if open_only:
            require_open(row)
        return {
            "status": row["status"],
            "rag_settings": json.loads(row["rag"] or "null") or {},
            "counters": json.loads(row["counters"] or "null") or {},
        }

    async def record(
        self,
        session_id: str,
        event_type: str,
        data: dict[str, Any],
        *,
        add: dict[str, int] | None = None,
        assign: dict[str, int] | None = None,
        embedding_model: str | None = None,
        job: JobProgress | None = None,
    ) -> dict[str, int]:
        add, assign = add or {}, assign or {}
        ts = now_ms()
        p = Params(session_id, ts)
        expr = "metadata"
        if embedding_model is not None:
            # kept when one is stored (jsonb null counts as none, as SQLite's json_extract gives NULL for it)
            expr = (
                "jsonb_set(metadata, '{rag_settings,embedding_model}', "
                f"coalesce(nullif(metadata #> '{{rag_settings,embedding_model}}', 'null'::jsonb), "
                f"to_jsonb({p(embedding_model)}::text)))"
            )
        for name, value in (*add.items(), *assign.items()):
            if name not in COUNTERS:  # whitelist: the JSON path is part of the SQL text
                raise ValueError(f"unknown counter {name}")
            if name in add:
                new = f"coalesce((metadata #>> '{{counters,{name}}}')::bigint, 0) + {p(value)}::bigint"
            else:
                new = f"{p(value)}::bigint"
            expr = f"jsonb_set({expr}, '{{counters,{name}}}', to_jsonb({new}))"
        async with self.db.unit("write") as conn:
            if job is not None:
                await apply_progress(conn, job)  # LeaseLost here writes nothing
            # the UPDATE locks the row before the event's insert: ids follow commit order
            counters = await conn.fetchval(
                f"UPDATE sessions SET metadata = {expr}, updated_at = $2 WHERE session_id = $1 "  # noqa: S608
                "RETURNING coalesce(metadata -> 'counters', '{}'::jsonb)",
                *p.values,
            )
            if counters is None:
                raise session_not_found(session_id)  # deleted while the downstream call ran
            await insert_event(conn, session_id, event_type, ts, data)
        values = json.loads(counters)
        return {name: int(values.get(name) or 0) for name in COUNTERS}

    async def patch_rag_settings(self, principal: Principal, session_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        if unnameable(session_id):
            raise session_not_found(session_id)
        ts = now_ms()
        p = Params(session_id, json.dumps(patch), ts)
        async with self.db.unit("write") as conn:
            rag = await conn.fetchval(
                "UPDATE sessions SET metadata = jsonb_set(metadata, '{rag_settings}', "  # noqa: S608
                "json_merge_patch(coalesce(metadata -> 'rag_settings', '{}'::jsonb), $2::jsonb)), updated_at = $3 "
                f"WHERE session_id = $1{owned(principal, p)} RETURNING metadata -> 'rag_settings'",
                *p.values,
            )
            if rag is None:
                raise session_not_found(session_id)
            await insert_event(conn, session_id, "RAG_SETTINGS_UPDATED", ts, {"changes": patch})
        settings: dict[str, Any] = json.loads(rag)
        return settings
