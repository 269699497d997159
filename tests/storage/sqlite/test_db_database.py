"""The storage engine on real files: connection policy, atomic writes, concurrent writers, clean close."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.auth import Principal
from service.errors import Conflict, NotFound
from service.sessions.models import EventCreate, SessionCreate, SessionEnd, SessionPatch
from service.settings import DatabaseSettings
from service.storage.sqlite import Database, maintenance, migrations
from service.storage.sqlite.sessions import SqliteSessions

ALL_STEPS = [f"applied schema migration v{n}" for n in range(1, migrations.SCHEMA_VERSION + 1)]

TEACHER = Principal(id="u-teacher", role="teacher", username="teacher", profile={})
ADMIN = Principal(id="u-admin", role="admin", username="admin", profile={})
META_MAX = 65_536


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    settings = DatabaseSettings(
        db_busy_timeout_ms=4321,
        db_cache_size_kib=2048,
        db_wal_autocheckpoint=4000,
        db_journal_size_limit_bytes=8 * 2**20,
    )
    database = Database(str(tmp_path / "engine.db"), settings)
    await database.open()
    yield database
    await database.close()


def count(path: str, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - test constant
    finally:
        conn.close()


def wal_bytes(path: str) -> int:
    wal = Path(path + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def test_connection_policy(db: Database) -> None:
    def pragmas(conn: sqlite3.Connection) -> dict[str, object]:
        names = (
            "journal_mode",
            "synchronous",
            "foreign_keys",
            "busy_timeout",
            "cache_size",
            "query_only",
            "wal_autocheckpoint",
            "journal_size_limit",
        )
        return {n: conn.execute(f"PRAGMA {n}").fetchone()[0] for n in names}

    writer = await db.run_on_writer(pragmas)
    assert writer == {
        "journal_mode": "wal",
        "synchronous": 1,  # NORMAL
        "foreign_keys": 1,
        "busy_timeout": 4321,
        "cache_size": -2048,
        "query_only": 0,
        "wal_autocheckpoint": 4000,
        "journal_size_limit": 8 * 2**20,
    }
    reader = await db.read_fn(pragmas)
    assert reader == {**writer, "query_only": 1}
    assert (await db.read("PRAGMA user_version"))[0][0] == migrations.SCHEMA_VERSION
    # readers cannot write, whatever they are asked
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await db.read_fn(lambda c: c.execute("DELETE FROM sessions"))


async def test_create_is_atomic_with_its_first_event(db: Database) -> None:
    # make the SESSION_STARTED insert fail: the session row must not stay behind
    await db.run_on_writer(
        lambda c: c.execute(
            "CREATE TRIGGER no_events BEFORE INSERT ON session_events BEGIN SELECT RAISE(ABORT, 'no events'); END"
        )
    )
    with pytest.raises(sqlite3.IntegrityError, match="no events"):
        await SqliteSessions(db).create(TEACHER, SessionCreate(name="x"), max_metadata_bytes=META_MAX)
    assert count(db.path, "sessions") == 0
    await db.run_on_writer(lambda c: c.execute("DROP TRIGGER no_events"))
    s = await SqliteSessions(db).create(TEACHER, SessionCreate(name="x"), max_metadata_bytes=META_MAX)
    assert (count(db.path, "sessions"), count(db.path, "session_events")) == (1, 1)
    assert s["events"][0]["event_type"] == "SESSION_STARTED"


async def test_end_is_atomic(db: Database) -> None:
    s = await SqliteSessions(db).create(TEACHER, SessionCreate(name="x", start_state=1), max_metadata_bytes=META_MAX)
    sid = s["session_id"]
    await db.run_on_writer(
        lambda c: c.execute(
            "CREATE TRIGGER no_end BEFORE INSERT ON session_events WHEN NEW.event_type = 'SESSION_ENDED' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    )
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        await SqliteSessions(db).end(TEACHER, sid, SessionEnd(end_state=5))
    # neither the status change nor the STATE_CHANGED event written before the failure survived
    got = json.loads(await SqliteSessions(db).get(TEACHER, sid, with_events=True))
    assert (got["status"], got["current_state"], got["end_time"]) == ("active", 1, None)
    assert [e["event_type"] for e in got["events"]] == ["SESSION_STARTED"]


async def test_a_failed_write_does_not_disturb_concurrent_ones(db: Database) -> None:
    sid = (await SqliteSessions(db).create(TEACHER, SessionCreate(name="x"), max_metadata_bytes=META_MAX))["session_id"]
    too_big = SessionPatch(metadata={"blob": "x" * 200})
    results = await asyncio.gather(
        *(SqliteSessions(db).append_event(TEACHER, sid, EventCreate(event_type="OK")) for _ in range(10)),
        SqliteSessions(db).patch(TEACHER, sid, too_big, max_metadata_bytes=100),
        SqliteSessions(db).append_event(TEACHER, "missing", EventCreate(event_type="OK")),
        *(SqliteSessions(db).append_event(TEACHER, sid, EventCreate(event_type="OK")) for _ in range(10)),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 2
    assert any(isinstance(e, NotFound) for e in errors)
    events = json.loads(await SqliteSessions(db).get(TEACHER, sid, with_events=True))
    assert [e["event_type"] for e in events["events"]].count("OK") == 20
    assert "METADATA_UPDATED" not in [e["event_type"] for e in events["events"]]
    assert "blob" not in events["metadata"]


async def test_concurrent_writes_through_one_database(db: Database) -> None:
    created = await asyncio.gather(
        *(
            SqliteSessions(db).create(TEACHER, SessionCreate(name=f"s{i}"), max_metadata_bytes=META_MAX)
            for i in range(200)
        )
    )
    sids = [s["session_id"] for s in created]
    target = sids[0]
    await asyncio.gather(
        *(SqliteSessions(db).append_event(TEACHER, sid, EventCreate(event_type="E", state=3)) for sid in sids),
        *(
            SqliteSessions(db).patch(TEACHER, target, SessionPatch(metadata={f"k{i}": i}), max_metadata_bytes=META_MAX)
            for i in range(100)
        ),
    )
    assert count(db.path, "sessions") == 200
    assert count(db.path, "session_events") == 200 * 3 + 100
    got = json.loads(await SqliteSessions(db).get(TEACHER, target, with_events=False))
    assert got["metadata"] == {f"k{i}": i for i in range(100)}
    # racing ends: exactly one wins
    results = await asyncio.gather(
        *(SqliteSessions(db).end(TEACHER, sids[1], SessionEnd(end_state=1)) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Conflict) for r in results) == 9
    assert sum(isinstance(r, dict) for r in results) == 1


async def test_two_databases_on_one_file_do_not_lock_each_other(db: Database, tmp_path: Path) -> None:
    """The gateway and a CLI run (backup, cleanup) share the file: writers wait their turn, none fails."""
    other = Database(db.path, DatabaseSettings(db_read_connections=1))
    await other.open()
    try:

        async def writes(database: Database, n: int) -> list[str]:
            out = await asyncio.gather(
                *(
                    SqliteSessions(database).create(TEACHER, SessionCreate(name="x"), max_metadata_bytes=META_MAX)
                    for _ in range(n)
                )
            )
            return [s["session_id"] for s in out]

        first, second, backup, cleaned = await asyncio.gather(
            writes(db, 150),
            writes(other, 150),
            maintenance.backup(other, str(tmp_path / "bk")),
            maintenance.cleanup(db, keep_newest=0),
        )
        assert len(set(first) | set(second)) == 300
        assert cleaned.deleted_sessions == 0  # nothing ended: nothing to clean
        assert count(db.path, "sessions") == 300
        conn = sqlite3.connect(backup.path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n_sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
            n_events = conn.execute("SELECT count(*) FROM session_events").fetchone()[0]
        finally:
            conn.close()
        assert n_sessions == n_events  # a consistent snapshot: each session with its first event
    finally:
        await other.close()


async def test_close_checkpoints_and_truncates_wal(tmp_path: Path) -> None:
    path = str(tmp_path / "close.db")
    database = Database(path)
    await database.open()
    for i in range(50):
        await SqliteSessions(database).create(TEACHER, SessionCreate(name=f"s{i}"), max_metadata_bytes=META_MAX)
    assert wal_bytes(path) > 0
    await database.close()
    assert not database.is_open
    assert wal_bytes(path) == 0  # checkpointed: empty or gone
    assert count(path, "sessions") == 50
    with pytest.raises(RuntimeError, match="not open"):
        await database.read("SELECT 1")
    with pytest.raises(RuntimeError, match="not open"):
        await database.write_sql("SELECT 1")


async def test_reopen_keeps_data_and_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "reopen.db")
    first = Database(path)
    await first.open()
    assert first.migrations_applied == ALL_STEPS
    s = await SqliteSessions(first).create(ADMIN, SessionCreate(name="kept"), max_metadata_bytes=META_MAX)
    await first.close()
    second = Database(path)
    await second.open()
    try:
        assert second.migrations_applied == []
        got = json.loads(await SqliteSessions(second).get(ADMIN, s["session_id"], with_events=True))
        assert got["name"] == "kept" and len(got["events"]) == 1
    finally:
        await second.close()
