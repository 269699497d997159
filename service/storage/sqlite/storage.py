"""``SqliteStorage``: the storage interface on one SQLite file, the embedded default (``DATABASE_PATH``).

The sub-stores share one ``Database`` (``database.py``: the concurrency policy, one writer and a few readers,
group commit); each operation is one awaited call on it. Maintenance (backup, cleanup) and the schema
(``migrations.py``) live beside them.
"""

from __future__ import annotations

import sqlite3

from service.settings import DatabaseSettings
from service.storage.base import (
    BackupResult,
    BatchObserver,
    CleanupResult,
    Engine,
    JobStore,
    LibraryStore,
    OpObserver,
    RagStore,
    SessionStore,
    StorageError,
)
from service.storage.sqlite import maintenance, migrations
from service.storage.sqlite.database import Database
from service.storage.sqlite.jobs import SqliteJobs
from service.storage.sqlite.library import SqliteLibrary
from service.storage.sqlite.rag import SqliteRag
from service.storage.sqlite.sessions import SqliteSessions


class SqliteStorage:
    """``service.storage.base.Storage`` on SQLite. ``db`` is the engine (tests pass one of their own)."""

    engine: Engine = "sqlite"
    target_schema_version = migrations.SCHEMA_VERSION
    migrates_on_start = True

    def __init__(self, db: Database) -> None:
        self.db = db
        # typed as the interface's stores (protocol attributes are invariant)
        self.sessions: SessionStore = SqliteSessions(db)
        self.rag: RagStore = SqliteRag(db)
        self.library: LibraryStore = SqliteLibrary(db)
        self.jobs: JobStore = SqliteJobs(db)
        self.migrations_applied: list[str] = []

    @classmethod
    def from_settings(
        cls,
        settings: DatabaseSettings,
        *,
        observer: OpObserver | None = None,
        batch_observer: BatchObserver | None = None,
    ) -> SqliteStorage:
        return cls(Database.from_settings(settings, observer=observer, batch_observer=batch_observer))

    @classmethod
    def at(cls, path: str, settings: DatabaseSettings | None = None) -> SqliteStorage:
        """The storage of the file at ``path``, with ``settings``' connection policy (tests and tools)."""
        return cls(Database(path, settings))

    async def open(self, *, run_migrations: bool = True) -> None:
        try:
            await self.db.open(run_migrations=run_migrations)
        except sqlite3.Error as exc:  # e.g. "file is not a database", "database is locked"
            raise StorageError(str(exc)) from exc
        self.migrations_applied = self.db.migrations_applied

    async def close(self) -> None:
        await self.db.close()

    async def schema_version(self) -> int | None:
        try:
            rows = await self.db.read("PRAGMA user_version")
        except (sqlite3.Error, RuntimeError):  # RuntimeError: not open (closing)
            return None
        return int(rows[0][0])

    async def backup(self, dest_dir: str) -> BackupResult:
        try:
            return await maintenance.backup(self.db, dest_dir)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc

    async def cleanup(self, *, keep_newest: int | None = None, older_than_days: float | None = None) -> CleanupResult:
        try:
            return await maintenance.cleanup(self.db, keep_newest=keep_newest, older_than_days=older_than_days)
        except sqlite3.Error as exc:
            raise StorageError(str(exc)) from exc
