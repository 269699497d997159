"""The test rig itself: a real server, and each test's database its own."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from service.storage.postgres.migrations import SCHEMA_VERSION
from support.postgres import PostgresServer, _give_back, _lend_database, require_bindir


async def test_each_test_gets_an_empty_database_of_its_own(postgres_server: PostgresServer, pg_empty_dsn: str) -> None:
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == urlsplit(pg_empty_dsn).path.lstrip("/")
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables == 0
        assert await conn.fetchval("SHOW fsync") == "off"
        assert str(await conn.fetchval("SHOW port")) == str(postgres_server.port)
    finally:
        await conn.close()


async def test_a_gateway_database_is_emptied_for_the_next_test(postgres_server: PostgresServer) -> None:
    """``pg_gateway_dsn`` reuses databases: handed back, one holds no row, its identities restart, its schema stays."""
    name = await _lend_database(postgres_server)
    conn = await asyncpg.connect(postgres_server.dsn(name))
    try:
        await conn.execute(
            "INSERT INTO sessions (session_id, user_id, start_time, start_state, current_state, status, created_at, "
            "updated_at) VALUES ('s1', 'u', 1, 0, 0, 'ACTIVE', 1, 1)"
        )
        await conn.execute("INSERT INTO session_events (session_id, event_type, timestamp) VALUES ('s1', 'E', 1)")
    finally:
        await conn.close()
    await _give_back(postgres_server, name)
    assert await _lend_database(postgres_server) == name
    conn = await asyncpg.connect(postgres_server.dsn(name))
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
        assert await conn.fetchval("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
        await conn.execute(
            "INSERT INTO sessions (session_id, user_id, start_time, start_state, current_state, status, created_at, "
            "updated_at) VALUES ('s2', 'u', 1, 0, 0, 'ACTIVE', 1, 1)"
        )
        event_id = await conn.fetchval(
            "INSERT INTO session_events (session_id, event_type, timestamp) VALUES ('s2', 'E', 1) RETURNING id"
        )
        assert event_id == 1
    finally:
        await conn.close()
    await _give_back(postgres_server, name)


def test_missing_binaries_skip_locally_and_fail_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install Debian's 'postgresql' package"):
        require_bindir(tmp_path / "nowhere")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="postgresql"):
        require_bindir(tmp_path / "nowhere")
    (tmp_path / "15" / "bin").mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (tmp_path / "15" / "bin" / name).touch()
    (tmp_path / "9" / "bin").mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (tmp_path / "9" / "bin" / name).touch()
    assert require_bindir(tmp_path) == tmp_path / "15" / "bin"  # the newest version, by number
