"""``python -m service copy-to-postgres``: a SQLite database moved into an empty PostgreSQL one, verified.

The SQLite side is filled through the API of a real gateway (sessions in every state, events, a PATCHed
metadata, RAG counters, library files, a finished ingestion job); after the copy a gateway on PostgreSQL must
answer the same documents, hand out fresh ids past the copied ones, and a second copy into the now non-empty
target must be refused, leaving it as it was.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from support.cli import run_service
from support.inprocess import AppGatewayFactory
from support.servers import auth

TABLES = ("sessions", "session_events", "library_files", "ingestion_jobs")


async def run_copy(sqlite_path: str, dsn: str) -> tuple[int, str, str]:
    return await run_service("copy-to-postgres", env={"DATABASE_PATH": sqlite_path, "DATABASE_URL": dsn})


async def fill(client: httpx.AsyncClient) -> list[str]:
    """Sessions in every state with events, metadata, counters; library files and a finished job."""
    ids = []
    for i in range(12):
        r = await client.post(
            "/sessions",
            headers=auth("teacher" if i % 3 else "teacher2"),
            json={
                "name": f"copy-{i}",
                "category": "bio",
                "start_state": i % 9,
                "metadata": {"n": i, "deep": {"k": [i]}},
            },
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["session_id"])
    owner = {sid: ("teacher" if i % 3 else "teacher2") for i, sid in enumerate(ids)}
    for i, sid in enumerate(ids):
        who = auth(owner[sid])
        for k in range(3):
            r = await client.post(
                f"/sessions/{sid}/events", headers=who, json={"event_type": "NOTE", "event_data": {"k": k}}
            )
            assert r.status_code in (200, 201), r.text
        r = await client.patch(f"/sessions/{sid}", headers=who, json={"metadata": {"deep": {"extra": "ü"}, "n": None}})
        assert r.status_code == 200, r.text
        if i % 4 == 1:
            r = await client.post(f"/sessions/{sid}/end", headers=who, json={"status": "COMPLETED", "end_state": 8})
            assert r.status_code == 200, r.text
        elif i % 4 == 2:
            r = await client.patch(f"/sessions/{sid}/status", headers=who, json={"status": "inactive"})
            assert r.status_code == 200, r.text
    r = await client.post("/rag/query", headers=auth("teacher"), json={"session_id": ids[4], "query": "what?"})
    assert r.status_code == 200, r.text
    sid = ids[4]  # a teacher's open session: documents and a job
    for name in ("a.md", "b.md"):
        r = await client.post(
            "/documents/upload-markdown",
            headers=auth("teacher"),
            files={"file": (name, f"# {name}\n\ntext".encode(), "text/markdown")},
        )
        assert r.status_code == 200, r.text
    r = await client.post(
        "/documents/process-and-store-batch",
        headers=auth("teacher"),
        # multipart, as the frontend's FormData (plain fields, no file parts)
        files=[(k, (None, v.encode())) for k, v in {"session_id": sid, "markdown_files": '["a.md", "b.md"]'}.items()],
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    for _ in range(200):
        status = (
            await client.get(f"/documents/process-and-store-batch/status/{job_id}", headers=auth("teacher"))
        ).json()
        if status["job"]["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert status["job"]["status"] == "completed", status
    return ids


async def documents(client: httpx.AsyncClient, ids: list[str]) -> dict[str, Any]:
    """Everything a client can read back, by owner."""
    seen: dict[str, Any] = {}
    for role in ("admin", "teacher", "teacher2"):
        listing = await client.get("/sessions", headers=auth(role), params={"limit": "100"})
        seen[f"list-{role}"] = listing.json()
    for sid in ids:
        r = await client.get(f"/sessions/{sid}", headers=auth("admin"), params={"include": "events"})
        seen[sid] = r.json()
    seen["stats"] = (await client.get("/sessions/stats", headers=auth("admin"))).json()
    seen["library"] = (await client.get("/documents/list-markdown", headers=auth("teacher"))).json()
    seen["file"] = (await client.get("/documents/markdown/a.md", headers=auth("teacher"))).json()
    return seen


def counts(path: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # noqa: S608
    finally:
        conn.close()


async def test_copy_moves_everything_and_postgres_answers_the_same(
    make_app_gateway: AppGatewayFactory, pg_empty_dsn: str, tmp_path: Path
) -> None:
    on_sqlite = await make_app_gateway()
    async with on_sqlite.client(timeout=30) as client:
        ids = await fill(client)
        before = await documents(client, ids)
    await on_sqlite.stop()
    sqlite_path = str(tmp_path / "gateway.db")
    expected = await asyncio.to_thread(counts, sqlite_path)
    assert all(expected.values())

    code, out, err = await run_copy(sqlite_path, pg_empty_dsn)
    assert code == 0, err
    report = json.loads(out)
    assert report["copied"] == expected

    on_pg = await make_app_gateway(database_url=pg_empty_dsn)
    async with on_pg.client(timeout=30) as client:
        after = await documents(client, ids)
        assert after == before  # parsed JSON: jsonb may reorder keys, the documents are the same
        # fresh ids follow the copied ones: a new event and a new library file do not collide
        sid = ids[4]
        r = await client.post(f"/sessions/{sid}/events", headers=auth("teacher"), json={"event_type": "AFTER"})
        assert r.status_code in (200, 201), r.text
        new_event = r.json()["events"][0]["id"]
        r = await client.post(
            "/documents/upload-markdown", headers=auth("teacher"), files={"file": ("c.md", b"# c", "text/markdown")}
        )
        assert r.status_code == 200, r.text
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        assert new_event > await conn.fetchval("SELECT max(id) FROM session_events WHERE event_type <> 'AFTER'")
        assert await conn.fetchval("SELECT count(*) FROM library_files") == expected["library_files"] + 1
        landed = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}  # noqa: S608
    finally:
        await conn.close()

    # a second copy into the now non-empty database is refused and changes nothing
    code, out, err = await run_copy(sqlite_path, pg_empty_dsn)
    assert code == 1 and "not empty" in err and out == ""
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        assert {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES} == landed  # noqa: S608
    finally:
        await conn.close()


async def test_copy_refuses_a_source_at_another_schema_version(pg_empty_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE sessions (session_id TEXT PRIMARY KEY)")  # a legacy gateway's file, unconverted
    conn.commit()
    conn.close()
    code, out, err = await run_copy(str(path), pg_empty_dsn)
    assert code == 1 and "run `python -m service migrate`" in err, err


async def test_copy_needs_both_ends(tmp_path: Path) -> None:
    code, _, err = await run_copy(str(tmp_path / "missing.db"), "postgresql://u:secret@127.0.0.1:1/x")
    assert code == 2 and "no database at DATABASE_PATH" in err and "secret" not in err
    code, _, err = await run_copy(str(tmp_path / "missing.db"), "")
    assert code == 2 and "needs DATABASE_URL" in err
