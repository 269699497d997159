"""Tests reading a gateway's database behind its back, whichever the engine: its SQLite file or its PostgreSQL URL.

``?`` placeholders are written once and become ``$1``, ``$2``... on PostgreSQL; portable SQL only (no PRAGMA, no
JSON functions): a test that needs SQLite's own is ``sqlite_only``. Each call opens a connection of its own and
never blocks an event loop (the SQLite file is read in a thread; ``query_sync`` is for the synchronous suites).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
# every row of the tables a request may change, in a stable order
DUMP = {
    "sessions": "SELECT * FROM sessions ORDER BY session_id",
    "session_events": "SELECT * FROM session_events ORDER BY id",
}


def is_postgres(location: str) -> bool:
    return location.startswith("postgresql://")


def _sqlite(path: str, statement: str, params: Iterable[Any]) -> Rows:
    conn = sqlite3.connect(path, timeout=10)
    try:
        with conn:
            return conn.execute(statement, tuple(params)).fetchall()
    finally:
        conn.close()


async def _postgres(url: str, statement: str, params: Iterable[Any]) -> Rows:
    import asyncpg

    numbered = iter(range(1, statement.count("?") + 1))
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(re.sub(r"\?", lambda _: f"${next(numbered)}", statement), *params)
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def query(location: str, statement: str, *params: Any) -> Rows:
    """Run one statement on the database at ``location`` (a SQLite path or a ``postgresql://`` URL)."""
    if is_postgres(location):
        return await _postgres(location, statement, params)
    return await asyncio.to_thread(_sqlite, location, statement, params)


def query_sync(location: str, statement: str, *params: Any) -> Rows:
    """``query`` for synchronous tests (PostgreSQL is reached from a loop in a thread of its own)."""
    if not is_postgres(location):
        return _sqlite(location, statement, params)
    return run_sync(lambda: _postgres(location, statement, params))


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code, in a thread and a loop of their own (the caller's thread
    may be inside a running loop, or pytest-asyncio's)."""
    out: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            out.append(asyncio.run(make()))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="run-sync")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0]
