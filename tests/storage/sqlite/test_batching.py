"""Coalesced database calls: one hop per loop iteration, yet every unit keeps its own outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
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


@pytest.fixture
async def observed(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A database whose batch sizes are recorded, as ``(kind, size)``, in the order batches were formed."""
    sizes: list[tuple[str, int]] = []
    database = Database(str(tmp_path / "o.db"), batch_observer=lambda kind, n: sizes.append((kind, n)))
    await database.open()
    await database.write_sql("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
    sizes.clear()
    yield database, sizes
    await database.close()


def _blocking(gate: threading.Event, started: threading.Event):  # type: ignore[no-untyped-def]
    def run(conn: sqlite3.Connection) -> None:
        started.set()
        assert gate.wait(10), "the test never released the connection"

    return run


async def _until(event: threading.Event) -> None:
    for _ in range(1000):
        if event.is_set():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the blocking unit never started")


def _recorded_insert(order: list[int], i: int):  # type: ignore[no-untyped-def]
    """A unit that inserts row ``i`` and notes, on the writer's thread, the order the batch ran it in."""

    def run(conn: sqlite3.Connection) -> int:
        order.append(i)
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"k{i}", i))
        return i

    return run


async def test_writes_submitted_while_the_writer_is_busy_form_its_next_batch(observed) -> None:  # type: ignore[no-untyped-def]
    db, sizes = observed
    gate, started = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(db.write(_blocking(gate, started)))
    await _until(started)
    order: list[int] = []
    waiting = []
    for i in range(40):  # one per loop iteration: the old per-iteration batching would have made 40 batches
        waiting.append(asyncio.ensure_future(db.write(_recorded_insert(order, i))))
        await asyncio.sleep(0)
    assert not any(w.done() for w in waiting)  # nobody is answered before the batch holding it has committed
    gate.set()
    assert await asyncio.gather(*waiting) == list(range(40))
    await busy
    assert sizes == [("write", 1), ("write", 40)]
    assert order == list(range(40))  # first come, first served
    assert (await db.read("SELECT count(*) FROM t"))[0][0] == 40


async def test_a_queue_longer_than_a_batch_goes_in_order_in_full_batches(observed) -> None:  # type: ignore[no-untyped-def]
    db, sizes = observed
    gate, started = threading.Event(), threading.Event()
    busy = asyncio.ensure_future(db.write(_blocking(gate, started)))
    await _until(started)
    order: list[int] = []
    waiting = [asyncio.ensure_future(db.write(_recorded_insert(order, i))) for i in range(600)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(busy, *waiting)
    assert sizes == [("write", 1), ("write", 256), ("write", 256), ("write", 88)]
    assert order == list(range(600))


async def test_each_reader_has_one_batch_in_flight(observed) -> None:  # type: ignore[no-untyped-def]
    db, sizes = observed
    gates = [threading.Event(), threading.Event()]
    starts = [threading.Event(), threading.Event()]
    blocked = []
    for gate, started in zip(gates, starts, strict=True):  # both readers (DB_READ_CONNECTIONS=2) held
        blocked.append(asyncio.ensure_future(db.read_fn(_blocking(gate, started))))
        await _until(started)
    reads = []
    for i in range(30):
        reads.append(asyncio.ensure_future(db.read("SELECT ? AS i", (i,))))
        await asyncio.sleep(0)
    assert not any(r.done() for r in reads)
    gates[0].set()  # one reader comes free: everything queued goes to it, in one snapshot
    got = await asyncio.gather(*reads)
    assert [rows[0][0] for rows in got] == list(range(30))
    gates[1].set()
    await asyncio.gather(*blocked)
    assert sizes == [("read", 1), ("read", 1), ("read", 30)]
