"""``open_storage``: the engine follows the settings, and the SQLite one answers the interface on a real file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.auth import Principal
from service.sessions.models import ListQuery, SessionCreate
from service.settings import DatabaseSettings
from service.storage import StorageError, open_storage
from service.storage.sqlite import SqliteStorage
from service.storage.sqlite.migrations import SCHEMA_VERSION

TEACHER = Principal(id="u-teacher", role="teacher", username="teacher", profile={})


async def test_without_a_database_url_the_sqlite_file_is_opened_and_migrated(tmp_path: Path) -> None:
    storage = open_storage(DatabaseSettings(database_path=str(tmp_path / "picked.db")))
    assert isinstance(storage, SqliteStorage) and storage.engine == "sqlite"
    assert await storage.schema_version() is None  # not open yet: not ready, no exception
    await storage.open()
    try:
        assert storage.migrations_applied and await storage.schema_version() == storage.target_schema_version
        assert storage.target_schema_version == SCHEMA_VERSION
        created = await storage.sessions.create(TEACHER, SessionCreate(name="x"), max_metadata_bytes=65_536)
        page = await storage.sessions.list(TEACHER, ListQuery(), after=None)
        assert created["session_id"] in page.sessions_json and page.next_key is None
    finally:
        await storage.close()
    assert (tmp_path / "picked.db").is_file()
    assert await storage.schema_version() is None  # closed


async def test_a_database_url_selects_postgresql(tmp_path: Path) -> None:
    settings = DatabaseSettings(
        database_path=str(tmp_path / "unused.db"), database_url=SecretStr("postgresql://u:secret@127.0.0.1:9/db")
    )
    if importlib.util.find_spec("service.storage.postgres") is None:
        # this build has no PostgreSQL engine: a clear error, never a silent fall-back to the SQLite file
        with pytest.raises(StorageError, match="DATABASE_URL is set but the PostgreSQL engine is not available"):
            open_storage(settings)
    else:
        assert open_storage(settings).engine == "postgres"  # not opened: nothing connects to port 9
    assert not (tmp_path / "unused.db").exists()


async def test_a_file_that_is_not_a_database_is_a_storage_error_naming_the_driver_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database, " * 512)
    storage = SqliteStorage.at(str(path))
    with pytest.raises(StorageError, match="not a database") as caught:
        await storage.open()
    assert type(caught.value.__cause__).__name__ == "DatabaseError"  # what the CLI prints
