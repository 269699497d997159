"""The same operations on both engines give the same documents (ids and clocks aside).

The SQLite side is reached through today's functions (``service/sessions/store.py`` on ``service.db.Database``);
``sqlite_side`` is the one place to repoint when the SQLite engine is reached through ``service.storage`` too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.auth import Principal
from service.db import Database
from service.sessions import store as sqlite_store
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
async def sqlite_side(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(str(tmp_path / "compare.db"))
    await db.open()
    yield db
    await db.close()


async def test_a_session_lifecycle_answers_alike(pg_storage: PostgresStorage, sqlite_side: Database) -> None:
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

    pg, sqlite_db = pg_storage.sessions, sqlite_side
    answers: list[tuple[Any, Any]] = []
    p_created = await pg.create(TEACHER, create, max_metadata_bytes=MAX_META)
    s_created = await sqlite_store.create_session(sqlite_db, TEACHER, create, max_metadata_bytes=MAX_META)
    answers.append((p_created, s_created))
    p_id, s_id = p_created["session_id"], s_created["session_id"]
    answers.append(
        (
            await pg.patch(TEACHER, p_id, patch, max_metadata_bytes=MAX_META),
            await sqlite_store.patch_session(sqlite_db, TEACHER, s_id, patch, max_metadata_bytes=MAX_META),
        )
    )
    answers.append(
        (
            await pg.append_event(TEACHER, p_id, event),
            await sqlite_store.append_event(sqlite_db, TEACHER, s_id, event),
        )
    )
    status = StatusUpdate(status="INACTIVE")
    answers.append(
        (await pg.set_status(TEACHER, p_id, status), await sqlite_store.set_status(sqlite_db, TEACHER, s_id, status))
    )
    answers.append(
        (
            json.loads(await pg.get(TEACHER, p_id, with_events=True)),
            json.loads(await sqlite_store.get_session(sqlite_db, TEACHER, s_id, with_events=True)),
        )
    )
    end = SessionEnd(status="CANCELLED", end_state=7)
    answers.append((await pg.end(TEACHER, p_id, end), await sqlite_store.end_session(sqlite_db, TEACHER, s_id, end)))
    p_events = await pg.list_events(TEACHER, p_id, EventsQuery(), after=0)
    s_events = await sqlite_store.list_events(sqlite_db, TEACHER, s_id, EventsQuery(), secret="s" * 32)
    answers.append((p_events.events, s_events["events"]))
    answers.append((await pg.stats(TEACHER), await sqlite_store.stats(sqlite_db, TEACHER)))
    answers.append((await pg.delete(TEACHER, p_id), await sqlite_store.delete_session(sqlite_db, TEACHER, s_id)))

    for number, (on_pg, on_sqlite) in enumerate(answers):
        assert stable(on_pg) == stable(on_sqlite), f"answer {number} differs"
