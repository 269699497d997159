"""The listing queries the store sends are served by the indexes made for them (EXPLAIN of the exact SQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from service.auth import Principal
from service.sessions.models import ListQuery
from service.storage.postgres.engine import Engine
from service.storage.postgres.sessions import PostgresSessions

ADMIN = Principal(id="admin-1", role="admin", username="admin", profile={})
TEACHER = Principal(id="teacher-7", role="teacher", username="t7", profile={})
STUDENT = Principal(id="student-1", role="student", username="s1", profile={})


class RecordingEngine(Engine):
    """Keeps the last single-statement read's SQL and arguments, to EXPLAIN exactly what the store ran."""

    last: tuple[str, tuple[Any, ...]] = ("", ())

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.last = (sql, args)
        return await super().fetch(sql, *args)


@pytest.fixture
async def engine(pg_dsn: str) -> AsyncIterator[RecordingEngine]:
    engine = RecordingEngine(pg_dsn, pool_size=2)
    await engine.open()
    async with engine.unit("write") as conn:
        # 20k sessions of 50 teachers, 1 in 100 still active; start times spread over time
        await conn.execute(
            "INSERT INTO sessions (session_id, user_id, start_time, end_time, start_state, end_state, current_state, "
            "status, metadata, created_at, updated_at) "
            "SELECT md5(i::text), 'teacher-' || (i % 50), 1000000 + i * 1000, "
            "CASE WHEN i % 100 = 0 THEN NULL ELSE 1000000 + i * 1000 + 500 END, 0, "
            "CASE WHEN i % 100 = 0 THEN NULL ELSE 0 END, 0, "
            "CASE WHEN i % 100 = 0 THEN 'ACTIVE' ELSE 'COMPLETED' END, "
            "jsonb_build_object('name', 'n' || i, 'category', 'c' || (i % 10)), 1000000 + i * 1000, 1000000 + i * 1000 "
            "FROM generate_series(1, 20000) AS i"
        )
    async with engine.connection() as conn:
        await conn.execute("ANALYZE sessions")
    yield engine
    await engine.close()


def index_names(plan: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if "Index Name" in plan:
            found.add(plan["Index Name"])
        for value in plan.values():
            found |= index_names(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= index_names(value)
    return found


async def plan_of(engine: RecordingEngine, who: Principal, query: ListQuery, after: tuple[int, str] | None) -> set[str]:
    store = PostgresSessions(engine)
    await store.list(who, query, after=after)
    sql, args = engine.last
    async with engine.connection() as conn:
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    return index_names(json.loads(plan))


CASES = [
    ("student", STUDENT, ListQuery(limit=50), None, "idx_sessions_active"),
    ("active", ADMIN, ListQuery(status="ACTIVE", limit=50), None, "idx_sessions_active"),
    ("keyset-first", ADMIN, ListQuery(limit=50), None, "idx_sessions_start_time"),
    ("keyset-next", ADMIN, ListQuery(limit=50), (15_000_000, "0"), "idx_sessions_start_time"),
    ("teacher", TEACHER, ListQuery(limit=50), None, "idx_sessions_user_start"),
    ("teacher-next", TEACHER, ListQuery(limit=50), (15_000_000, "0"), "idx_sessions_user_start"),
    ("by-owner", ADMIN, ListQuery(user_id="teacher-3", limit=50), None, "idx_sessions_user_start"),
]


async def test_each_listing_uses_its_index(engine: RecordingEngine) -> None:
    # one table filled once for every case (filling it costs more than planning)
    for name, who, query, after, index in CASES:
        used = await plan_of(engine, who, query, after)
        assert index in used, f"{name}: expected {index}, plan used {sorted(used)}"
