"""Outgrowing SQLite: copy a SQLite database into an empty PostgreSQL one (``python -m service copy-to-postgres``).

Both sides are one transaction: the SQLite file is read in one read transaction (one consistent snapshot, so a
gateway still running on it cannot tear the copy), the PostgreSQL side is written in one transaction (a failure
leaves the target as empty as it was). Rows go over with COPY, in chunks, so memory stays bounded whatever the
size. Before committing, every table's row count in the target is checked against the snapshot, and the identity
sequences are moved past the copied ids, so the next event or library file gets a fresh id. A target holding any
row is refused: this is a one-off move, never a merge.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

# Parents before children (foreign keys); fixed names, never from a client.
TABLES = ("sessions", "session_events", "library_files", "ingestion_jobs")
KEYS = {"sessions": "session_id", "session_events": "id", "library_files": "id", "ingestion_jobs": "job_id"}
IDENTITY = {"session_events": "id", "library_files": "id"}
CHUNK_ROWS = 5000


class CopyRefused(Exception):
    """The copy cannot start: a non-empty target, a source at another schema version, tables that disagree."""


@dataclass(slots=True)
class CopyResult:
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class _Source:
    """A read-only sqlite3 connection used from worker threads (never from the loop), one snapshot."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        self.conn.execute("BEGIN")  # the snapshot: every later read sees the same committed state

    def version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def columns(self, table: str) -> list[str]:
        return [str(r[1]) for r in self.conn.execute(f"PRAGMA table_info({table})")]  # table: a TABLES constant

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - TABLES

    def chunks(self, table: str, columns: list[str]) -> Iterator[list[tuple[Any, ...]]]:
        cols = ", ".join(f'"{c}"' for c in columns)  # names read from the file's own catalogue, quoted
        cursor = self.conn.execute(f"SELECT {cols} FROM {table} ORDER BY {KEYS[table]}")  # noqa: S608 - catalogue
        while rows := cursor.fetchmany(CHUNK_ROWS):
            yield rows

    def close(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()


def _converter(data_type: str) -> Any:
    if data_type == "boolean":
        return lambda v: None if v is None else bool(v)
    return None


async def copy_sqlite_to_postgres(sqlite_path: str, dsn: str, *, expected_version: int) -> CopyResult:
    """Copy every table of the SQLite database at ``sqlite_path`` (at schema ``expected_version``) into the
    migrated, empty PostgreSQL database at ``dsn``; the rows copied per table."""
    started = time.perf_counter()
    try:
        return await _copy_from(sqlite_path, dsn, expected_version, started)
    except asyncpg.PostgresError as exc:  # a row PostgreSQL refuses (say, a NUL in legacy JSON): nothing was kept
        raise RuntimeError(f"PostgreSQL refused the copy, nothing was written: {exc}") from exc
    except sqlite3.Error as exc:
        raise RuntimeError(f"cannot read the SQLite database: {exc}") from exc


async def _copy_from(sqlite_path: str, dsn: str, expected_version: int, started: float) -> CopyResult:
    source = await asyncio.to_thread(_Source, sqlite_path)
    try:
        version = await asyncio.to_thread(source.version)
        if version != expected_version:
            raise CopyRefused(
                f"the SQLite database is at schema version {version}, this build copies version {expected_version}: "
                "run `python -m service migrate` on it first (with DATABASE_PATH set and DATABASE_URL unset)"
            )
        conn: asyncpg.Connection = await asyncpg.connect(dsn)
        try:
            return await _copy(source, conn, started)
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(source.close)


async def _copy(source: _Source, conn: asyncpg.Connection, started: float) -> CopyResult:
    result = CopyResult()
    async with conn.transaction():
        # Nobody else may write the target while it is filled: a concurrent writer would break the empty check.
        await conn.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
        for table in TABLES:
            if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):  # noqa: S608 - TABLES
                raise CopyRefused(f"the PostgreSQL database is not empty ({table} has rows): copy into an empty one")
        for table in TABLES:
            target = {
                r["column_name"]: r["data_type"]
                for r in await conn.fetch(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = $1",
                    table,
                )
            }
            columns = await asyncio.to_thread(source.columns, table)
            if set(columns) != set(target):
                raise CopyRefused(
                    f"table {table} differs: SQLite has {sorted(columns)}, PostgreSQL has {sorted(target)}"
                )
            converters = [(i, conv) for i, c in enumerate(columns) if (conv := _converter(target[c])) is not None]
            chunks = await asyncio.to_thread(source.chunks, table, columns)
            copied = 0
            while True:
                rows = await asyncio.to_thread(next, chunks, None)
                if rows is None:
                    break
                if converters:
                    rows = [tuple(_apply(row, converters)) for row in rows]
                await conn.copy_records_to_table(table, records=rows, columns=columns)
                copied += len(rows)
            expected = await asyncio.to_thread(source.count, table)
            landed = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608 - TABLES
            if not copied == expected == landed:
                raise RuntimeError(f"{table}: {expected} rows in SQLite, {copied} sent, {landed} in PostgreSQL")
            result.rows[table] = landed
        for table, column in IDENTITY.items():
            # the next generated id follows the largest copied one (or starts at 1 on an empty table)
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "  # noqa: S608 - IDENTITY constants
                f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
            )
    result.seconds = time.perf_counter() - started
    return result


def _apply(row: tuple[Any, ...], converters: list[tuple[int, Any]]) -> list[Any]:
    values = list(row)
    for i, conv in converters:
        values[i] = conv(values[i])
    return values
