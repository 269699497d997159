"""Helpers of the security suite: settings, session seeding, database dumps and leak scanning."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.settings import Settings
from support.dbquery import DUMP, query_sync
from support.servers import ServerThread, auth, gateway_settings

# Text that must never reach a caller: a stack trace, SQL, the database engine's name or its own messages.
LEAK_PATTERNS = (
    re.compile(r"Traceback"),
    re.compile(r'File "'),
    re.compile(r"\bSELECT\b"),
    re.compile(r"\bINSERT INTO\b"),
    re.compile(r"\bUPDATE sessions\b"),
    re.compile(r"sqlite", re.IGNORECASE),
    # PostgreSQL's driver and its server's messages (the engine's name itself is in the documented 501's message)
    re.compile(r"asyncpg", re.IGNORECASE),
    re.compile(r"violates \w+ (key )?constraint|syntax error at or near|invalid input syntax|invalid byte sequence"),
    re.compile(r'\b(relation|column) "'),
    re.compile(r"\bline \d+, in\b"),
)
ERROR_STATUSES = frozenset({400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 502, 503, 504})


def security_settings(tmp: Path, downstream_url: str, **overrides: Any) -> Settings:
    """The shared test gateway settings (database at ``tmp / "gateway.db"``)."""
    return gateway_settings(tmp, downstream_url, **overrides)


@dataclass
class Gateway:
    server: ServerThread
    settings: Settings

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def db_path(self) -> str:
        """The SQLite file, or the PostgreSQL URL (``dump_db`` takes either)."""
        return self.settings.database_url.get_secret_value() or self.settings.database_path


def token_headers(role: str) -> dict[str, str]:
    """``admin``/``teacher``/``teacher2``/``student`` (fixed dev tokens) or ``anon`` (no header)."""
    return {} if role == "anon" else auth(role)


def assert_no_leak(text: str, *, sent: Iterable[str] = ()) -> None:
    """No stack trace or SQL in ``text``; echoes of what the client itself sent are removed first."""
    for value in sorted(sent, key=len, reverse=True):
        if value:
            text = text.replace(value, "").replace(json.dumps(value)[1:-1], "")
    for pattern in LEAK_PATTERNS:
        assert not pattern.search(text), f"leak ({pattern.pattern!r}) in: {text[:500]}"


def assert_error(resp: httpx.Response, status: int | Iterable[int], *, sent: Iterable[str] = ()) -> dict[str, Any]:
    """A clean error: the expected status, the JSON error envelope, no stack trace or SQL."""
    expected = {status} if isinstance(status, int) else set(status)
    assert resp.status_code in expected, f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    assert isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str), body
    assert body.get("detail") == body["error"]["message"], body  # the FastAPI-style twin of the message
    assert_no_leak(resp.text, sent=sent)
    return body


def dump_db(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of sessions and session_events, read by a connection of its own (SQLite file or PostgreSQL)."""
    return {table: query_sync(path, statement) for table, statement in DUMP.items()}


@dataclass
class Seeded:
    """Sessions owned by ``teacher`` (u-teacher) and ``teacher2`` (u-teacher2), in known states."""

    t1_active: str
    t1_ended: str
    t1_inactive: str  # open, toggled inactive by its owner: hidden from students, still the owner's to work in
    t2_active: str
    missing: str = "0" * 32

    def target(self, name: str) -> str:
        return str(getattr(self, name))


def create_session(client: httpx.Client, role: str = "teacher", **body: Any) -> str:
    resp = client.post("/sessions", json={"name": "seed", **body}, headers=auth(role))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["session_id"])


def end_session(client: httpx.Client, session_id: str, role: str = "teacher") -> None:
    resp = client.post(f"/sessions/{session_id}/end", json={"end_state": 1}, headers=auth(role))
    assert resp.status_code == 200, resp.text


def set_status(client: httpx.Client, session_id: str, status: str, role: str = "teacher") -> None:
    resp = client.patch(f"/sessions/{session_id}/status", json={"status": status}, headers=auth(role))
    assert resp.status_code == 200, resp.text


def upload_document(client: httpx.Client, session_id: str, role: str = "admin") -> None:
    text = "Photosynthesis turns light into chemical energy. Chlorophyll absorbs light. " * 5
    resp = client.post(
        "/api/documents/process-and-store",
        data={"session_id": session_id, "chunk_size": "200", "chunk_overlap": "20"},
        files=[("files", ("notes.md", text.encode(), "text/markdown"))],
        headers=auth(role),
    )
    assert resp.status_code == 200, resp.text


def seed(client: httpx.Client, *, documents: bool = False) -> Seeded:
    seeded = Seeded(
        t1_active=create_session(client, "teacher", category="seed"),
        t1_ended=create_session(client, "teacher", category="seed"),
        t1_inactive=create_session(client, "teacher", category="seed"),
        t2_active=create_session(client, "teacher2", category="seed"),
    )
    end_session(client, seeded.t1_ended)
    if documents:
        upload_document(client, seeded.t1_active)
        upload_document(client, seeded.t1_inactive)
        upload_document(client, seeded.t2_active)
    set_status(client, seeded.t1_inactive, "inactive")
    return seeded
