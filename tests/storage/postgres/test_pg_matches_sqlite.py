"""The same operations on both engines give the same documents (ids and clocks aside).

Both through the storage interface: ``SqliteStorage`` on a real file, ``PostgresStorage`` on a fresh database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.auth import Principal
from service.sessions.models import (
    EventCreate,
    EventsQuery,
    RagSettings,
    SessionCreate,
    SessionEnd,
    SessionPatch,
    StatusUpdate,
)
from service.storage.postgres import PostgresStorage
from service.storage.sqlite import SqliteStorage

TEACHER = Principal(id="teacher-1", role="teacher", username="t1", profile={})
MAX_META = 65536
VOLATILE = {"session_id", "id", "start_time", "end_time", "created_at", "updated_at", "last_accessed", "timestamp"}


def stable(value: Any) -> Any:
    """The document without ids and clock readings (``*_ms`` too), for comparing two engines' answers."""
    if isinstance(value, dict):
        return {
            k: stable(v) for k, v in value.items() if k not in VOLATILE and not k.endswith("_ms") and k != "duration_ms"
        }
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


@pytest.fixture
async def sqlite_side(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    storage = SqliteStorage.at(str(tmp_path / "compare.db"))
    await storage.open()
    yield storage
    await storage.close()


async def test_a_session_lifecycle_answers_alike(pg_storage: PostgresStorage, sqlite_side: SqliteStorage) -> None:
    create = SessionCreate(
        name="algebra",
        category="math",
        tags=["a"],
        is_public=True,
        metadata={"room": {"no": 1, "floor": 2}, "ü": [1, None]},
        rag_settings=RagSettings(top_k=5),
    )
    patch = SessionPatch.model_validate(
        {"category": None, "description": "d", "tags": ["b"], "metadata": {"room": {"no": None}, "new": {"a": None}}}
    )
    event = EventCreate(event_type="NOTE", event_data={"b": 2, "a": 1}, state=4)

    pg, sq = pg_storage.sessions, sqlite_side.sessions
    answers: list[tuple[Any, Any]] = []
    p_created = await pg.create(TEACHER, create, max_metadata_bytes=MAX_META)
    s_created = await sq.create(TEACHER, create, max_metadata_bytes=MAX_META)
    answers.append((p_created, s_created))
    p_id, s_id = p_created["session_id"], s_created["session_id"]
    answers.append(
        (
            await pg.patch(TEACHER, p_id, patch, max_metadata_bytes=MAX_META),
            await sq.patch(TEACHER, s_id, patch, max_metadata_bytes=MAX_META),
        )
    )
    answers.append(
        (
            await pg.append_event(TEACHER, p_id, event),
            await sq.append_event(TEACHER, s_id, event),
        )
    )
    status = StatusUpdate(status="INACTIVE")
    answers.append(
        (await pg.set_status(TEACHER, p_id, status), await sq.set_status(TEACHER, s_id, status))
    )
    answers.append(
        (
            json.loads(await pg.get(TEACHER, p_id, with_events=True)),
            json.loads(await sq.get(TEACHER, s_id, with_events=True)),
        )
    )
    end = SessionEnd(status="CANCELLED", end_state=7)
    answers.append((await pg.end(TEACHER, p_id, end), await sq.end(TEACHER, s_id, end)))
    p_events = await pg.list_events(TEACHER, p_id, EventsQuery(), after=0)
    s_events = await sq.list_events(TEACHER, s_id, EventsQuery(), after=0)
    answers.append((p_events.events, s_events.events))
    answers.append((await pg.stats(TEACHER), await sq.stats(TEACHER)))
    answers.append((await pg.delete(TEACHER, p_id), await sq.delete(TEACHER, s_id)))

    for number, (on_pg, on_sqlite) in enumerate(answers):
        assert stable(on_pg) == stable(on_sqlite), f"answer {number} differs"
