"""aiosqlite's private internals that ``service/storage/sqlite/database.py`` relies on: fail loudly when an
upgrade moves them.

``Database._run`` hands a whole function to ``Connection._execute`` (one hop to the connection's thread) and
calls it with ``Connection._conn``, the ``sqlite3.Connection``. Neither is public API, so pyproject.toml pins
``aiosqlite>=0.21,<0.23``; these tests say exactly what broke before anything else does.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from service.storage.sqlite.database import Database

PIN = "aiosqlite>=0.21,<0.23 (pyproject.toml)"
USER = "service/storage/sqlite/database.py (Database._run)"


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(
            f"aiosqlite {aiosqlite.__version__}: {what}. {USER} relies on it; it was true for {PIN}. "
            "Adapt Database._run to the new internals (or aiosqlite's public API), then move the pin.",
            pytrace=False,
        )


@pytest.fixture
async def conn(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    connection = await aiosqlite.connect(tmp_path / "internals.db", isolation_level=None)
    yield connection
    await connection.close()


def test_execute_is_a_coroutine_function_taking_a_callable() -> None:
    execute = getattr(aiosqlite.Connection, "_execute", None)
    require(execute is not None, "Connection._execute no longer exists")
    assert execute is not None
    require(inspect.iscoroutinefunction(execute), "Connection._execute is no longer a coroutine function")
    params = list(inspect.signature(execute).parameters.values())[1:]  # after self
    require(
        bool(params) and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD),
        f"Connection._execute no longer takes the function as its first positional argument ({params})",
    )


async def test_execute_runs_the_callable_on_the_connections_own_thread(conn: aiosqlite.Connection) -> None:
    loop_thread = threading.get_ident()
    first = await conn._execute(threading.get_ident)  # type: ignore[no-untyped-call]
    second = await conn._execute(threading.get_ident)  # type: ignore[no-untyped-call]
    require(isinstance(first, int), f"Connection._execute(fn) did not return fn's result ({first!r})")
    require(first != loop_thread, "Connection._execute ran the function on the event loop's thread")
    require(first == second, "Connection._execute ran two calls on different threads (not one connection thread)")


async def test_conn_is_the_sqlite3_connection_used_on_that_thread(conn: aiosqlite.Connection) -> None:
    raw = getattr(conn, "_conn", None)
    require(isinstance(raw, sqlite3.Connection), f"Connection._conn is not the sqlite3.Connection ({raw!r})")
    assert isinstance(raw, sqlite3.Connection)
    seen = await conn._execute(lambda: conn._conn)  # type: ignore[no-untyped-call]
    require(seen is raw, "Connection._conn on the connection's thread is not the same sqlite3.Connection")
    # a statement run through it is visible through aiosqlite's public API: one connection, not a copy
    await conn._execute(lambda: raw.execute("CREATE TABLE t (x)"))  # type: ignore[no-untyped-call]
    rows = await conn.execute_fetchall("SELECT name FROM sqlite_master")
    require([tuple(r) for r in rows] == [("t",)], "a statement run on Connection._conn is not seen by the connection")


async def test_database_run_is_one_hop_on_the_connection_thread(conn: aiosqlite.Connection) -> None:
    """What database.py builds on those internals: ``fn(sqlite3_connection)`` on the connection's thread."""

    def probe(c: sqlite3.Connection) -> tuple[int, bool]:
        return threading.get_ident(), c is conn._conn

    results = await asyncio.gather(*(Database._run(conn, probe) for _ in range(5)))
    threads = {ident for ident, _ in results}
    require(len(threads) == 1 and threading.get_ident() not in threads, f"Database._run used threads {threads}")
    require(all(same for _, same in results), "Database._run did not pass Connection._conn to the function")
