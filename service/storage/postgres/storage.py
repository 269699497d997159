"""``PostgresStorage``: the storage interface on one PostgreSQL database shared by every replica."""

from __future__ import annotations

import asyncpg

from service.sessions import rules
from service.sessions.domain import END_STATUSES
from service.settings import DatabaseSettings
from service.storage.base import (
    BackupResult,
    CleanupResult,
    Engine,
    JobStore,
    LibraryStore,
    NotSupportedByEngine,
    OpObserver,
    RagStore,
    SessionStore,
    StorageError,
    StorageUnavailable,
)
from service.storage.postgres import migrations
from service.storage.postgres.engine import Engine as PgEngine
from service.storage.postgres.jobs import PostgresJobs
from service.storage.postgres.library import PostgresLibrary
from service.storage.postgres.rag import PostgresRag
from service.storage.postgres.sessions import PostgresSessions
from service.storage.postgres.sql import OPEN_SQL


class PostgresStorage:
    engine: Engine = "postgres"
    target_schema_version = migrations.SCHEMA_VERSION
    migrates_on_start = False  # replicas never race a schema change: ``python -m service migrate`` is the job

    def __init__(self, db: PgEngine) -> None:
        self.db = db
        self.sessions: SessionStore = PostgresSessions(db)
        self.rag: RagStore = PostgresRag(db)
        self.library: LibraryStore = PostgresLibrary(db)
        self.jobs: JobStore = PostgresJobs(db)
        self.migrations_applied: list[str] = []

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, observer: OpObserver | None = None) -> PostgresStorage:
        dsn = settings.database_url.get_secret_value()
        return cls(
            PgEngine(dsn, pool_size=settings.db_pool_size, pool_timeout_s=settings.db_pool_timeout_s, observer=observer)
        )

    async def open(self, *, run_migrations: bool = True) -> None:
        """As SQLite's: a failure to reach, log in or migrate is a ``StorageError`` (the driver's as its cause; the
        message never holds the URL), a newer schema ``SchemaTooNew``."""
        try:
            await self._open(run_migrations)
        except (StorageUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc, StorageUnavailable) and exc.__cause__ is not None else exc
            raise StorageError(f"{type(cause).__name__}: {cause}") from exc

    async def _open(self, run_migrations: bool) -> None:
        await self.db.open()
        try:
            if run_migrations:
                self.migrations_applied = await migrations.migrate(self.db)
            else:
                async with self.db.connection() as conn:
                    version = await migrations.current_version(conn)
                if version > migrations.SCHEMA_VERSION:
                    raise migrations.SchemaTooNew(
                        f"database schema v{version} is newer than this build (v{migrations.SCHEMA_VERSION})"
                    )
        except BaseException:
            await self.db.close()
            raise

    async def close(self) -> None:
        await self.db.close()

    async def schema_version(self) -> int | None:
        """None when the server cannot be reached (or no connection frees up in time): not ready."""
        try:
            async with self.db.connection() as conn:
                return await migrations.current_version(conn)
        except Exception:
            return None

    async def backup(self, dest_dir: str) -> BackupResult:
        raise NotSupportedByEngine(
            "backups of a PostgreSQL database belong to PostgreSQL: use pg_dump, or continuous archiving with "
            "point-in-time recovery (see the PostgreSQL documentation, 'Backup and Restore')"
        )

    async def cleanup(self, *, keep_newest: int | None = None, older_than_days: float | None = None) -> CleanupResult:
        """As ``service/storage/sqlite/maintenance.py``: ended sessions beyond either rule go, with their events;
        open ones never."""
        cutoff = rules.retention_cutoff(keep_newest, older_than_days)
        async with self.db.unit("write") as conn:
            doomed: set[str] = set()
            if cutoff is not None:
                rows = await conn.fetch(
                    "SELECT session_id FROM sessions WHERE status = ANY($1::text[]) AND end_time < $2",
                    list(END_STATUSES),
                    cutoff,
                )
                doomed.update(r[0] for r in rows)
            if keep_newest is not None:
                rows = await conn.fetch(
                    "SELECT session_id FROM sessions WHERE status = ANY($1::text[]) "
                    "ORDER BY end_time DESC, session_id OFFSET $2",
                    list(END_STATUSES),
                    keep_newest,
                )
                doomed.update(r[0] for r in rows)
            ids = sorted(doomed)
            if not ids:
                return CleanupResult(0, 0)
            events = await conn.fetchval("SELECT count(*) FROM session_events WHERE session_id = ANY($1::text[])", ids)
            deleted = await conn.fetch(
                f"DELETE FROM sessions WHERE status NOT IN {OPEN_SQL} AND session_id = ANY($1::text[]) "  # noqa: S608
                "RETURNING session_id",
                ids,
            )
        return CleanupResult(len(deleted), int(events))
