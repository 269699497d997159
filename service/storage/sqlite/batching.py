"""Coalescing of database calls: what arrives while a connection is busy goes in its next thread hop.

An aiosqlite call costs a thread wake-up (~0.4 ms idle). Each connection has at most one batch in flight; every
call submitted meanwhile waits in one queue and goes, first come first served, in the next batch (up to
``max_batch``), so the busier the connection, the fuller its batches. For writes N commits become one (group
commit); reads share one snapshot. Each call keeps its own outcome: a write runs in its own SAVEPOINT, so one
failing call rolls back only itself, and nobody is answered before the batch's COMMIT has succeeded.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

Work = Callable[[sqlite3.Connection], Any]
Outcome = tuple[bool, Any]  # (succeeded, value or exception)
BatchRunner = Callable[[list[Work]], Awaitable[list[Outcome]]]
BatchObserver = Callable[[int], None]  # the size of each batch handed to a connection


class Batcher:
    """``slots``: batches in flight at once (one per connection: the runner is handed a free one each time)."""

    def __init__(
        self,
        run_batch: BatchRunner,
        *,
        slots: int = 1,
        max_batch: int = 256,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._slots = slots
        self._max = max_batch
        self._observer = observer
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, work: Work) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((work, future))
        if not self._scheduled and len(self._tasks) < self._slots:
            # a free connection: start at the end of this loop iteration, with whatever else it brings
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and len(self._tasks) < self._slots:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            if self._observer is not None:
                self._observer(len(batch))
            task = asyncio.ensure_future(self._dispatch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending:  # everything that queued while the connection was busy: the next batch, now
            self._flush()

    async def _dispatch(self, batch: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._run_batch([work for work, _ in batch])
        except BaseException as exc:  # the batch as a whole failed (COMMIT, closed connection, cancellation)
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if future.done():  # the caller went away; the work itself has run
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    async def drain(self) -> None:
        """Wait for every call already submitted (used before closing the connections)."""
        while self._pending or self._tasks:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0)


def run_reads(conn: sqlite3.Connection, works: list[Work]) -> list[Outcome]:
    """Several reads in one read transaction: one consistent snapshot, taken after every earlier commit."""
    outcomes: list[Outcome] = []
    conn.execute("BEGIN")
    try:
        for work in works:
            try:
                outcomes.append((True, work(conn)))
            except Exception as exc:
                outcomes.append((False, exc))
    finally:
        conn.execute("COMMIT")
    return outcomes


def run_writes(conn: sqlite3.Connection, works: list[Work]) -> list[Outcome]:
    """Several write units in one ``BEGIN IMMEDIATE`` transaction, each isolated by a savepoint."""
    outcomes: list[Outcome] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        if len(works) == 1:
            outcomes.append((True, works[0](conn)))
        else:
            for work in works:
                conn.execute("SAVEPOINT unit")
                try:
                    value = work(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                    outcomes.append((False, exc))
                    continue
                conn.execute("RELEASE unit")
                outcomes.append((True, value))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes
