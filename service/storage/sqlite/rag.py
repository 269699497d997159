"""SQLite RAG store: each read is one hop before the downstream call, each record one hop after."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from service.auth import Principal
from service.errors import session_not_found
from service.sessions.models import COUNTERS
from service.storage.base import JobProgress
from service.storage.sqlite import access
from service.storage.sqlite.database import Database
from service.storage.sqlite.jobs import progress_sql
from service.storage.sqlite.sessions import insert_event, owned_row, require_open
from service.timeutil import now_ms


def update_counters(
    conn: sqlite3.Connection,
    session_id: str,
    ts: int,
    *,
    add: dict[str, int],
    assign: dict[str, int],
    embedding_model: str | None = None,
) -> sqlite3.Row | None:
    """Add to / assign the session's counters in one UPDATE; the new counters, or None if the row is gone.

    ``embedding_model`` (the one documents were embedded with) becomes the session's
    ``rag_settings.embedding_model`` when none is stored, as the old gateway did: later queries then search
    with the model the collection was built with."""
    expr = "metadata"
    args: list[Any] = []
    if embedding_model is not None:
        expr = (
            "json_set(metadata, '$.rag_settings.embedding_model', "
            "coalesce(json_extract(metadata, '$.rag_settings.embedding_model'), ?))"
        )
        args.append(embedding_model)
    for name, value in (*add.items(), *assign.items()):
        if name not in COUNTERS:  # whitelist: the JSON path is part of the SQL text
            raise ValueError(f"unknown counter {name}")
        if name in add:
            expr = (
                f"json_set({expr}, '$.counters.{name}', coalesce(json_extract(metadata, '$.counters.{name}'), 0) + ?)"
            )
        else:
            expr = f"json_set({expr}, '$.counters.{name}', ?)"
        args.append(value)
    row: sqlite3.Row | None = conn.execute(
        f"UPDATE sessions SET metadata = {expr}, updated_at = ? WHERE session_id = ? "  # noqa: S608 - whitelisted
        "RETURNING json_extract(metadata, '$.counters') AS counters",
        (*args, ts, session_id),
    ).fetchone()
    return row


class SqliteRag:
    """``service.storage.base.RagStore`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def session_for_read(self, principal: Principal, session_id: str) -> dict[str, Any]:
        """A visible session's status, owner and stored RAG settings; 404 when not visible.

        The status is returned, not checked: the caller decides what it allows (``Rag._open_session`` answers 409).
        """
        clause, params = access.visible(principal)
        rows = await self.db.read(
            "SELECT session_id, user_id, status, json_extract(metadata, '$.rag_settings') AS rag "  # noqa: S608
            f"FROM sessions WHERE session_id = ?{clause}",
            (session_id, *params),
        )
        if not rows:
            raise session_not_found(session_id)
        return {
            "status": rows[0]["status"],
            "user_id": rows[0]["user_id"],
            "rag_settings": json.loads(rows[0]["rag"] or "{}"),
        }

    async def session_for_change(self, principal: Principal, session_id: str, *, open_only: bool) -> dict[str, Any]:
        """Like ``session_for_read`` but the caller must be allowed to change the session (404 otherwise)."""

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            row = owned_row(conn, principal, session_id)
            if open_only:
                require_open(row)
            meta = json.loads(row["metadata"])
            return {
                "status": row["status"],
                "rag_settings": meta.get("rag_settings") or {},
                "counters": meta.get("counters") or {},
            }

        return await self.db.read_fn(run)

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
        """The action's event and its counter changes (and ``embedding_model``, see ``update_counters``), in one
        transaction (one hop). Returns the counters. ``job`` is applied first in the same transaction (an
        ingestion job's progress, so counters and progress commit together); ``LeaseLost`` there writes nothing."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            if job is not None:
                progress_sql(conn, job)
            ts = now_ms()
            row = update_counters(
                conn, session_id, ts, add=add or {}, assign=assign or {}, embedding_model=embedding_model
            )
            if row is None:
                raise session_not_found(session_id)  # deleted while the downstream call ran
            insert_event(conn, session_id, event_type, ts, data)
            counters = json.loads(row["counters"] or "{}")
            return {name: int(counters.get(name) or 0) for name in COUNTERS}

        return await self.db.write(run)

    async def patch_rag_settings(self, principal: Principal, session_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            owned_row(conn, principal, session_id)
            ts = now_ms()
            row = conn.execute(
                "UPDATE sessions SET metadata = json_set(metadata, '$.rag_settings', "
                "json_patch(coalesce(json_extract(metadata, '$.rag_settings'), '{}'), ?)), updated_at = ? "
                "WHERE session_id = ? RETURNING json_extract(metadata, '$.rag_settings') AS rag",
                (json.dumps(patch), ts, session_id),
            ).fetchone()
            insert_event(conn, session_id, "RAG_SETTINGS_UPDATED", ts, {"changes": patch})
            settings: dict[str, Any] = json.loads(row["rag"] or "{}")
            return settings

        return await self.db.write(run)
