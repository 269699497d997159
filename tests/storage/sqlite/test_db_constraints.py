"""Every CHECK, the foreign key and the cascade, straight in SQL on a migrated database file."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.sessions.domain import (
    ACTIVE,
    END_STATUSES,
    MAX_EVENT_TYPE_LEN,
    MAX_STATE,
    MIN_STATE,
    OPEN_STATUSES,
    STATUSES,
)
from service.storage.sqlite import ddl, migrations
from service.storage.sqlite.database import _apply_pragmas

COLUMNS = (
    "session_id",
    "user_id",
    "start_time",
    "end_time",
    "start_state",
    "end_state",
    "current_state",
    "status",
    "metadata",
    "created_at",
    "updated_at",
)
GOOD_ACTIVE: dict[str, Any] = {
    "session_id": "s-active",
    "user_id": "u",
    "start_time": 1_000,
    "end_time": None,
    "start_state": 0,
    "end_state": None,
    "current_state": 0,
    "status": "ACTIVE",
    "metadata": '{"name": "x"}',
    "created_at": 1_000,
    "updated_at": 1_000,
}
GOOD_ENDED = {**GOOD_ACTIVE, "session_id": "s-ended", "end_time": 2_000, "end_state": 8, "status": "COMPLETED"}


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A database file migrated by the service's own migration, with the service's connection pragmas."""
    c = sqlite3.connect(tmp_path / "constraints.db", isolation_level=None)
    _apply_pragmas(
        c, cache_kib=1024, busy_ms=1000, synchronous="NORMAL", wal_autocheckpoint=1000, journal_size_limit=2**26
    )
    assert migrations.migrate(c) == [f"applied schema migration v{n}" for n in range(1, migrations.SCHEMA_VERSION + 1)]
    yield c
    c.close()


def insert(conn: sqlite3.Connection, **overrides: Any) -> None:
    row = {**GOOD_ACTIVE, **overrides}
    marks = ", ".join(f":{c}" for c in COLUMNS)
    conn.execute(f"INSERT INTO sessions ({', '.join(COLUMNS)}) VALUES ({marks})", row)  # noqa: S608 - constants


def add_event(conn: sqlite3.Connection, session_id: str, event_type: str = "E", data: str | None = None) -> None:
    conn.execute(
        "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, ?, 1, ?)",
        (session_id, event_type, data),
    )


def test_valid_rows_are_accepted(conn: sqlite3.Connection) -> None:
    insert(conn)
    insert(conn, **GOOD_ENDED)
    for status in ("CANCELLED", "FAULTED"):
        insert(conn, **{**GOOD_ENDED, "session_id": status, "status": status})
    insert(conn, session_id="same-ms", end_time=1_000, end_state=0, status="COMPLETED")  # end == start is fine
    insert(conn, session_id="bounds", start_state=8, current_state=8)
    insert(conn, session_id="inactive", status="INACTIVE")  # open, like ACTIVE: no end time
    add_event(conn, "s-active", data='{"a": 1}')
    add_event(conn, "s-active", data=None)
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 7


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"start_state": -1}, "start_state below 0"),
        ({"start_state": 9}, "start_state above 8"),
        ({"current_state": 9}, "current_state above 8"),
        ({"current_state": -1}, "current_state below 0"),
        ({**GOOD_ENDED, "end_state": 9}, "end_state above 8"),
        ({**GOOD_ENDED, "end_state": -1}, "end_state below 0"),
        ({"status": "DONE"}, "unknown status"),
        ({"status": "active"}, "status is case-sensitive"),
        ({"status": ""}, "empty status"),
        ({"end_time": 5_000, "end_state": 1}, "ACTIVE with an end_time"),
        ({"status": "COMPLETED"}, "ended without end_time"),
        ({"status": "CANCELLED", "end_state": 1}, "ended without end_time, with end_state"),
        ({**GOOD_ENDED, "end_state": None}, "ended without end_state"),
        ({"end_state": 3}, "ACTIVE with an end_state"),
        ({"status": "INACTIVE", "end_time": 5_000, "end_state": 1}, "INACTIVE with an end_time"),
        ({"status": "INACTIVE", "end_state": 1}, "INACTIVE with an end_state"),
        ({"status": "inactive"}, "inactive is case-sensitive"),
        ({**GOOD_ENDED, "end_time": 999}, "end_time before start_time"),
        ({"metadata": "{not json"}, "invalid metadata JSON"),
        ({"metadata": "[1, 2]"}, "metadata array"),
        ({"metadata": '"text"'}, "metadata string"),
        ({"metadata": "42"}, "metadata number"),
        ({"metadata": "null"}, "metadata JSON null"),
        ({"metadata": ""}, "empty metadata"),
    ],
)
def test_check_rejects(conn: sqlite3.Connection, overrides: dict[str, Any], why: str) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        insert(conn, **overrides)
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0, why


