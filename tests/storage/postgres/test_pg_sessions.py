"""The session store on PostgreSQL through the interface: every operation, the access rules per role, races."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.auth import Principal
from service.errors import Conflict, NotFound, PayloadTooLarge
from service.sessions.models import (
    EventCreate,
    EventsQuery,
    ListQuery,
    SessionCreate,
    SessionEnd,
    SessionPatch,
    StatusUpdate,
)
from service.storage.base import SessionStore
from service.storage.postgres import PostgresStorage

ADMIN = Principal(id="admin-1", role="admin", username="admin", profile={})
TEACHER = Principal(id="teacher-1", role="teacher", username="t1", profile={})
OTHER = Principal(id="teacher-2", role="teacher", username="t2", profile={})
STUDENT = Principal(id="student-1", role="student", username="s1", profile={})
MAX_META = 65536


async def create(store: SessionStore, who: Principal = TEACHER, **fields: Any) -> str:
    body = SessionCreate.model_validate({"name": "lesson", **fields})
    out = await store.create(who, body, max_metadata_bytes=MAX_META)
    return str(out["session_id"])


async def doc(store: SessionStore, who: Principal, session_id: str, *, events: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(await store.get(who, session_id, with_events=events))
    return out


async def test_create_get_patch_append_end_delete(pg_storage: PostgresStorage) -> None:
    store = pg_storage.sessions
    created = await store.create(
        TEACHER,
        SessionCreate(name="algebra", category="math", tags=["a"], metadata={"room": {"no": 1, "floor": 2}}),
        max_metadata_bytes=MAX_META,
    )
    sid = created["session_id"]
    assert created["events"][0]["event_type"] == "SESSION_STARTED"
    assert created["status"] == "active" and created["user_id"] == TEACHER.id
    got = await doc(store, TEACHER, sid, events=True)
    assert {k: v for k, v in got.items() if k not in ("events", "events_truncated")} == {
        k: v for k, v in created.items() if k != "events"
    }
    assert [e["event_type"] for e in got["events"]] == ["SESSION_STARTED"]
    assert got["events_truncated"] is False

    patched = await store.patch(
        TEACHER,
        sid,
        SessionPatch.model_validate(
            {"category": None, "tags": ["b", "c"], "metadata": {"room": {"no": None}, "x": "é"}}
        ),
        max_metadata_bytes=MAX_META,
    )
    assert patched["category"] is None and patched["tags"] == ["b", "c"]
    assert patched["metadata"] == {"room": {"floor": 2}, "x": "é"}  # merged, not replaced; null removed a key
    with pytest.raises(PayloadTooLarge):
        await store.patch(TEACHER, sid, SessionPatch(metadata={"big": "x" * 400}), max_metadata_bytes=300)
    assert (await doc(store, TEACHER, sid))["metadata"] == {"room": {"floor": 2}, "x": "é"}  # nothing written

    appended = await store.append_event(TEACHER, sid, EventCreate(event_type="NOTE", event_data={"k": 1}, state=3))
    assert [e["event_type"] for e in appended["events"]] == ["NOTE", "STATE_CHANGED"]
    assert appended["current_state"] == 3
    status = await store.set_status(TEACHER, sid, StatusUpdate(status="INACTIVE"))
    assert status["updated_session"]["status"] == "inactive"
    again = await store.set_status(TEACHER, sid, StatusUpdate(status="INACTIVE"))
    assert again["updated_session"]["updated_at_ms"] == status["updated_session"]["updated_at_ms"]
    ended = await store.end(TEACHER, sid, SessionEnd(status="COMPLETED", end_state=5))
    assert ended["status"] == "completed" and ended["end_state"] == 5 and ended["duration_ms"] >= 0
    with pytest.raises(Conflict):
        await store.end(TEACHER, sid, SessionEnd(end_state=5))
    with pytest.raises(Conflict):
        await store.append_event(TEACHER, sid, EventCreate(event_type="NOTE"))
    with pytest.raises(Conflict):
        await store.set_status(TEACHER, sid, StatusUpdate(status="ACTIVE"))

    page = await store.list_events(TEACHER, sid, EventsQuery(limit=100), after=0)
    kinds = [e["event_type"] for e in page.events]
    assert kinds == [
        "SESSION_STARTED",
        "METADATA_UPDATED",
        "NOTE",
        "STATE_CHANGED",
        "STATUS_CHANGED",
        "STATE_CHANGED",
        "SESSION_ENDED",
    ]
    assert page.next_id is None
    first = await store.list_events(TEACHER, sid, EventsQuery(limit=3), after=0)
    rest = await store.list_events(TEACHER, sid, EventsQuery(limit=100), after=first.next_id or 0)
    assert [e["id"] for e in first.events + rest.events] == [e["id"] for e in page.events]

    deleted = await store.delete(TEACHER, sid)
    assert deleted == {"session_id": sid, "deleted": True, "events_deleted": 7}
    with pytest.raises(NotFound):
        await store.get(TEACHER, sid, with_events=False)
    with pytest.raises(NotFound):
        await store.list_events(ADMIN, sid, EventsQuery(), after=0)


async def test_access_rules_per_role(pg_storage: PostgresStorage) -> None:
    store = pg_storage.sessions
    mine = await create(store, TEACHER)
    inactive = await create(store, TEACHER)
    await store.set_status(TEACHER, inactive, StatusUpdate(status="INACTIVE"))
    theirs = await create(store, OTHER)

    for sid in (mine, inactive, theirs):
        await store.require(ADMIN, sid, "own")
    await store.require(TEACHER, mine, "own")
    with pytest.raises(NotFound):  # another teacher's session answers like a missing one
        await store.require(TEACHER, theirs, "see")
    with pytest.raises(NotFound):
        await store.get(TEACHER, theirs, with_events=True)
    with pytest.raises(NotFound):
        await store.patch(TEACHER, theirs, SessionPatch(name="x"), max_metadata_bytes=MAX_META)
    # students see active sessions only, and change none
    await store.require(STUDENT, mine, "see")
    with pytest.raises(NotFound):
        await store.require(STUDENT, inactive, "see")
    with pytest.raises(NotFound):
        await store.require(STUDENT, mine, "own")
    with pytest.raises(NotFound):
        await store.append_event(STUDENT, mine, EventCreate(event_type="NOTE"))
    with pytest.raises(NotFound):
        await store.end(STUDENT, mine, SessionEnd(end_state=0))
    with pytest.raises(NotFound):
        await store.delete(OTHER, mine)

    async def listed(who: Principal, **q: Any) -> set[str]:
        page = await store.list(who, ListQuery.model_validate({"limit": 100, **q}), after=None)
        return {s["session_id"] for s in json.loads(page.sessions_json)}

    assert await listed(ADMIN) == {mine, inactive, theirs}
    assert await listed(ADMIN, user_id=OTHER.id) == {theirs}
    assert await listed(ADMIN, status="inactive") == {inactive}
    assert await listed(TEACHER) == {mine, inactive}
    assert await listed(STUDENT) == {mine, theirs}
    stats = await store.stats(TEACHER)
    assert stats["total"] == 2 and stats["by_status"]["inactive"] == 1
    assert (await store.stats(ADMIN))["total"] == 3


async def test_list_pages_walk_every_session_once_newest_first(pg_storage: PostgresStorage) -> None:
    store = pg_storage.sessions
    ids = {await create(store, TEACHER, category="c" if i % 2 else "d") for i in range(11)}
    seen: list[dict[str, Any]] = []
    after: tuple[int, str] | None = None
    while True:
        page = await store.list(TEACHER, ListQuery(limit=3), after=after)
        seen.extend(json.loads(page.sessions_json))
        if page.next_key is None:
            break
        after = page.next_key
    assert [s["session_id"] for s in seen] == [
        s["session_id"] for s in sorted(seen, key=lambda s: (-s["start_time_ms"], s["session_id"]))
    ]
    assert {s["session_id"] for s in seen} == ids and len(seen) == 11
    cats = await store.list(TEACHER, ListQuery(limit=100, category="c"), after=None)
    assert len(json.loads(cats.sessions_json)) == 5


async def test_stats_durations_and_types(pg_storage: PostgresStorage) -> None:
    store = pg_storage.sessions
    for i in range(3):
        sid = await create(store, TEACHER)
        await store.end(TEACHER, sid, SessionEnd(status="COMPLETED" if i else "FAULTED", end_state=0))
    await create(store, TEACHER)
    stats = await store.stats(TEACHER)
    assert stats["total"] == 4
    assert stats["by_status"] == {"active": 1, "inactive": 0, "completed": 2, "cancelled": 0, "faulted": 1}
    durations = stats["durations"]
    assert durations["count"] == 3
    assert isinstance(durations["avg_ms"], float)  # avg() is numeric (Decimal) in PostgreSQL
    assert isinstance(durations["p50_ms"], int) and isinstance(durations["p95_ms"], int)
    assert stats["events_by_type"] == {"SESSION_STARTED": 4, "SESSION_ENDED": 3}
    empty = await store.stats(OTHER)
    assert empty["durations"] == {"count": 0, "avg_ms": None, "p50_ms": None, "p95_ms": None}


async def test_racing_ends_give_one_success_and_one_conflict(pg_storage: PostgresStorage) -> None:
    store = pg_storage.sessions
    for _ in range(5):
        sid = await create(store, TEACHER)
        results = await asyncio.gather(
            store.end(TEACHER, sid, SessionEnd(status="COMPLETED", end_state=1)),
            store.end(ADMIN, sid, SessionEnd(status="CANCELLED", end_state=2)),
            return_exceptions=True,
        )
        ok = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, Conflict)]
        assert len(ok) == 1 and len(refused) == 1, results
        page = await store.list_events(ADMIN, sid, EventsQuery(), after=0)
        assert [e["event_type"] for e in page.events].count("SESSION_ENDED") == 1


async def test_concurrent_appends_get_ids_in_commit_order(pg_storage: PostgresStorage) -> None:
    """Each STATE_CHANGED records the state it found under the row lock: by id, each `from` is the previous `to`."""
    store = pg_storage.sessions
    sid = await create(store, TEACHER)
    await asyncio.gather(*(store.append_event(TEACHER, sid, EventCreate(state=i % 9)) for i in range(1, 41)))
    page = await store.list_events(TEACHER, sid, EventsQuery(limit=100), after=0)
    changes = [e["event_data"] for e in page.events if e["event_type"] == "STATE_CHANGED"]
    assert len(changes) == 40
    assert changes[0]["from"] == 0
    for before, after in zip(changes, changes[1:], strict=False):
        assert after["from"] == before["to"]
    assert (await doc(store, TEACHER, sid))["current_state"] == changes[-1]["to"]


async def test_cleanup_deletes_ended_sessions_beyond_the_rule_never_open_ones(pg_storage: PostgresStorage) -> None:
    store = pg_storage.sessions
    ended = []
    for _ in range(4):
        sid = await create(store, TEACHER)
        await store.end(TEACHER, sid, SessionEnd(end_state=0))
        ended.append(sid)
    open_one = await create(store, TEACHER)
    result = await pg_storage.cleanup(keep_newest=1)
    assert result.deleted_sessions == 3 and result.deleted_events == 6
    assert (await pg_storage.cleanup(older_than_days=365)).deleted_sessions == 0  # none ended a year ago
    assert (await pg_storage.cleanup(keep_newest=0)).deleted_sessions == 1
    assert (await doc(store, TEACHER, open_one))["status"] == "active"
    with pytest.raises(ValueError, match="keep_newest"):
        await pg_storage.cleanup()


async def test_backup_is_left_to_postgres_tools(pg_storage: PostgresStorage) -> None:
    from service.storage.base import NotSupportedByEngine

    with pytest.raises(NotSupportedByEngine, match="pg_dump") as caught:
        await pg_storage.backup("/tmp")
    assert caught.value.status == 501
    assert await pg_storage.schema_version() is not None and pg_storage.engine == "postgres"


async def test_postgres_storage_is_a_storage(pg_storage: PostgresStorage) -> None:
    from service.storage.base import Storage

    storage: Storage = pg_storage  # mypy checks the whole interface structurally
    assert storage.engine == "postgres" and storage.migrations_applied == []


async def test_ties_on_start_time_order_by_session_id_bytewise(pg_storage: PostgresStorage) -> None:
    """As SQLite orders them (binary), whatever the database's locale: ``session_id`` is ``COLLATE "C"``."""
    ids = ["b", "B", "_a", "a", "é", "Z9"]
    async with pg_storage.db.unit("write") as conn:
        await conn.executemany(
            "INSERT INTO sessions (session_id, user_id, start_time, start_state, current_state, status, "
            "created_at, updated_at) VALUES ($1, 'u', 1000, 0, 0, 'ACTIVE', 1000, 1000)",
            [(i,) for i in ids],
        )
    walked: list[str] = []
    after: tuple[int, str] | None = None
    while True:
        page = await pg_storage.sessions.list(ADMIN, ListQuery(limit=2), after=after)
        walked.extend(s["session_id"] for s in json.loads(page.sessions_json))
        if page.next_key is None:
            break
        after = page.next_key
    assert walked == sorted(ids)  # code point order, SQLite's BINARY collation


async def test_concurrent_patches_and_counter_adds_lose_nothing(pg_storage: PostgresStorage) -> None:
    store = pg_storage.sessions
    sid = await create(store, TEACHER)
    await asyncio.gather(
        *(
            store.patch(TEACHER, sid, SessionPatch(metadata={f"k{i}": i}), max_metadata_bytes=MAX_META)
            for i in range(20)
        ),
        *(pg_storage.rag.record(sid, "RAG_QUERY", {"n": i}, add={"query_count": 1}) for i in range(20)),
    )
    got = await doc(store, TEACHER, sid)
    assert got["metadata"] == {f"k{i}": i for i in range(20)}
    assert got["query_count"] == 20
