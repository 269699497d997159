"""Migrations: a fresh database gets every step once, concurrent openers migrate exactly once, newer is refused."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service.sessions.domain import MAX_EVENT_TYPE_LEN, MAX_STATE, MIN_STATE, STATUSES
from service.storage.postgres import ddl
from service.storage.postgres.engine import Engine
from service.storage.postgres.migrations import SCHEMA_VERSION, SchemaTooNew, current_version, migrate


async def test_fresh_database_migrates_to_the_current_version_then_does_nothing(pg_empty_dsn: str) -> None:
    engine = Engine(pg_empty_dsn, pool_size=2)
    await engine.open()
    try:
        done = await migrate(engine)
        assert len(done) == SCHEMA_VERSION
        assert await migrate(engine) == []
        async with engine.connection() as conn:
            assert await current_version(conn) == SCHEMA_VERSION
            tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert tables == {"sessions", "session_events", "library_files", "ingestion_jobs", "schema_version"}
    finally:
        await engine.close()


async def test_concurrent_openers_migrate_exactly_once(pg_empty_dsn: str) -> None:
    engines = [Engine(pg_empty_dsn, pool_size=1, pool_timeout_s=30) for _ in range(6)]
    await asyncio.gather(*(e.open() for e in engines))
    try:
        results = await asyncio.gather(*(migrate(e) for e in engines))
    finally:
        await asyncio.gather(*(e.close() for e in engines))
    assert sorted(len(r) for r in results) == [0] * 5 + [SCHEMA_VERSION]
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
    finally:
        await conn.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_a_schema_newer_than_the_build_is_refused(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    engine = Engine(pg_dsn, pool_size=1)
    await engine.open()
    try:
        with pytest.raises(SchemaTooNew, match="newer than this build"):
            await migrate(engine)
    finally:
        await engine.close()


def test_checks_spell_the_domain_values() -> None:
    statuses = ", ".join(f"'{s}'" for s in STATUSES)
    assert f"status IN ({statuses})" in ddl.SESSIONS_DDL
    assert f"BETWEEN {MIN_STATE} AND {MAX_STATE}" in ddl.SESSIONS_DDL
    assert f"length(event_type) BETWEEN 1 AND {MAX_EVENT_TYPE_LEN}" in ddl.EVENTS_DDL


@pytest.mark.parametrize(
    ("sql", "args"),
    [
        ("INSERT INTO sessions VALUES ('a', 'u', 1, NULL, 9, NULL, 0, 'ACTIVE', '{}', 1, 1)", ()),
        ("INSERT INTO sessions VALUES ('a', 'u', 1, NULL, 0, NULL, 0, 'BOGUS', '{}', 1, 1)", ()),
        ("INSERT INTO sessions VALUES ('a', 'u', 1, NULL, 0, NULL, 0, 'COMPLETED', '{}', 1, 1)", ()),
        ("INSERT INTO sessions VALUES ('a', 'u', 1, 2, 0, NULL, 0, 'COMPLETED', '{}', 1, 1)", ()),
        ("INSERT INTO sessions VALUES ('a', 'u', 5, 2, 0, 0, 0, 'COMPLETED', '{}', 1, 1)", ()),
        ("INSERT INTO sessions VALUES ('a', 'u', 1, NULL, 0, NULL, 0, 'ACTIVE', '[]', 1, 1)", ()),
        ("INSERT INTO session_events (session_id, event_type, timestamp) VALUES ('missing', 'X', 1)", ()),
        (
            "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) VALUES "
            "('o', 'a.txt', 'x', 1, 1)",
            (),
        ),
        (
            "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) VALUES "
            "('o', 'a.md', 'é', 1, 1)",
            (),
        ),
    ],
)
async def test_constraints_refuse_what_sqlite_refuses(pg_dsn: str, sql: str, args: tuple[object, ...]) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises((asyncpg.CheckViolationError, asyncpg.ForeignKeyViolationError)):
            await conn.execute(sql, *args)
    finally:
        await conn.close()
