"""Backup, cleanup and migrate: through the admin endpoints and the ``python -m service`` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sessions_kit import bounded_gather, create, db_path, end, error_of, settings_of, snapshot, sql

from service.storage.sqlite import migrations
from support.dbquery import query_sync
from support.inprocess import InProcessServer
from support.servers import ServerThread, auth

pytestmark = pytest.mark.engines

ALL_STEPS = [f"applied schema migration v{n}" for n in range(1, migrations.SCHEMA_VERSION + 1)]

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BACKUP_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rows(path: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sessions = conn.execute("SELECT * FROM sessions ORDER BY session_id").fetchall()
        events = conn.execute("SELECT * FROM session_events ORDER BY id").fetchall()
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        return sessions, events, check
    finally:
        conn.close()


async def populate(client: httpx.AsyncClient, n: int = 12) -> list[str]:
    sids = [s["session_id"] for s in await bounded_gather(8, [lambda: create(client) for _ in range(n)])]
    for sid in sids[: n // 2]:
        await client.post(
            f"/sessions/{sid}/events", json={"event_type": "E", "event_data": {"x": 1}}, headers=auth("teacher")
        )
        await end(client, sid)
    return sids


@pytest.mark.sqlite_only  # a PostgreSQL backup is pg_dump's: 501 (test_sessions_access)
async def test_backup_endpoint(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    await populate(client)
    r = await client.post("/admin/backup", headers=auth("admin"))
    assert r.status_code == 201, r.text
    out = r.json()
    assert set(out) == {"path", "bytes", "pages", "seconds"}
    backup = out["path"]
    settings = settings_of(gateway)
    assert Path(backup).parent == Path(settings.backup_dir)
    assert Path(backup).name.startswith("sessions-") and backup.endswith(".db")
    assert out["bytes"] > 0 and out["pages"] > 0
    live = await snapshot(db_path(gateway))
    sessions, events, check = await asyncio.to_thread(rows, backup)
    assert check == "ok"
    assert (sessions, events) == live
    assert len(sessions) == 12 and len(events) == 12 + 6 * 2  # SESSION_STARTED; E and SESSION_ENDED
    version = await asyncio.to_thread(lambda: sqlite3.connect(backup).execute("PRAGMA user_version").fetchone()[0])
    assert version == migrations.SCHEMA_VERSION
    # a second backup is a distinct file; the first is untouched
    r2 = await client.post("/admin/backup", headers=auth("admin"))
    assert r2.status_code == 201 and r2.json()["path"] != backup


@pytest.mark.sqlite_only  # as above
async def test_backup_during_writes_is_consistent(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    await populate(client, 6)
    stop = asyncio.Event()

    async def writer() -> int:
        n = 0
        while not stop.is_set():
            await create(client)
            n += 1
        return n

    task = asyncio.create_task(writer())
    try:
        backups = []
        for _ in range(3):
            r = await client.post("/admin/backup", headers=auth("admin"))
            assert r.status_code == 201
            backups.append(r.json()["path"])
    finally:
        stop.set()
        await task
    for path in backups:
        sessions, events, check = await asyncio.to_thread(rows, path)
        assert check == "ok"
        # a consistent snapshot: every session has its SESSION_STARTED event, no event without its session
        started = {e[1] for e in events if e[2] == "SESSION_STARTED"}
        assert started == {s[0] for s in sessions}


async def test_cleanup_endpoint_never_deletes_active(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    path = db_path(gateway)
    active = [s["session_id"] for s in await bounded_gather(8, [lambda: create(client) for _ in range(5)])]
    ended = []
    for _ in range(6):
        sid = (await create(client))["session_id"]
        await client.post(f"/sessions/{sid}/events", json={"event_type": "E"}, headers=auth("teacher"))
        ended.append((await end(client, sid))["session_id"])
    # age three ended sessions and two ACTIVE ones by 10 days
    now = int(time.time() * 1000)
    old_ended = ended[:3]
    for sid in old_ended:
        await sql(
            path,
            "UPDATE sessions SET start_time = ?, end_time = ? WHERE session_id = ?",
            now - 11 * DAY_MS,
            now - 10 * DAY_MS,
            sid,
        )
    for sid in active[:2]:
        await sql(path, "UPDATE sessions SET start_time = ? WHERE session_id = ?", now - 30 * DAY_MS, sid)

    for bad in ({}, {"keep_newest": -1}, {"older_than_days": -1}, {"keep_newest": 1, "x": 1}, {"keep_newest": "all"}):
        error_of(await client.post("/admin/cleanup", json=bad, headers=auth("admin")), 422)

    r = await client.post("/admin/cleanup", json={"older_than_days": 5}, headers=auth("admin"))
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted_sessions": 3, "deleted_events": 3 * 3}
    remaining = {row[0] for row in await sql(path, "SELECT session_id FROM sessions")}
    assert remaining == set(active) | set(ended[3:])
    assert await sql(path, "SELECT count(*) FROM session_events WHERE session_id IN (?, ?, ?)", *old_ended) == [(0,)]

    # keep the newest one ended session: the other two ended go, every ACTIVE one stays
    r = await client.post("/admin/cleanup", json={"keep_newest": 1}, headers=auth("admin"))
    assert r.json() == {"deleted_sessions": 2, "deleted_events": 2 * 3}
    remaining = {row[0] for row in await sql(path, "SELECT session_id FROM sessions")}
    assert remaining == set(active) | {ended[-1]}

    # nothing ended is left to keep: even "keep none" and "older than 0 days" spare ACTIVE sessions
    r = await client.post("/admin/cleanup", json={"keep_newest": 0, "older_than_days": 0}, headers=auth("admin"))
    assert r.json() == {"deleted_sessions": 1, "deleted_events": 3}
    remaining = {row[0] for row in await sql(path, "SELECT session_id FROM sessions")}
    assert remaining == set(active)
    r = await client.post("/admin/cleanup", json={"keep_newest": 0}, headers=auth("admin"))
    assert r.json() == {"deleted_sessions": 0, "deleted_events": 0}
    assert await sql(path, "SELECT count(*) FROM session_events") == [(5,)]


def seed_db(location: str) -> None:
    """A migrated database with hand-set times: 4 ended (2 old), 2 ACTIVE (1 very old), 1 very old INACTIVE.
    (A PostgreSQL test database is migrated already; a SQLite file is migrated here, in-process.)"""
    if not location.startswith("postgresql://"):
        conn = sqlite3.connect(location, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            migrations.migrate(conn)
        finally:
            conn.close()
    now = int(time.time() * 1000)
    specs = [
        ("old1", "COMPLETED", now - 40 * DAY_MS, now - 39 * DAY_MS),
        ("old2", "FAULTED", now - 20 * DAY_MS, now - 19 * DAY_MS),
        ("new1", "CANCELLED", now - 2 * DAY_MS, now - 1 * DAY_MS),
        ("new2", "COMPLETED", now - 3600_000, now - 60_000),
        ("act1", "ACTIVE", now - 400 * DAY_MS, None),
        ("act2", "ACTIVE", now - 1000, None),
        ("ina1", "INACTIVE", now - 500 * DAY_MS, None),
    ]
    for sid, status, start, end_ms in specs:
        query_sync(
            location,
            "INSERT INTO sessions (session_id, user_id, start_time, end_time, start_state, end_state, "
            "current_state, status, metadata, created_at, updated_at) "
            "VALUES (?, 'u', ?, ?, 0, ?, 0, ?, '{}', ?, ?)",
            sid,
            start,
            end_ms,
            None if end_ms is None else 1,
            status,
            start,
            start,
        )
        query_sync(
            location,
            "INSERT INTO session_events (session_id, event_type, timestamp) VALUES (?, 'SESSION_STARTED', ?)",
            sid,
            start,
        )


def session_ids(location: str) -> set[str]:
    return {r[0] for r in query_sync(location, "SELECT session_id FROM sessions")}


def cli_database(db_engine: str, engine_overrides: dict[str, Any], tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Where the CLI test's database is, and the environment that points ``python -m service`` at it."""
    if db_engine == "postgres":
        url = str(engine_overrides["database_url"])
        return url, {"DATABASE_URL": url, "CURSOR_SECRET": "maintenance-cli-test-secret"}
    path = str(tmp_path / "cli.db")
    return path, {"DATABASE_PATH": path}


