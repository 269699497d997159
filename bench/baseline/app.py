"""The legacy gateway design, re-created only so the new service can be measured against it.

Faithful to what the replaced system did (see ``README.md`` in this folder for the why of each choice):

* FastAPI, session endpoints and the auth dependency are plain ``def`` functions, so each one runs in
  Starlette's default worker-thread pool (anyio's default limiter: 40 threads per process);
* a NEW ``sqlite3`` connection is opened for every database operation and closed after it; no pragmas beyond
  SQLite's defaults (rollback journal, ``synchronous=FULL``), only Python's default 5 s busy timeout;
* timestamps are ISO text (``datetime.now().isoformat()``), events are one JSON array in ``sessions.events``,
  metadata is JSON text; appending an event is a read-modify-write of that array;
* downstream calls use the blocking ``requests`` module-level functions (``requests.post``,
  ``requests.get``), i.e. a fresh ``Session`` and TCP connection per call, with a timeout;
* the bearer token is resolved through the auth service, with a small TTL dict cache guarded by a ``Lock``.

Nothing here is tuned and nothing is made artificially slow.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from pydantic import BaseModel, Field

from service.storage.sqlite.ddl import LEGACY_SESSIONS_DDL

DEFAULT_DATABASE_PATH = "./data/baseline.db"
DEFAULT_DOWNSTREAM_URL = "http://127.0.0.1:8100"
DEFAULT_AUTH_CACHE_TTL_S = 30.0  # same default as the new gateway's AUTH_CACHE_TTL_S

RAG_TIMEOUT_S = 30
AUTH_TIMEOUT_S = 10

# The legacy schema, exactly (no extra indexes: only the primary key's implicit one).
CREATE_SESSIONS_TABLE = LEGACY_SESSIONS_DDL

SELECT_SESSION = "SELECT * FROM sessions WHERE session_id = ?"
INSERT_SESSION = (
    "INSERT INTO sessions (session_id, start_time, end_time, start_state, end_state, status, events, "
    "metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_EVENTS = "UPDATE sessions SET events = ?, updated_at = ? WHERE session_id = ?"
LIST_SESSIONS = "SELECT * FROM sessions ORDER BY start_time DESC LIMIT ? OFFSET ?"
LIST_SESSIONS_BY_STATUS = "SELECT * FROM sessions WHERE status = ? ORDER BY start_time DESC LIMIT ? OFFSET ?"


def now_iso() -> str:
    return datetime.now().isoformat()


# --------------------------------------------------------------------------------------------- database


def get_db(db_path: str) -> sqlite3.Connection:
    """One new connection per operation, SQLite defaults, as the old code did."""
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    return conn


def init_db(db_path: str) -> None:
    parent = Path(db_path).parent
    parent.mkdir(parents=True, exist_ok=True)
    with closing(get_db(db_path)) as conn:
        conn.execute(CREATE_SESSIONS_TABLE)
        conn.commit()


def fetch_session(db_path: str, session_id: str) -> sqlite3.Row | None:
    with closing(get_db(db_path)) as conn:
        row: sqlite3.Row | None = conn.execute(SELECT_SESSION, (session_id,)).fetchone()
        return row


def insert_session(db_path: str, values: tuple[Any, ...]) -> None:
    with closing(get_db(db_path)) as conn:
        conn.execute(INSERT_SESSION, values)
        conn.commit()


def update_events(db_path: str, session_id: str, events_json: str, updated_at: str) -> None:
    with closing(get_db(db_path)) as conn:
        conn.execute(UPDATE_EVENTS, (events_json, updated_at, session_id))
        conn.commit()


def list_session_rows(db_path: str, status: str | None, limit: int, offset: int) -> list[sqlite3.Row]:
    with closing(get_db(db_path)) as conn:
        if status is None:
            cursor = conn.execute(LIST_SESSIONS, (limit, offset))
        else:
            cursor = conn.execute(LIST_SESSIONS_BY_STATUS, (status, limit, offset))
        rows: list[sqlite3.Row] = cursor.fetchall()
        return rows


def row_to_session(row: sqlite3.Row) -> dict[str, Any]:
    metadata = json.loads(row["metadata"]) if row["metadata"] else {}
    events = json.loads(row["events"]) if row["events"] else []
    return {
        "session_id": row["session_id"],
        "name": metadata.get("name"),
        "category": metadata.get("category"),
        "description": metadata.get("description"),
        "status": row["status"],
        "start_time": row["start_time"],
        "end_time": row["end_time"],
        "start_state": row["start_state"],
        "end_state": row["end_state"],
        "metadata": metadata,
        "events": events,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


# --------------------------------------------------------------------------------------------- auth


class AuthCache:
    """Token -> (expiry, user) dict with a TTL; a Lock because endpoints run in many threads."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[token]
                return None
            return entry[1]

    def put(self, token: str, user: dict[str, Any]) -> None:
        with self._lock:
            self._entries[token] = (time.monotonic() + self.ttl_s, user)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# --------------------------------------------------------------------------------------------- bodies


class SessionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    category: str | None = None
    description: str | None = None
    start_state: int = Field(default=0, ge=0, le=8)
    metadata: dict[str, Any] = Field(default_factory=dict)


class EventCreate(BaseModel):
    event_type: str = Field(min_length=1, max_length=64)
    event_data: dict[str, Any] = Field(default_factory=dict)


