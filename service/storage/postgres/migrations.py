"""PostgreSQL's ordered schema steps; the version lives in the ``schema_version`` table.

Step ``n`` (``MIGRATIONS[n - 1]``) brings a database from version ``n - 1`` to ``n``. ``migrate`` runs them all in
one transaction under a transaction-scoped advisory lock, reading the version again once it holds the lock: of
several replicas starting together on an empty database exactly one migrates, the others wait for its commit and
find the schema current. A schema newer than this build is refused (an older replica must not write to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.storage.postgres import ddl

if TYPE_CHECKING:
    import asyncpg

    from service.storage.postgres.engine import Engine

# pg_advisory_xact_lock's key for schema changes: a constant of this service ("sessgw" in ASCII).
LOCK_KEY = 0x73657373_67770000

MIGRATIONS: list[tuple[str, tuple[str, ...]]] = [
    ("sessions and events", ddl.SESSIONS_V1),
    ("library", ddl.LIBRARY_V1),
    ("ingestion jobs", ddl.INGESTION_JOBS_V1),
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer build: this one would not know its rules."""


async def current_version(conn: asyncpg.Connection) -> int:
    """0 for an empty database (no ``schema_version`` table yet)."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


def _check_not_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"database schema v{version} is newer than this build (v{SCHEMA_VERSION})")


async def migrate(engine: Engine) -> list[str]:
    """Bring the schema to ``SCHEMA_VERSION``; what was done (for logs and the CLI), [] when already current."""
    async with engine.connection() as conn:
        version = await current_version(conn)
        _check_not_newer(version)
        if version == SCHEMA_VERSION:  # the usual start-up: no lock taken
            return []
        done: list[str] = []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await conn.execute(ddl.SCHEMA_VERSION_DDL)  # under the lock: no two creators race
            version = await current_version(conn)  # another process may have migrated while we waited
            _check_not_newer(version)
            for number in range(version, SCHEMA_VERSION):
                name, statements = MIGRATIONS[number]
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number + 1)
                done.append(f"applied schema migration v{number + 1} ({name})")
        return done
