"""Coalesced database calls: one hop per loop iteration, yet every unit keeps its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from service.storage.sqlite import Database


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(str(tmp_path / "b.db"))
    await database.open()
    await database.write_sql("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL CHECK (v >= 0))")
    yield database
    await database.close()


async def test_a_failing_unit_rolls_back_only_itself(db: Database) -> None:
    def insert(k: str, v: int):  # type: ignore[no-untyped-def]
        def run(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t VALUES (?, ?)", (k, v))
            conn.execute("INSERT INTO t VALUES (?, ?)", (k + "-twin", v))  # half of the unit
            return k

        return run

    results = await asyncio.gather(
        db.write(insert("a", 1)), db.write(insert("b", -1)), db.write(insert("c", 3)), return_exceptions=True
    )
    assert results[0] == "a" and results[2] == "c"
    assert isinstance(results[1], sqlite3.IntegrityError)
    rows = await db.read("SELECT k FROM t ORDER BY k")
    assert [r[0] for r in rows] == ["a", "a-twin", "c", "c-twin"]  # nothing of "b", not even its first insert


async def test_concurrent_calls_share_hops(db: Database) -> None:
    hops = 0
    original = db._run

    async def counting(conn, fn):  # type: ignore[no-untyped-def]
        nonlocal hops
        hops += 1
        return await original(conn, fn)

    db._run = counting  # type: ignore[method-assign]
    await asyncio.gather(*(db.write_sql("INSERT INTO t VALUES (?, ?)", (f"k{i}", i)) for i in range(200)))
    rows = await asyncio.gather(*(db.read("SELECT v FROM t WHERE k = ?", (f"k{i}",)) for i in range(200)))
    assert [r[0][0] for r in rows] == list(range(200))
    assert hops <= 4  # 200 writes and 200 reads: a batch each (at most 256 per batch)


async def test_reads_see_every_acknowledged_write(db: Database) -> None:
    for i in range(50):
        await db.write_sql("INSERT INTO t VALUES (?, ?)", (f"x{i}", i))
        assert (await db.read("SELECT count(*) FROM t WHERE k LIKE 'x%'"))[0][0] == i + 1


async def test_a_single_failing_write_raises_and_leaves_nothing(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await db.write_sql("INSERT INTO t VALUES ('neg', -5)")
    assert (await db.read("SELECT count(*) FROM t"))[0][0] == 0