@pytest.mark.parametrize(
    "column", ["user_id", "start_time", "start_state", "current_state", "status", "metadata", "created_at"]
)
def test_not_null(conn: sqlite3.Connection, column: str) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        insert(conn, **{column: None})


def test_checks_hold_on_update(conn: sqlite3.Connection) -> None:
    insert(conn)
    for statement in (
        "UPDATE sessions SET status = 'COMPLETED'",  # ended without end_time
        "UPDATE sessions SET end_time = 5000, end_state = 1",  # ACTIVE with end_time
        "UPDATE sessions SET status = 'COMPLETED', end_time = 10, end_state = 1",  # end before start
        "UPDATE sessions SET current_state = 12",
        "UPDATE sessions SET metadata = json_array(1)",
        "UPDATE sessions SET metadata = 'nope'",
    ):
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(statement)
    assert conn.execute("SELECT status, end_time, current_state, metadata FROM sessions").fetchone() == (
        "ACTIVE",
        None,
        0,
        '{"name": "x"}',
    )


def test_primary_key_is_unique(conn: sqlite3.Connection) -> None:
    insert(conn)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        insert(conn)


def test_events_foreign_key_and_checks(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        add_event(conn, "no-such-session")
    insert(conn)
    for event_type, data in (("", None), ("X" * 65, None), ("E", "{broken"), ("E", "")):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            add_event(conn, "s-active", event_type, data)
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        conn.execute("INSERT INTO session_events (session_id, event_type) VALUES ('s-active', 'E')")
    # a session cannot be re-keyed away from its events
    add_event(conn, "s-active")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute("UPDATE session_events SET session_id = 'ghost'")


def test_cascade_delete_removes_only_that_sessions_events(conn: sqlite3.Connection) -> None:
    insert(conn)
    insert(conn, **GOOD_ENDED)
    for _ in range(3):
        add_event(conn, "s-active")
        add_event(conn, "s-ended")
    conn.execute("DELETE FROM sessions WHERE session_id = 's-ended'")
    assert conn.execute("SELECT session_id, count(*) FROM session_events GROUP BY session_id").fetchall() == [
        ("s-active", 3)
    ]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_schema_checks_agree_with_the_domain_constants(conn: sqlite3.Connection) -> None:
    """ddl.py spells the domain's values literally (a released migration never changes): they must agree."""
    [listed, open_listed] = re.findall(r"status IN \(([^)]*)\)", ddl.SESSIONS_V2_DDL)
    assert tuple(re.findall(r"'([A-Z]+)'", listed)) == STATUSES
    assert tuple(re.findall(r"'([A-Z]+)'", open_listed)) == OPEN_STATUSES
    for open_status in OPEN_STATUSES:
        insert(conn, session_id=open_status, status=open_status)
    insert(conn, session_id="active", status=ACTIVE)
    for status in END_STATUSES:
        insert(conn, **{**GOOD_ENDED, "session_id": status, "status": status})
    for n, state in enumerate((MIN_STATE, MAX_STATE)):
        insert(conn, session_id=f"state-{n}", start_state=state, current_state=state)
        insert(conn, **{**GOOD_ENDED, "session_id": f"end-state-{n}", "end_state": state})
    for column in ("start_state", "current_state", "end_state"):
        for state in (MIN_STATE - 1, MAX_STATE + 1):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                insert(conn, **{**GOOD_ENDED, "session_id": "out-of-range", column: state})
    add_event(conn, "active", "E" * MAX_EVENT_TYPE_LEN)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        add_event(conn, "active", "E" * (MAX_EVENT_TYPE_LEN + 1))


def test_migration_is_idempotent_and_versioned(conn: sqlite3.Connection) -> None:
    before = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
    assert migrations.migrate(conn) == []
    assert conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall() == before
    names = {r[1] for r in before}
    expected = {
        "idx_sessions_start_time",
        "idx_sessions_status",
        "idx_sessions_end_time",
        "idx_sessions_created_at",
        "idx_sessions_status_start",
        "idx_sessions_status_end",
        "idx_sessions_user_start",
        "idx_sessions_active",
        "idx_events_session",
        "idx_events_timestamp",
        "library_files",
        "idx_library_filename",
    }
    assert expected <= names
    partial = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'idx_sessions_active'").fetchone()[0]
    assert "WHERE status = 'ACTIVE' AND end_time IS NULL" in partial


def test_newer_schema_is_refused(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        migrations.migrate(conn)


def test_failed_migration_leaves_database_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "half.db"
    c = sqlite3.connect(path, isolation_level=None)
    try:

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute(ddl.SESSIONS_DDL)
            raise RuntimeError("boom")

        monkeypatch.setattr(migrations, "MIGRATIONS", [broken])
        with pytest.raises(RuntimeError, match="boom"):
            migrations.migrate(c)
        assert c.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        assert c.execute("PRAGMA user_version").fetchone()[0] == 0
        assert not c.in_transaction
    finally:
        c.close()
