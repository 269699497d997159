"""Each index of SPEC 2 is used by the query it exists for.

The statements are captured from the service's own code paths (the SQLite stores and maintenance running on a
live ``Database``), with their real parameters, then planned with ``EXPLAIN QUERY PLAN`` on the same file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.auth import Principal
from service.sessions.models import EventsQuery, ListQuery, SessionCreate, SessionEnd
from service.storage import SessionPage
from service.storage.sqlite import Database, maintenance
from service.storage.sqlite.sessions import SqliteSessions

ADMIN = Principal(id="u-admin", role="admin", username="admin", profile={})
TEACHER = Principal(id="u-teacher", role="teacher", username="teacher", profile={})
STUDENT = Principal(id="u-student", role="student", username="student", profile={})
Statement = tuple[str, Any]


class _Recording:
    """A sqlite3 connection that remembers every statement run through it."""

    def __init__(self, conn: sqlite3.Connection, log: list[Statement]) -> None:
        self._conn = conn
        self._log = log

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._log.append((sql, params))
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class RecordingDatabase(Database):
    """The service's Database, unchanged, except that every statement on any connection is recorded."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.log: list[Statement] = []

    async def _run(self, conn: Any, fn: Callable[[Any], Any]) -> Any:  # type: ignore[override]
        log = self.log
        return await Database._run(conn, lambda c: fn(_Recording(c, log)))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[RecordingDatabase]:
    database = RecordingDatabase(str(tmp_path / "plans.db"))
    await database.open()
    # a few rows of each kind, so every code path runs to its end
    for principal in (TEACHER, ADMIN):
        for i in range(3):
            s = await SqliteSessions(database).create(
                principal, SessionCreate(name=f"s{i}", category="c"), max_metadata_bytes=65_536
            )
            if i:
                await SqliteSessions(database).end(principal, s["session_id"], SessionEnd(end_state=1))
    yield database
    await database.close()


def plan(path: str, sql: str, params: Any) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        conn.close()


async def captured(db: RecordingDatabase, action: Callable[[], Awaitable[Any]], table: str) -> list[Statement]:
    """The data statements (SELECT / DELETE on ``table``) that ``action`` ran."""
    db.log.clear()
    await action()
    return [
        (sql, params)
        for sql, params in db.log
        if sql.lstrip().upper().startswith(("SELECT", "DELETE", "UPDATE")) and f"FROM {table}" in sql
    ]


async def assert_uses(
    db: RecordingDatabase, action: Callable[[], Awaitable[Any]], index: str, *, table: str = "sessions"
) -> list[str]:
    statements = await captured(db, action, table)
    assert statements, "the action ran no query on " + table
    plans = [plan(db.path, sql, params) for sql, params in statements]
    assert any(index in step for p in plans for step in p), f"{index} not used by:\n" + "\n".join(
        f"{sql}\n  -> {p}" for (sql, _), p in zip(statements, plans, strict=True)
    )
    return [step for p in plans for step in p]


async def test_unfiltered_listing_uses_start_time(db: RecordingDatabase) -> None:
    steps = await assert_uses(
        db, lambda: SqliteSessions(db).list(ADMIN, ListQuery(), after=None), "idx_sessions_start_time"
    )
    assert not any("TEMP B-TREE" in s for s in steps)  # the index gives the order: no sort
    # the next page too (keyset cursor): a range on the same index
    page = await SqliteSessions(db).list(ADMIN, ListQuery(limit=2), after=None)
    key = page.next_key
    assert key
    steps = await assert_uses(
        db,
        lambda: SqliteSessions(db).list(ADMIN, ListQuery(limit=2), after=key),
        "idx_sessions_start_time",
    )
    assert not any("TEMP B-TREE" in s for s in steps)
    await assert_uses(
        db, lambda: SqliteSessions(db).list(ADMIN, ListQuery(started_after=1), after=None), "idx_sessions_start_time"
    )


@pytest.mark.parametrize("status", ["INACTIVE", "inactive", "COMPLETED", "cancelled", "FAULTED"])
async def test_listing_by_status_uses_status_start(db: RecordingDatabase, status: str) -> None:
    query = ListQuery.model_validate({"status": status})
    steps = await assert_uses(
        db, lambda: SqliteSessions(db).list(ADMIN, query, after=None), "idx_sessions_status_start"
    )
    assert not any("TEMP B-TREE" in s for s in steps)


async def test_active_listing_uses_the_partial_index(db: RecordingDatabase) -> None:
    for spelling in ("ACTIVE", "active"):  # a filter in either case is the same query
        query = ListQuery.model_validate({"status": spelling})

        async def listing(q: ListQuery = query) -> SessionPage:
            return await SqliteSessions(db).list(ADMIN, q, after=None)

        await assert_uses(db, listing, "idx_sessions_active")
    # students see ACTIVE sessions only: their listing is the same query
    steps = await assert_uses(
        db, lambda: SqliteSessions(db).list(STUDENT, ListQuery(), after=None), "idx_sessions_active"
    )
    assert not any("TEMP B-TREE" in s for s in steps)
    page = await SqliteSessions(db).list(STUDENT, ListQuery(limit=1), after=None)
    assert page.next_key
    await assert_uses(
        db,
        lambda: SqliteSessions(db).list(STUDENT, ListQuery(limit=1), after=page.next_key),
        "idx_sessions_active",
    )