def test_cli_cleanup(db_engine: str, engine_overrides: dict[str, Any], tmp_path: Path) -> None:
    path, env = cli_database(db_engine, engine_overrides, tmp_path)
    seed_db(path)
    r = cli("cleanup", "--older-than-days", "10", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"deleted_sessions": 2, "deleted_events": 2}
    assert session_ids(path) == {"new1", "new2", "act1", "act2", "ina1"}
    r = cli("cleanup", "--keep-newest", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"deleted_sessions": 1, "deleted_events": 1}
    assert session_ids(path) == {"new2", "act1", "act2", "ina1"}
    r = cli("cleanup", "--keep-newest", "0", "--older-than-days", "0", env=env)
    assert json.loads(r.stdout)["deleted_sessions"] == 1
    assert session_ids(path) == {"act1", "act2", "ina1"}  # open sessions are never deleted, however old
    r = cli("cleanup", env=env)
    assert r.returncode == 2 and "--keep-newest" in r.stderr
    r = cli("cleanup", "--keep-newest", "-1", env=env)
    assert r.returncode == 2 and "keep-newest" in r.stderr
    assert "Traceback" not in r.stderr
    assert session_ids(path) == {"act1", "act2", "ina1"}


@pytest.mark.sqlite_only  # the file, its WAL and sqlite_master (PostgreSQL's migrations: tests/storage/postgres)
def test_cli_migrate_fresh_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "fresh.db"
    env = {"DATABASE_PATH": str(path)}
    r = cli("migrate", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"applied": ALL_STEPS}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        schema_sql = conn.execute("SELECT group_concat(sql, ';') FROM sqlite_master").fetchone()[0]
    finally:
        conn.close()
    assert {"sessions", "session_events", "idx_sessions_active", "idx_sessions_created_at"} <= names
    r = cli("migrate", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"applied": ["schema already current"]}
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT group_concat(sql, ';') FROM sqlite_master").fetchone()[0] == schema_sql
    finally:
        conn.close()
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size == 0


