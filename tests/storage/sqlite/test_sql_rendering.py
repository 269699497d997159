"""The JSON that SQLite renders for reads is the same document that Python renders for writes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.auth import Principal
from service.sessions.models import EventCreate, ListQuery, RagSettings, SessionCreate, SessionEnd, SessionPatch
from service.sessions.render import event_out, session_out
from service.storage.sqlite import Database, sessions
from service.storage.sqlite.sessions import SqliteSessions
from service.timeutil import iso

ADMIN = Principal(id="u-admin", role="admin", username="admin", profile={})
TEACHER = Principal(id="u-teacher", role="teacher", username="t", profile={})


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database(str(tmp_path / "render.db"))
    await database.open()
    yield database
    await database.close()


async def _python_rendering(db: Database, session_id: str) -> dict[str, object]:
    def run(conn: sqlite3.Connection) -> tuple[sqlite3.Row, list[sqlite3.Row]]:
        row = conn.execute(f"SELECT {sessions.SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,))  # noqa: S608
        events = conn.execute(
            f"SELECT {sessions.EVENT_COLUMNS} FROM session_events WHERE session_id = ? ORDER BY id",  # noqa: S608
            (session_id,),
        )
        return row.fetchone(), events.fetchall()

    row, events = await db.read_fn(run)
    out = session_out(row)
    out["events"] = [event_out(e) for e in events]
    out["events_truncated"] = False
    return out


async def test_sql_and_python_renderings_agree(db: Database) -> None:
    limit = 1 << 20
    plain = await SqliteSessions(db).create(TEACHER, SessionCreate(name="plain"), max_metadata_bytes=limit)
    rich = await SqliteSessions(db).create(
        TEACHER,
        SessionCreate(
            name='Ünïcødé ✓ "quoted" \\ back',
            category="bio",
            description="line\nbreak\ttab",
            start_state=3,
            metadata={"nested": {"a": [1, 2.5, None, True, {"b": "c"}]}, "empty": {}, "big": 2**53, "f": 0.1},
            rag_settings=RagSettings(top_k=7, use_rerank=True, min_score=0.25),
        ),
        max_metadata_bytes=limit,
    )
    sid = rich["session_id"]
    old_client = await SqliteSessions(db).create(
        TEACHER,
        SessionCreate(
            name="old",
            category="general",
            description="",
            grade_level="9",
            subject_area="Biyoloji",
            learning_objectives=["Hücreyi tanır", 'a "quoted" one'],
            tags=["bio", "ünite-1"],
            is_public=True,
            created_by="someone-else",
        ),
        max_metadata_bytes=limit,
    )
    await SqliteSessions(db).patch(
        TEACHER,
        old_client["session_id"],
        SessionPatch(tags=[], is_public=False, grade_level=None, subject_area="Fen"),
        max_metadata_bytes=limit,
    )
    # legacy metadata may hold the old fields with other types: both renderings fall back to the defaults
    odd_meta = '{"name": 1, "description": 5, "tags": "bio", "learning_objectives": {"a": 1}, "is_public": 1}'
    await db.write(
        lambda conn: conn.execute(
            f"INSERT INTO sessions ({sessions.SESSION_COLUMNS}) VALUES ('odd', 'u-teacher', 5, NULL, 0, NULL, 0, "  # noqa: S608
            "'ACTIVE', ?, 5, 5)",
            (odd_meta,),
        )
    )
    await SqliteSessions(db).append_event(TEACHER, sid, EventCreate(state=5, event_data={"why": "x" * 30}))
    await SqliteSessions(db).append_event(TEACHER, sid, EventCreate(event_type="CUSTOM_THING", event_data=None))
    await SqliteSessions(db).patch(
        TEACHER, sid, SessionPatch(description=None, metadata={"empty": None, "k": "v"}), max_metadata_bytes=limit
    )
    await SqliteSessions(db).end(TEACHER, sid, SessionEnd(status="FAULTED", end_state=8))

    for session_id in (plain["session_id"], sid, old_client["session_id"], "odd"):
        from_sql = json.loads(await SqliteSessions(db).get(ADMIN, session_id, with_events=True))
        assert from_sql == await _python_rendering(db, session_id)
        without = json.loads(await SqliteSessions(db).get(ADMIN, session_id, with_events=False))
        assert without == {k: v for k, v in from_sql.items() if k not in ("events", "events_truncated")}

    page = await SqliteSessions(db).list(ADMIN, ListQuery(limit=10), after=None)
    listed = json.loads(page.sessions_json)
    assert {s["session_id"] for s in listed} == {plain["session_id"], sid, old_client["session_id"], "odd"}
    for doc in listed:
        expected = await _python_rendering(db, doc["session_id"])
        assert doc == {k: v for k, v in expected.items() if k not in ("events", "events_truncated")}
    by_id = {d["session_id"]: d for d in listed}
    assert {k: by_id["odd"][k] for k in ("description", "tags", "learning_objectives", "is_public")} == {
        "description": "",
        "tags": [],
        "learning_objectives": [],
        "is_public": False,
    }
    changed = by_id[old_client["session_id"]]
    assert (changed["grade_level"], changed["subject_area"], changed["tags"], changed["is_public"]) == (
        "",
        "Fen",
        [],
        False,
    )
    assert changed["learning_objectives"] == ["Hücreyi tanır", 'a "quoted" one']
    assert changed["created_by"] == changed["user_id"] == TEACHER.id and changed["metadata"] == {}
    assert changed["last_accessed"] == changed["updated_at"] and changed["user_rating"] == 0.0


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # up to 9999-12-31T23:59:59.999Z
def test_sql_iso_matches_python_iso(ms: int) -> None:
    conn = sqlite3.connect(":memory:")
    try:
        (value,) = conn.execute(f"SELECT {sessions._iso_sql('?1')}", (ms,)).fetchone()
    finally:
        conn.close()
    assert value == iso(ms)