async def test_owner_listing_uses_user_start(db: RecordingDatabase) -> None:
    steps = await assert_uses(
        db, lambda: SqliteSessions(db).list(TEACHER, ListQuery(), after=None), "idx_sessions_user_start"
    )
    assert not any("TEMP B-TREE" in s for s in steps)
    await assert_uses(
        db,
        lambda: SqliteSessions(db).list(ADMIN, ListQuery(user_id="u-teacher"), after=None),
        "idx_sessions_user_start",
    )
    await assert_uses(
        db,
        lambda: SqliteSessions(db).list(TEACHER, ListQuery(status="ACTIVE"), after=None),
        "idx_sessions_user_start",
    )


@pytest.mark.parametrize(
    "query",
    [ListQuery(ended_after=1), ListQuery(ended_before=2**40), ListQuery(ended_after=1, ended_before=2**40)],
    ids=["after", "before", "between"],
)
async def test_ended_range_uses_end_time(db: RecordingDatabase, query: ListQuery) -> None:
    await assert_uses(db, lambda: SqliteSessions(db).list(ADMIN, query, after=None), "idx_sessions_end_time")


async def test_ended_range_with_status_uses_status_end(db: RecordingDatabase) -> None:
    await assert_uses(
        db,
        lambda: SqliteSessions(db).list(ADMIN, ListQuery(status="COMPLETED", ended_after=1), after=None),
        "idx_sessions_status_end",
    )


@pytest.mark.parametrize(
    "query",
    [ListQuery(created_after=1), ListQuery(created_before=2**40), ListQuery(created_after=1, created_before=2**40)],
    ids=["after", "before", "between"],
)
async def test_created_range_uses_created_at(db: RecordingDatabase, query: ListQuery) -> None:
    await assert_uses(db, lambda: SqliteSessions(db).list(ADMIN, query, after=None), "idx_sessions_created_at")


@pytest.mark.parametrize(
    "rule", [{"older_than_days": 1.0}, {"keep_newest": 1}, {"keep_newest": 0, "older_than_days": 0.0}]
)
async def test_cleanup_uses_status_end(db: RecordingDatabase, rule: dict[str, Any]) -> None:
    statements = await captured(db, lambda: maintenance.cleanup(db, **rule), "sessions")
    selects = [(sql, p) for sql, p in statements if sql.lstrip().startswith("SELECT session_id")]
    assert selects
    for sql, params in selects:  # every selection of doomed rows goes through the (status, end_time) index
        assert any("idx_sessions_status_end" in step for step in plan(db.path, sql, params)), sql


async def test_stats_counts_by_status_use_status_index(db: RecordingDatabase) -> None:
    await assert_uses(db, lambda: SqliteSessions(db).stats(ADMIN), "idx_sessions_status")
    await assert_uses(db, lambda: SqliteSessions(db).stats(TEACHER), "idx_sessions_user_start")


async def test_events_of_a_session_use_session_index(db: RecordingDatabase) -> None:
    page = await SqliteSessions(db).list(ADMIN, ListQuery(limit=1), after=None)
    sid = json.loads(page.sessions_json)[0]["session_id"]
    steps = await assert_uses(
        db,
        lambda: SqliteSessions(db).list_events(ADMIN, sid, EventsQuery(), after=0),
        "idx_events_session",
        table="session_events",
    )
    assert not any("TEMP B-TREE" in s for s in steps)
    await assert_uses(
        db,
        lambda: SqliteSessions(db).get(ADMIN, sid, with_events=True),
        "idx_events_session",
        table="session_events",
    )


async def test_every_declared_index_exists(db: RecordingDatabase) -> None:
    rows = await db.read("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    ddl = {r[0]: " ".join(r[1].split()) for r in rows}
    assert "ON sessions (start_time DESC)" in ddl["idx_sessions_start_time"]
    assert "ON sessions (status)" in ddl["idx_sessions_status"]
    assert "ON sessions (end_time DESC)" in ddl["idx_sessions_end_time"]
    assert "ON sessions (created_at DESC)" in ddl["idx_sessions_created_at"]
    assert "ON sessions (status, start_time DESC)" in ddl["idx_sessions_status_start"]
    assert "ON sessions (status, end_time DESC)" in ddl["idx_sessions_status_end"]
    assert "ON sessions (user_id, start_time DESC)" in ddl["idx_sessions_user_start"]
    assert ddl["idx_sessions_active"].endswith(
        "ON sessions (start_time DESC) WHERE status = 'ACTIVE' AND end_time IS NULL"
    )
    assert "ON session_events (session_id, id)" in ddl["idx_events_session"]
    assert "ON session_events (timestamp DESC)" in ddl["idx_events_timestamp"]