class RagQuery(BaseModel):
    session_id: str
    query: str = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=100)
    use_rerank: bool = False
    min_score: float | None = None
    max_context_chars: int | None = None
    model: str | None = None
    chain_type: str | None = None
    max_tokens: int | None = None
    conversation_history: list[dict[str, Any]] | None = None


# --------------------------------------------------------------------------------------------- app


def create_app(
    db_path: str | None = None,
    *,
    rag_service_url: str | None = None,
    auth_service_url: str | None = None,
    auth_cache_ttl_s: float | None = None,
) -> FastAPI:
    """Build the baseline app; anything not passed comes from the environment (then the defaults)."""
    database_path = db_path or os.environ.get("DATABASE_PATH", DEFAULT_DATABASE_PATH)
    rag_url = (rag_service_url or os.environ.get("RAG_SERVICE_URL", DEFAULT_DOWNSTREAM_URL)).rstrip("/")
    auth_url = (auth_service_url or os.environ.get("AUTH_SERVICE_URL", DEFAULT_DOWNSTREAM_URL)).rstrip("/")
    if auth_cache_ttl_s is None:
        auth_cache_ttl_s = float(os.environ.get("AUTH_CACHE_TTL_S", DEFAULT_AUTH_CACHE_TTL_S))
    auth_cache = AuthCache(auth_cache_ttl_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        init_db(database_path)  # once, at start-up, as the old code did
        yield

    app = FastAPI(title="Legacy session gateway (baseline for benchmarks)", lifespan=lifespan)
    app.state.database_path = database_path
    app.state.rag_service_url = rag_url
    app.state.auth_service_url = auth_url
    app.state.auth_cache = auth_cache

    def current_user(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
            raise HTTPException(status_code=401, detail="Missing or invalid Authorization header")
        cached = auth_cache.get(authorization)
        if cached is not None:
            return cached
        try:
            response = requests.get(
                f"{auth_url}/users/me", headers={"Authorization": authorization}, timeout=AUTH_TIMEOUT_S
            )
        except requests.Timeout as exc:
            raise HTTPException(status_code=504, detail="Auth service timed out") from exc
        except requests.RequestException as exc:
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
    def create_session(body: SessionCreate, user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
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
        events_json = json.dumps(events)
        metadata_json = json.dumps(metadata)
        insert_session(
            database_path,
            (session_id, now, None, body.start_state, None, "ACTIVE", events_json, metadata_json, now, now),
        )
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
    def list_sessions(
        status: str | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
        user: dict[str, Any] = Depends(current_user),
    ) -> dict[str, Any]:
        rows = list_session_rows(database_path, status, limit, offset)
        return {"sessions": [row_to_session(row) for row in rows], "next_cursor": None}

    @app.get("/sessions/{session_id}")
    def get_session(session_id: str, user: dict[str, Any] = Depends(current_user)) -> dict[str, Any]:
        row = fetch_session(database_path, session_id)
        if row is None:
            raise HTTPException(status_code=404, detail="Session not found")
        return row_to_session(row)

    @app.post("/sessions/{session_id}/events", status_code=201)
    def add_event(
        session_id: str, body: EventCreate, user: dict[str, Any] = Depends(current_user)
    ) -> dict[str, Any]:
        # Read-modify-write of the whole JSON array, as the old code did (no transaction around it).
        row = fetch_session(database_path, session_id)
        if row is None:
            raise HTTPException(status_code=404, detail="Session not found")
        if row["status"] != "ACTIVE":
            raise HTTPException(status_code=409, detail="Session is not active")
        events = json.loads(row["events"]) if row["events"] else []
        now = now_iso()
        event: dict[str, Any] = {"event_type": body.event_type, "timestamp": now}
        event.update({k: v for k, v in body.event_data.items() if k not in event})
        events.append(event)
        update_events(database_path, session_id, json.dumps(events), now)
        return {
            "session_id": session_id,
            "event_type": body.event_type,
            "timestamp": now,
            "event_data": body.event_data,
            "event_count": len(events),
        }

    @app.post("/rag/query")
    def rag_query(body: RagQuery, user: dict[str, Any] = Depends(current_user)) -> Any:
        row = fetch_session(database_path, body.session_id)
        if row is None:
            raise HTTPException(status_code=404, detail="Session not found")
        if row["status"] != "ACTIVE":
            raise HTTPException(status_code=409, detail="Session is not active")
        payload = body.model_dump(exclude_none=True)
        payload["collection_name"] = f"session_{body.session_id}"
        try:
            response = requests.post(f"{rag_url}/query", json=payload, timeout=RAG_TIMEOUT_S)
        except requests.Timeout as exc:
            raise HTTPException(status_code=504, detail="RAG service timed out") from exc
        except requests.ConnectionError as exc:
            raise HTTPException(status_code=503, detail="RAG service unavailable") from exc
        except requests.RequestException as exc:
            raise HTTPException(status_code=502, detail="RAG service request failed") from exc
        if response.status_code >= 400:
            raise HTTPException(status_code=502, detail=f"RAG service answered {response.status_code}")
        try:
            return response.json()
        except ValueError as exc:
            raise HTTPException(status_code=502, detail="RAG service sent invalid JSON") from exc

    return app


app = create_app()
