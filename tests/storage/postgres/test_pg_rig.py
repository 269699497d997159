"""The test rig itself: a real server, and each test's database its own."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from support.postgres import PostgresServer, require_bindir


async def test_each_test_gets_an_empty_database_of_its_own(postgres_server: PostgresServer, pg_empty_dsn: str) -> None:
    conn = await asyncpg.connect(pg_empty_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == pg_empty_dsn.rsplit("/", 1)[1].split("?")[0]
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables == 0
        assert await conn.fetchval("SHOW fsync") == "off"
        assert str(await conn.fetchval("SHOW port")) == str(postgres_server.port)
    finally:
        await conn.close()


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
