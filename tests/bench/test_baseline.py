"""The benchmark baseline (legacy design) serves the same API subset and writes the legacy storage format.

Everything runs on 127.0.0.1: the baseline under uvicorn in a thread, a tiny fake downstream (auth + RAG)
in another, and one test starts ``python -m bench.baseline`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import bench.baseline.app as baseline_app
from bench.baseline.app import create_app
from bench.baseline.seed import seed_sessions
from support.ports import closed_port_url, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "Bearer good-token"
AUTH = {"Authorization": TOKEN}
LEGACY_COLUMNS = [
    ("session_id", "TEXT", 1),
    ("start_time", "TEXT", 0),
    ("end_time", "TEXT", 0),
    ("start_state", "INTEGER", 0),
    ("end_state", "INTEGER", 0),
    ("status", "TEXT", 0),
    ("events", "TEXT", 0),
    ("metadata", "TEXT", 0),
    ("created_at", "TEXT", 0),
    ("updated_at", "TEXT", 0),
]


# ------------------------------------------------------------------------------------------- servers


@contextmanager
def serve(app: Any, *, lifespan: Literal["auto", "on", "off"] = "on") -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, ws="none", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive()


class FakeDownstream:
    """Auth (`GET /users/me`) and RAG (`POST /query`) in one small Starlette app, recording calls."""

    def __init__(self) -> None:
        self.auth_calls: dict[str, int] = {}
        self.queries: list[dict[str, Any]] = []
        self.query_status = 200
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/users/me", self.users_me),
                Route("/query", self.query, methods=["POST"]),
            ]
        )

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def users_me(self, request: Request) -> JSONResponse:
        header = request.headers.get("authorization", "")
        self.auth_calls[header] = self.auth_calls.get(header, 0) + 1
        if not header.startswith("Bearer good"):
            return JSONResponse({"detail": "bad token"}, status_code=401)
        return JSONResponse({"id": 7, "username": "teacher1", "email": "t@example.org", "role_name": "teacher"})

    async def query(self, request: Request) -> JSONResponse:
        payload = await request.json()
        self.queries.append(payload)
        await asyncio.sleep(0)
        if self.query_status != 200:
            return JSONResponse({"detail": "boom"}, status_code=self.query_status)
        return JSONResponse(
            {"answer": f"echo: {payload['query']}", "sources": [{"chunk_text": "c1"}], "chain_type": "stuff"}
        )


def dead_url() -> str:
    """A 127.0.0.1 URL nothing listens on."""
    return closed_port_url()


@pytest.fixture(scope="module")
def downstream() -> Iterator[tuple[FakeDownstream, str]]:
    fake = FakeDownstream()
    with serve(fake.app, lifespan="off") as url:
        yield fake, url


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("baseline") / "legacy.db")


@pytest.fixture(scope="module")
def baseline(downstream: tuple[FakeDownstream, str], db_path: str) -> Iterator[str]:
    _, url = downstream
    app = create_app(db_path, rag_service_url=url, auth_service_url=url, auth_cache_ttl_s=30)
    with serve(app) as base_url:
        yield base_url


@pytest.fixture
def client(baseline: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=baseline, headers=AUTH, timeout=15, trust_env=False) as c:
        yield c


def raw_row(db_path: str, session_id: str) -> dict[str, Any]:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT *, typeof(start_time) AS t_start, typeof(created_at) AS t_created, "
            "typeof(updated_at) AS t_updated, typeof(events) AS t_events, typeof(metadata) AS t_meta "
            "FROM sessions WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        assert row is not None
        return dict(row)


def new_session(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": "Fractions",
        "category": "math",
        "description": "week 3",
        "start_state": 2,
        "metadata": {"client": "web", "tags": ["a", "b"]},
    }
    body.update(overrides)
    response = client.post("/sessions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# ------------------------------------------------------------------------------------------- tests


def test_health_needs_no_auth(baseline: str) -> None:
    response = httpx.get(f"{baseline}/health", trust_env=False)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_design_is_the_legacy_one() -> None:
    """Session endpoints and the auth dependency are plain ``def`` (thread pool), as in the old gateway."""
    app = create_app(":memory:")
    endpoints = {
        (method, route.path): route.endpoint  # type: ignore[attr-defined]
        for route in app.routes
        for method in getattr(route, "methods", ())
    }
    for key in [
        ("POST", "/sessions"),
        ("GET", "/sessions"),
        ("GET", "/sessions/{session_id}"),
        ("POST", "/sessions/{session_id}/events"),
        ("POST", "/rag/query"),
    ]:
        assert not asyncio.iscoroutinefunction(endpoints[key]), key


def test_auth_is_required_and_resolved_through_the_auth_service(
    baseline: str, downstream: tuple[FakeDownstream, str]
) -> None:
    fake, _ = downstream
    with httpx.Client(base_url=baseline, timeout=15, trust_env=False) as anon:
        assert anon.get("/sessions").status_code == 401
        assert anon.get("/sessions", headers={"Authorization": "Basic xyz"}).status_code == 401
        bad = {"Authorization": "Bearer bad-token"}
        assert anon.get("/sessions", headers=bad).status_code == 401
        assert anon.get("/sessions", headers=bad).status_code == 401
        assert fake.auth_calls["Bearer bad-token"] == 2  # failures are not cached

        fresh = {"Authorization": "Bearer good-fresh-token"}
        for _ in range(5):
            assert anon.get("/sessions", headers=fresh).status_code == 200
        assert fake.auth_calls["Bearer good-fresh-token"] == 1  # TTL dict cache


def test_auth_service_down_is_503(db_path: str) -> None:
    url = dead_url()
    with serve(create_app(db_path, rag_service_url=url, auth_service_url=url)) as base:
        response = httpx.get(f"{base}/sessions", headers=AUTH, trust_env=False, timeout=15)
    assert response.status_code == 503


def test_create_and_get_session_in_legacy_format(client: httpx.Client, db_path: str) -> None:
    created = new_session(client)
    sid = created["session_id"]
    assert len(sid) == 32 and int(sid, 16) >= 0
    assert created["status"] == "ACTIVE"
    assert created["name"] == "Fractions" and created["category"] == "math"
    assert created["description"] == "week 3"
    assert created["start_state"] == 2 and created["end_state"] is None and created["end_time"] is None
    assert created["metadata"]["client"] == "web" and created["metadata"]["created_by"] == "7"
    assert [e["event_type"] for e in created["events"]] == ["SESSION_STARTED"]
    assert created["events"][0]["start_state"] == 2
    datetime.fromisoformat(created["start_time"])

    fetched = client.get(f"/sessions/{sid}")
    assert fetched.status_code == 200
    assert fetched.json() == created

    row = raw_row(db_path, sid)
    assert (row["t_start"], row["t_created"], row["t_updated"], row["t_events"], row["t_meta"]) == (
        "text",
        "text",
        "text",
        "text",
        "text",
    )
    start = datetime.fromisoformat(row["start_time"])
    assert start.tzinfo is None  # naive datetime.now().isoformat()
    assert abs(start - datetime.now()) < timedelta(minutes=1)
    assert row["created_at"] == row["updated_at"] == row["start_time"]
    assert row["end_time"] is None and row["end_state"] is None and row["status"] == "ACTIVE"
    events = json.loads(row["events"])
    assert isinstance(events, list)
    assert events == [{"event_type": "SESSION_STARTED", "timestamp": row["start_time"], "start_state": 2}]
    metadata = json.loads(row["metadata"])
    assert metadata["name"] == "Fractions" and metadata["tags"] == ["a", "b"]


def test_legacy_schema_and_sqlite_defaults(client: httpx.Client, db_path: str) -> None:
    new_session(client)
    with closing(sqlite3.connect(db_path)) as conn:
        columns = [(r[1], r[2], r[5]) for r in conn.execute("PRAGMA table_info(sessions)")]
        assert columns == LEGACY_COLUMNS
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # no WAL
        indexes = [r[1] for r in conn.execute("PRAGMA index_list(sessions)")]
        assert indexes == ["sqlite_autoindex_sessions_1"]  # only the primary key's
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert tables == ["sessions"]


def test_create_validation(client: httpx.Client) -> None:
    assert client.post("/sessions", json={"name": "x", "start_state": 9}).status_code == 422
    assert client.post("/sessions", json={"start_state": 1}).status_code == 422
    minimal = client.post("/sessions", json={"name": "only a name"})
    assert minimal.status_code == 201
    assert minimal.json()["start_state"] == 0


def test_get_missing_session_is_404(client: httpx.Client) -> None:
    assert client.get("/sessions/doesnotexist").status_code == 404


def test_events_are_appended_to_the_json_array(client: httpx.Client, db_path: str) -> None:
    sid = new_session(client)["session_id"]
    first = client.post(f"/sessions/{sid}/events", json={"event_type": "NOTE", "event_data": {"text": "hi"}})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["session_id"] == sid and body["event_type"] == "NOTE"
    assert body["event_data"] == {"text": "hi"} and body["event_count"] == 2
    datetime.fromisoformat(body["timestamp"])
    second = client.post(
        f"/sessions/{sid}/events",
        json={"event_type": "ANSWER", "event_data": {"event_type": "spoof", "n": 1}},
    )
    assert second.status_code == 201
    assert second.json()["event_count"] == 3
    assert client.post(f"/sessions/{sid}/events", json={"event_type": "PING"}).status_code == 201

    row = raw_row(db_path, sid)
    events = json.loads(row["events"])
    assert [e["event_type"] for e in events] == ["SESSION_STARTED", "NOTE", "ANSWER", "PING"]
    # event_data is spread flat into the event object, as in the legacy format
    assert events[1] == {"event_type": "NOTE", "timestamp": body["timestamp"], "text": "hi"}
    assert events[2]["n"] == 1
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in events]
    assert stamps == sorted(stamps)
    assert row["updated_at"] == events[-1]["timestamp"] and row["updated_at"] >= row["created_at"]

    got = client.get(f"/sessions/{sid}").json()
    assert got["events"] == events  # events are inlined, as the old gateway did

    assert client.post("/sessions/nope/events", json={"event_type": "X"}).status_code == 404
    assert client.post(f"/sessions/{sid}/events", json={"event_data": {}}).status_code == 422


def test_events_on_an_ended_session_are_409(client: httpx.Client, db_path: str) -> None:
    sid = new_session(client)["session_id"]
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute(
            "UPDATE sessions SET status = 'COMPLETED', end_time = ?, end_state = 3 WHERE session_id = ?",
            (datetime.now().isoformat(), sid),
        )
        conn.commit()
    assert client.post(f"/sessions/{sid}/events", json={"event_type": "LATE"}).status_code == 409
    assert client.post("/rag/query", json={"session_id": sid, "query": "q"}).status_code == 409


def test_a_new_connection_for_every_operation(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[sqlite3.Connection] = []
    real_get_db = baseline_app.get_db

    def counting_get_db(path: str) -> sqlite3.Connection:
        conn = real_get_db(path)
        opened.append(conn)
        return conn

    monkeypatch.setattr(baseline_app, "get_db", counting_get_db)
    sid = new_session(client)["session_id"]
    assert len(opened) == 1
    client.get(f"/sessions/{sid}")
    assert len(opened) == 2
    client.post(f"/sessions/{sid}/events", json={"event_type": "NOTE"})
    assert len(opened) == 4  # read, then write, each on its own connection
    client.get("/sessions", params={"limit": 5})
    assert len(opened) == 5
    assert len({id(c) for c in opened}) >= 2


def test_rag_query_forwards_with_requests_and_returns_downstream_json(
    client: httpx.Client, downstream: tuple[FakeDownstream, str]
) -> None:
    fake, _ = downstream
    sid = new_session(client)["session_id"]
    fake.queries.clear()
    response = client.post(
        "/rag/query",
        json={"session_id": sid, "query": "what is a half?", "top_k": 3, "model": "m1", "use_rerank": True},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "answer": "echo: what is a half?",
        "sources": [{"chunk_text": "c1"}],
        "chain_type": "stuff",
    }
    assert fake.queries == [
        {
            "session_id": sid,
            "collection_name": f"session_{sid}",
            "query": "what is a half?",
            "top_k": 3,
            "use_rerank": True,
            "model": "m1",
        }
    ]
    missing = client.post("/rag/query", json={"session_id": "nope", "query": "q"})
    assert missing.status_code == 404
    assert client.post("/rag/query", json={"session_id": sid}).status_code == 422

    fake.query_status = 500
    try:
        assert client.post("/rag/query", json={"session_id": sid, "query": "q"}).status_code == 502
    finally:
        fake.query_status = 200


def test_rag_service_down_is_503(db_path: str, downstream: tuple[FakeDownstream, str]) -> None:
    _, good_url = downstream
    app = create_app(db_path, rag_service_url=dead_url(), auth_service_url=good_url)
    with (
        serve(app) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=15, trust_env=False) as c,
    ):
        sid = new_session(c)["session_id"]
        assert c.post("/rag/query", json={"session_id": sid, "query": "q"}).status_code == 503


def test_list_sessions_offset_pagination_on_seeded_db(tmp_path: Path, downstream: tuple[FakeDownstream, str]) -> None:
    _, url = downstream
    db = str(tmp_path / "seeded.db")
    ids = seed_sessions(db, 500, active_fraction=0.4, seed=7)
    assert len(ids) == len(set(ids)) == 500
    app = create_app(db, rag_service_url=url, auth_service_url=url)
    with (
        serve(app) as base,
        httpx.Client(base_url=base, headers=AUTH, timeout=15, trust_env=False) as c,
    ):
        page1 = c.get("/sessions", params={"status": "ACTIVE", "limit": 100})
        assert page1.status_code == 200
        body1 = page1.json()
        assert set(body1) == {"sessions", "next_cursor"} and body1["next_cursor"] is None
        page2 = c.get("/sessions", params={"status": "ACTIVE", "limit": 100, "offset": 100}).json()
        active = body1["sessions"] + page2["sessions"]
        with closing(sqlite3.connect(db)) as conn:
            n_active = conn.execute("SELECT count(*) FROM sessions WHERE status = 'ACTIVE'").fetchone()[0]
        assert len(active) == min(n_active, 200)
        assert {s["status"] for s in active} == {"ACTIVE"}
        assert len({s["session_id"] for s in active}) == len(active)
        starts = [s["start_time"] for s in active]
        assert starts == sorted(starts, reverse=True)  # newest first, across pages
        first = body1["sessions"][0]
        assert first["events"][0]["event_type"] == "SESSION_STARTED" and first["metadata"]["name"]

        everything = c.get("/sessions", params={"limit": 1000}).json()["sessions"]
        assert len(everything) == 500
        assert {s["status"] for s in everything} >= {"ACTIVE", "COMPLETED"}
        assert c.get("/sessions", params={"limit": 0}).status_code == 422
        assert c.get("/sessions", params={"limit": 1001}).status_code == 422
        assert c.get("/sessions", params={"offset": -1}).status_code == 422
        assert c.get("/sessions", params={"status": "ACTIVE", "offset": 10_000}).json()["sessions"] == []


def test_seed_writes_the_legacy_format(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    now = datetime(2026, 1, 1, 12, 0, 0)
    ids = seed_sessions(db, 300, active_fraction=0.5, events_per_session=1, seed=3, now=now)
    again = seed_sessions(str(tmp_path / "t.db"), 300, active_fraction=0.5, events_per_session=1, seed=3, now=now)
    assert ids == again  # deterministic
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        rows = conn.execute("SELECT * FROM sessions").fetchall()
    assert len(rows) == 300
    statuses = {r["status"] for r in rows}
    assert "ACTIVE" in statuses and statuses <= {"ACTIVE", "COMPLETED", "CANCELLED", "FAULTED"}
    for r in rows:
        start = datetime.fromisoformat(r["start_time"])
        assert now - timedelta(days=90) <= start <= now
        events = json.loads(r["events"])
        assert events[0]["event_type"] == "SESSION_STARTED"
        assert json.loads(r["metadata"])["created_by"].startswith("user-")
        if r["status"] == "ACTIVE":
            assert r["end_time"] is None and r["end_state"] is None and len(events) == 2
        else:
            assert datetime.fromisoformat(r["end_time"]) >= start and 0 <= r["end_state"] <= 8
            assert events[-1]["event_type"] == "SESSION_ENDED" and len(events) == 3


def test_python_m_bench_baseline_serves(tmp_path: Path, downstream: tuple[FakeDownstream, str]) -> None:
    _, url = downstream
    port = free_port()
    db = tmp_path / "cli.db"
    env = {"RAG_SERVICE_URL": url, "AUTH_SERVICE_URL": url, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline", "--host", "127.0.0.1", "--port", str(port), "--db", str(db)]
        + ["--log-level", "warning", "--no-access-log"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", trust_env=False, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "baseline exited early"
            assert time.monotonic() < deadline, "baseline did not start"
            time.sleep(0.1)
        created = httpx.post(f"{base}/sessions", json={"name": "cli"}, headers=AUTH, trust_env=False, timeout=10)
        assert created.status_code == 201
        assert raw_row(str(db), created.json()["session_id"])["t_start"] == "text"
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it captured
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
