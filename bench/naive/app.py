"""The naive async port of the legacy gateway: what the old design's analysis recommended, written plainly.

Same routes, bodies, status codes, schema and storage format as ``bench/baseline`` (the legacy design); only the
concurrency model changes (see ``README.md`` in this folder for the why of each choice):

* FastAPI with ``async def`` endpoints and an ``async def`` auth dependency: everything runs on the event loop,
  no thread pool in front of the endpoints;
* ``async with httpx.AsyncClient() as client:`` around EACH downstream call (auth and RAG): a new client, a new
  connection pool and a new TCP connection per call, closed after it;
* a NEW ``aiosqlite`` connection per request (``async with aiosqlite.connect(path)``), SQLite's default pragmas
  (rollback journal, ``synchronous=FULL``, 5 s busy timeout); aiosqlite runs each connection in a thread of
  its own, started at connect and stopped at close;
* the legacy behaviour kept as it was: events are a read-modify-write of one JSON array with no transaction
  around it, ISO text timestamps, the small TTL token cache (failures not cached), no batching, no other cache.

Nothing here is tuned and nothing is made artificially slow.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Query

# The contract shared with the baseline (schema, SQL text, request bodies, row format): constants and pure
# functions only, none of its I/O.
from bench.baseline.app import (
    AUTH_TIMEOUT_S,
    CREATE_SESSIONS_TABLE,
    DEFAULT_AUTH_CACHE_TTL_S,
    DEFAULT_DOWNSTREAM_URL,
    INSERT_SESSION,
    LIST_SESSIONS,
    LIST_SESSIONS_BY_STATUS,
    RAG_TIMEOUT_S,
    SELECT_SESSION,
    UPDATE_EVENTS,
    EventCreate,
    RagQuery,
    SessionCreate,
    now_iso,
    row_to_session,
)

DEFAULT_DATABASE_PATH = "./data/naive.db"

# httpx errors that mean "could not reach / lost the connection", as ``requests.ConnectionError`` does
UNREACHABLE = (httpx.NetworkError, httpx.RemoteProtocolError)


# --------------------------------------------------------------------------------------------- database


@asynccontextmanager
async def connect(db_path: str) -> AsyncIterator[aiosqlite.Connection]:
    """A new connection (and its thread) for one request, SQLite defaults, closed after it."""
    async with aiosqlite.connect(db_path) as db:
        db.row_factory = sqlite3.Row
        yield db


async def init_db(db_path: str) -> None:
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    async with connect(db_path) as db:
        await db.execute(CREATE_SESSIONS_TABLE)
        await db.commit()


async def fetch_session(db: aiosqlite.Connection, session_id: str) -> sqlite3.Row | None:
    async with db.execute(SELECT_SESSION, (session_id,)) as cursor:
        row: sqlite3.Row | None = await cursor.fetchone()
        return row


# --------------------------------------------------------------------------------------------- auth


class AuthCache:
    """Token -> (expiry, user) dict with a TTL, as the legacy gateway had; no lock: only the loop touches it."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, token: str) -> dict[str, Any] | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[token]
            return None
        return entry[1]

    def put(self, token: str, user: dict[str, Any]) -> None:
        self._entries[token] = (time.monotonic() + self.ttl_s, user)

    def clear(self) -> None:
        self._entries.clear()


# --------------------------------------------------------------------------------------------- app


