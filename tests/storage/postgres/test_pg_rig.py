"""The test rig itself: a real server, and each test's database its own."""

from __future__ import annotations

import asyncpg

from support.postgres import PostgresServer


async def test_each_test_gets_an_empty_database_of_its_own(postgres_server: PostgresServer, pg_empty_dsn: str) -> None:
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == pg_empty_dsn.rsplit("/", 1)[1]
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables == 0
        assert await conn.fetchval("SHOW fsync") == "off"
        assert str(await conn.fetchval("SHOW port")) == str(postgres_server.port)
    finally:
        await conn.close()
