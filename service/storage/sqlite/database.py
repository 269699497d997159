"""The SQLite engine's concurrency policy, in one place (the rest of the service sees only ``SqliteStorage``).

One writer connection (every transaction ``BEGIN IMMEDIATE``) and a few read connections, all long-lived
aiosqlite connections opened at start-up. Each aiosqlite connection owns a thread; an awaited call is one hop
to that thread. So the stores (``sessions.py``, ``rag.py``, ``library.py``, ``jobs.py``) get four calls, each at
most one hop:

- ``read(sql, params)``: one SELECT on a reader, all rows;
- ``read_fn(fn)``: several statements on a reader's thread (one hop, one snapshot);
- ``write(fn)``: a whole unit of work run on the writer's thread (one hop, atomic);
- ``write_sql(sql, params)``: a single-statement unit, rows of its ``RETURNING`` clause.

Calls share hops (``batching.py``): each connection has one batch in flight, and what arrives meanwhile forms its
next batch; under load a batch of reads is one hop and one snapshot, a batch of writes one hop and one COMMIT,
each write still atomic on its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from service.settings import DatabaseSettings
from service.storage.base import BatchObserver as SizeObserver
from service.storage.base import OpObserver
from service.storage.sqlite import migrations
from service.storage.sqlite.batching import Batcher, BatchObserver, Outcome, Work, run_reads, run_writes

T = TypeVar("T")
Rows = list[sqlite3.Row]

log = logging.getLogger(__name__)


def _sized(kind: str, observer: SizeObserver | None) -> BatchObserver | None:
    return None if observer is None else functools.partial(observer, kind)


def _apply_pragmas(
    conn: sqlite3.Connection,
    *,
    cache_kib: int,
    busy_ms: int,
    synchronous: str,
    wal_autocheckpoint: int,
    journal_size_limit: int,
) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # integers validated by Settings; a checkpoint every N pages, and the WAL file truncated back to the limit
    # after one (it otherwise stays at its high-water mark)
    conn.execute(f"PRAGMA wal_autocheckpoint = {wal_autocheckpoint:d}")
    conn.execute(f"PRAGMA journal_size_limit = {journal_size_limit:d}")
    conn.execute(f"PRAGMA cache_size = {-abs(cache_kib):d}")
    conn.execute(f"PRAGMA busy_timeout = {busy_ms:d}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")


class Database:
    """``settings`` (defaults from ``service.settings``) tunes the connections; ``path`` says which file.

    Separate so tests and tools can open any file with the configured policy; ``from_settings`` is how the
    service and the CLI open the configured one."""

    def __init__(
        self,
        path: str,
        settings: DatabaseSettings | None = None,
        *,
        observer: OpObserver | None = None,
        batch_observer: SizeObserver | None = None,
    ) -> None:
        config = settings if settings is not None else DatabaseSettings()
        self.path = path
        self._n_readers = config.db_read_connections
        self._cache_kib = config.db_cache_size_kib
        self._busy_ms = config.db_busy_timeout_ms
        self._synchronous = config.db_synchronous
        self._wal_autocheckpoint = config.db_wal_autocheckpoint
        self._journal_size_limit = config.db_journal_size_limit_bytes
        self._observer = observer
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._idle_readers: list[aiosqlite.Connection] = []  # one batch in flight per reader: a free one each time
        self._reads = Batcher(self._run_reads, slots=self._n_readers, observer=_sized("read", batch_observer))
        self._writes = Batcher(self._run_writes, observer=_sized("write", batch_observer))
        self.migrations_applied: list[str] = []

    @classmethod
    def from_settings(
        cls,
        settings: DatabaseSettings,
        *,
        observer: OpObserver | None = None,
        batch_observer: SizeObserver | None = None,
    ) -> Database:
        return cls(settings.database_path, settings, observer=observer, batch_observer=batch_observer)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def open(self, *, run_migrations: bool = True) -> None:
        """Open every connection or none: a failure closes what it opened (their threads would block exit)."""
        if self.path != ":memory:":
            await asyncio.to_thread(Path(self.path).parent.mkdir, parents=True, exist_ok=True)
        self._writer = await self._connect()
        try:
            if run_migrations:
                self.migrations_applied = await self._run(self._writer, migrations.migrate)
            for _ in range(self._n_readers):
                reader = await self._connect()
                self._readers.append(reader)
                await reader.execute("PRAGMA query_only = ON")
        except BaseException:
            for conn in (*self._readers, self._writer):
                await conn.close()
            self._readers.clear()
            self._writer = None
            raise
        self._idle_readers = list(self._readers)

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row

        def setup(c: sqlite3.Connection) -> None:
            _apply_pragmas(
                c,
                cache_kib=self._cache_kib,
                busy_ms=self._busy_ms,
                synchronous=self._synchronous,
                wal_autocheckpoint=self._wal_autocheckpoint,
                journal_size_limit=self._journal_size_limit,
            )

        try:
            await self._run(conn, setup)  # e.g. "file is not a database"
        except BaseException:
            await conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Checkpoint the WAL into the main file and close every connection (graceful shutdown)."""
        await self._reads.drain()
        await self._writes.drain()
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        self._idle_readers = []
        if self._writer is not None:
            try:
                await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.exception("WAL checkpoint at shutdown failed")
            await self._writer.close()
            self._writer = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    # -- the four calls ----------------------------------------------------------------------------------
    async def read(self, sql: str, params: Any = ()) -> Rows:
        def run(conn: sqlite3.Connection) -> Rows:
            return conn.execute(sql, params).fetchall()

        return await self.read_fn(run)

    async def read_fn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._readers:
            raise RuntimeError("database is not open")
        start = time.perf_counter()
        result: T = await self._reads.submit(fn)
        self._observe("read", start)
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._writer_conn()
        start = time.perf_counter()
        result: T = await self._writes.submit(fn)
        self._observe("write", start)
        return result

    async def write_sql(self, sql: str, params: Any = ()) -> Rows:
        def run(conn: sqlite3.Connection) -> Rows:
            return conn.execute(sql, params).fetchall()

        return await self.write(run)

    async def run_on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer's thread with no transaction of ours (backup, checkpoint, migration)."""
        return await self._run(self._writer_conn(), fn)

    # -- internals -----------------------------------------------------------------------------------------
    async def _run_reads(self, works: list[Work]) -> list[Outcome]:
        if not self._idle_readers:  # closed meanwhile (the batcher never runs more batches than readers)
            raise RuntimeError("database is not open")
        reader = self._idle_readers.pop()
        try:
            return await self._run(reader, functools.partial(run_reads, works=works))
        finally:
            if reader in self._readers:
                self._idle_readers.append(reader)

    async def _run_writes(self, works: list[Work]) -> list[Outcome]:
        return await self._run(self._writer_conn(), functools.partial(run_writes, works=works))

    def _writer_conn(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise RuntimeError("database is not open")
        return self._writer

    @staticmethod
    async def _run(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        # aiosqlite's own execute_* are built on this: run ``fn`` on the connection's thread, one hop. Private API
        # (pinned in pyproject.toml); tests/storage/sqlite/test_aiosqlite_internals.py fails loudly if an upgrade
        # moves it.
        def call() -> T:
            return fn(conn._conn)

        result: T = await conn._execute(call)  # type: ignore[no-untyped-call]
        return result

    def _observe(self, kind: str, start: float) -> None:
        if self._observer is not None:
            self._observer(kind, time.perf_counter() - start)