def test_cli_help() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for command in ("serve", "migrate", "backup", "cleanup"):
        assert command in r.stdout
    for command in ("backup", "cleanup", "migrate", "serve"):
        r = cli(command, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    r = cli("cleanup", "--help")
    assert "--keep-newest" in r.stdout and "--older-than-days" in r.stdout
    r = cli()
    assert r.returncode == 2 and "usage:" in r.stderr


@pytest.mark.sqlite_only  # a backup of PostgreSQL is pg_dump's (the endpoint answers 501)
def test_cli_backup_of_a_live_database(make_gateway: Any, tmp_path: Path) -> None:
    gw = make_gateway()
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        sids = []
        for i in range(8):
            r = c.post("/sessions", json={"name": f"s{i}"}, headers=auth("teacher"))
            assert r.status_code == 201
            sids.append(r.json()["session_id"])
        c.post(f"/sessions/{sids[0]}/end", json={"end_state": 3}, headers=auth("teacher"))
        dest = tmp_path / "cli-backups"
        done = cli("backup", "--dest", str(dest), env={"DATABASE_PATH": db_path(gw)})
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert Path(out["path"]).parent == dest and Path(out["path"]).exists()
        sessions, events, check = rows(out["path"])
        assert check == "ok"
        assert (sessions, events) == rows(db_path(gw))[:2]
        assert len(sessions) == 8 and len(events) == 8 + 2
        # the gateway is still serving, and writes after the backup are not in it
        assert c.post("/sessions", json={"name": "after"}, headers=auth("teacher")).status_code == 201
    assert len(rows(out["path"])[0]) == 8
    # without --dest the backup goes to BACKUP_DIR
    done = cli("backup", env={"DATABASE_PATH": db_path(gw), "BACKUP_DIR": str(tmp_path / "env-dir")})
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)["path"]).parent == tmp_path / "env-dir"


def wal_bytes(path: str) -> int:
    wal = Path(path + "-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.mark.sqlite_only  # SQLite's WAL file
def test_graceful_close_checkpoints_wal(make_gateway: Any) -> None:
    gw = make_gateway()
    path = db_path(gw)
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for i in range(20):
            assert c.post("/sessions", json={"name": f"s{i}"}, headers=auth("teacher")).status_code == 201
    assert wal_bytes(path) > 0  # writes went to the WAL while serving
    gw.stop()
    assert wal_bytes(path) == 0
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 20
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_graceful_close_finishes_in_flight_writes(make_gateway: Any, devstack: ServerThread, db_engine: str) -> None:
    gw = make_gateway()
    path = db_path(gw)
    slow = {"Authorization": f"Bearer dev:teacher:closing{uuid.uuid4().hex[:12]}"}
    with httpx.Client(base_url=devstack.url) as ds, ThreadPoolExecutor(max_workers=1) as pool:
        try:
            ds.post("/_control", json={"latency_ms": 300, "fault_paths": ["/users/me"]})
            pending = pool.submit(httpx.post, gw.url + "/sessions", json={"name": "last"}, headers=slow, timeout=30)
            for _ in range(400):  # until the request is parked in its auth lookup
                if ds.get("/_control").json()["inflight"] >= 1:
                    break
                time.sleep(0.005)
            gw.stop()  # returns once in-flight work is done and the lifespan has closed the database
            r = pending.result(timeout=30)
        finally:
            ds.post("/_control/reset")
    assert r.status_code == 201, r.text
    if db_engine == "sqlite":
        assert wal_bytes(path) == 0  # checkpointed on close
    assert query_sync(path, "SELECT count(*) FROM sessions") == [(1,)]
    assert query_sync(path, "SELECT count(*) FROM session_events") == [(1,)]


def test_cli_refuses_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "sessions.db"
    for args in (("backup", "--dest", str(tmp_path / "bk")), ("cleanup", "--keep-newest", "1")):
        r = cli(*args, env={"DATABASE_PATH": str(missing)})
        assert r.returncode == 2 and "no database" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not missing.exists() and not missing.parent.exists()
    assert not (tmp_path / "bk").exists()