def create_app(
    db_path: str | None = None,
    *,
    rag_service_url: str | None = None,
    auth_service_url: str | None = None,
    auth_cache_ttl_s: float | None = None,
) -> FastAPI:
    """Build the naive port; anything not passed comes from the environment (then the baseline's defaults)."""
    database_path = db_path or os.environ.get("DATABASE_PATH", DEFAULT_DATABASE_PATH)
    rag_url = (rag_service_url or os.environ.get("RAG_SERVICE_URL", DEFAULT_DOWNSTREAM_URL)).rstrip("/")
    auth_url = (auth_service_url or os.environ.get("AUTH_SERVICE_URL", DEFAULT_DOWNSTREAM_URL)).rstrip("/")
    if auth_cache_ttl_s is None:
        auth_cache_ttl_s = float(os.environ.get("AUTH_CACHE_TTL_S", DEFAULT_AUTH_CACHE_TTL_S))
    auth_cache = AuthCache(auth_cache_ttl_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await init_db(database_path)  # once, at start-up, as the old code did
        yield

    app = FastAPI(title="Naive async port of the legacy gateway (peer for benchmarks)", lifespan=lifespan)
    app.state.database_path = database_path
    app.state.rag_service_url = rag_url
    app.state.auth_service_url = auth_url
    app.state.auth_cache = auth_cache

    async def current_user(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
            raise HTTPException(status_code=401, detail="Missing or invalid Authorization header")
        cached = auth_cache.get(authorization)
        if cached is not None:
            return cached
        try:
            async with httpx.AsyncClient(timeout=AUTH_TIMEOUT_S) as client:
                response = await client.get(f"{auth_url}/users/me", headers={"Authorization": authorization})
        except httpx.TimeoutException as exc:
            raise HTTPException(status_code=504, detail="Auth service timed out") from exc
        except httpx.HTTPError as exc:
            raise HTTPException(status_code=503, detail="Auth service unavailable") from exc
        if response.status_code in (401, 403):
            raise HTTPException(status_code=401, detail="Invalid token")
        if response.status_code != 200:
            raise HTTPException(status_code=502, detail=f"Auth service answered {response.status_code}")
        try:
            user: dict[str, Any] = response.json()
        except ValueError as exc:
            raise HTTPException(status_code=502, detail="Auth service sent invalid JSON") from exc
        auth_cache.put(authorization, user)
        return user

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/sessions", status_code=201)
    async def create_session(body: SessionCreate, user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
        session_id = uuid.uuid4().hex
        now = now_iso()
        metadata = dict(body.metadata)
        metadata.update(
            {
                "name": body.name,
                "category": body.category,
                "description": body.description,
                "created_by": str(user.get("id")),
            }
        )
        events = [{"event_type": "SESSION_STARTED", "timestamp": now, "start_state": body.start_state}]
        values = (
            session_id,
            now,
            None,
            body.start_state,
            None,
            "ACTIVE",
            json.dumps(events),
            json.dumps(metadata),
            now,
            now,
        )
        async with connect(database_path) as db:
            await db.execute(INSERT_SESSION, values)
            await db.commit()
        return {
            "session_id": session_id,
            "name": body.name,
            "category": body.category,
            "description": body.description,
            "status": "ACTIVE",
            "start_time": now,
            "end_time": None,
            "start_state": body.start_state,
            "end_state": None,
            "metadata": metadata,
            "events": events,
            "created_at": now,
            "updated_at": now,
        }

    @app.get("/sessions")
    async def list_sessions(
        status: str | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
        user: dict[str, Any] = Depends(current_user),
    ) -> dict[str, Any]:
        params: tuple[Any, ...]
        if status is None:
            sql, params = LIST_SESSIONS, (limit, offset)
        else:
            sql, params = LIST_SESSIONS_BY_STATUS, (status, limit, offset)
        async with connect(database_path) as db, db.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
        return {"sessions": [row_to_session(row) for row in rows], "next_cursor": None}

    @app.get("/sessions/{session_id}")
    async def get_session(session_id: str, user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
        async with connect(database_path) as db:
            row = await fetch_session(db, session_id)
        if row is None:
            raise HTTPException(status_code=404, detail="Session not found")
        return row_to_session(row)

    @app.post("/sessions/{session_id}/events", status_code=201)
    async def add_event(
        session_id: str, body: EventCreate, user: dict[str, Any] = Depends(current_user)
    ) -> dict[str, Any]:
        # Read-modify-write of the whole JSON array, as the old code did (no transaction around it: between the
        # read and the write other requests run on the loop, so concurrent appends can still lose updates).
        async with connect(database_path) as db:
            row = await fetch_session(db, session_id)
            if row is None:
                raise HTTPException(status_code=404, detail="Session not found")
            if row["status"] != "ACTIVE":
                raise HTTPException(status_code=409, detail="Session is not active")
            events = json.loads(row["events"]) if row["events"] else []
            now = now_iso()
            event: dict[str, Any] = {"event_type": body.event_type, "timestamp": now}
            event.update({k: v for k, v in body.event_data.items() if k not in event})
            events.append(event)
            await db.execute(UPDATE_EVENTS, (json.dumps(events), now, session_id))
            await db.commit()
        return {
            "session_id": session_id,
            "event_type": body.event_type,
            "timestamp": now,
            "event_data": body.event_data,
            "event_count": len(events),
        }

    @app.post("/rag/query")
    async def rag_query(body: RagQuery, user: dict[str, Any] = Depends(current_user)) -> Any:
        async with connect(database_path) as db:  # closed before the downstream call, not held across it
            row = await fetch_session(db, body.session_id)
        if row is None:
            raise HTTPException(status_code=404, detail="Session not found")
        if row["status"] != "ACTIVE":
            raise HTTPException(status_code=409, detail="Session is not active")
        payload = body.model_dump(exclude_none=True)
        payload["collection_name"] = f"session_{body.session_id}"
        try:
            async with httpx.AsyncClient(timeout=RAG_TIMEOUT_S) as client:
                response = await client.post(f"{rag_url}/query", json=payload)
        except httpx.TimeoutException as exc:
            raise HTTPException(status_code=504, detail="RAG service timed out") from exc
        except UNREACHABLE as exc:
            raise HTTPException(status_code=503, detail="RAG service unavailable") from exc
        except httpx.HTTPError as exc:
            raise HTTPException(status_code=502, detail="RAG service request failed") from exc
        if response.status_code >= 400:
            raise HTTPException(status_code=502, detail=f"RAG service answered {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise HTTPException(status_code=502, detail="RAG service sent invalid JSON") from exc

    return app


app = create_app()
