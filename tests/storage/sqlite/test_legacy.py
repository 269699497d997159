"""Migration of a legacy database (ISO text timestamps, events as one JSON blob) to schema v1."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.storage.sqlite import Database, ddl, legacy, legacy_rows, migrations

COLUMNS = (
    "session_id",
    "start_time",
    "end_time",
    "start_state",
    "end_state",
    "status",
    "events",
    "metadata",
    "created_at",
    "updated_at",
)
LEGACY_DDL = ddl.LEGACY_SESSIONS_DDL
LEGACY_INSERT = "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# The legacy gateway's own indexes: their names collide with the new schema's.
LEGACY_INDEXES = (
    "CREATE INDEX idx_sessions_start_time ON sessions (start_time)",
    "CREATE INDEX idx_sessions_status ON sessions (status)",
)
NEW_INDEXES = {statement.split()[2] for statement in ddl.INDEXES}
STATUSES = "ACTIVE, CANCELLED, COMPLETED, FAULTED, INACTIVE"

Row = tuple[Any, ...]


def legacy_row(session_id: str | None, **fields: Any) -> Row:
    """A legacy row; defaults make a valid ACTIVE session. Lists/dicts are stored as JSON, strings as-is."""
    values: dict[str, Any] = {"start_time": "2024-03-01T10:00:00", "start_state": 0, "status": "ACTIVE"}
    values.update(fields)
    values["session_id"] = session_id
    for name in ("events", "metadata"):
        if isinstance(values.get(name), list | dict):
            values[name] = json.dumps(values[name])
    return tuple(values.get(name) for name in COLUMNS)


def event(event_type: str | None, timestamp: str | None = None, **data: Any) -> dict[str, Any]:
    out: dict[str, Any] = {} if event_type is None else {"event_type": event_type}
    if timestamp is not None:
        out["timestamp"] = timestamp
    out.update(data)
    return out


def make_legacy_db(
    path: Path,
    rows: list[Row],
    *,
    ddl: str = LEGACY_DDL,
    extra_sql: tuple[str, ...] = LEGACY_INDEXES,
    insert: str = LEGACY_INSERT,
) -> Path:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(ddl)
        for sql in extra_sql:
            conn.execute(sql)
        conn.executemany(insert, rows)
    conn.close()
    return path


def connect(path: Path) -> sqlite3.Connection:
    """A connection configured like the service's writer (autocommit, foreign keys on)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [*conn.iterdump(), f"user_version={migrations.current_version(conn)}"]
    finally:
        conn.close()


def tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- the reference legacy database -----------------------------------------------------------------------------------
NAIVE_META = {"user_id": "teacher-1", "created_by": "admin", "name": "Algebra"}
OFFSET_META = {"created_by": "teacher-2", "category": "math"}

GOOD_ROWS = [
    legacy_row(
        "naive-completed",
        start_time="2024-03-01T10:00:00",
        end_time="2024-03-01T11:30:00.250000",
        start_state=0,
        end_state=4,
        status="COMPLETED",
        events=[
            event("SESSION_STARTED", "2024-03-01T10:00:00", start_state=0),
            event("STATE_CHANGED", "2024-03-01T10:15:00", **{"from": 0, "to": 3}),
            event("STATE_CHANGED", "2024-03-01T11:00:00", **{"from": 3, "to": 6}),
            event("SESSION_ENDED", "2024-03-01T11:30:00.250000"),
        ],
        metadata=NAIVE_META,
        created_at="2024-03-01T10:00:00",
        updated_at="2024-03-01T11:30:00.250000",
    ),
    legacy_row(
        "offset-cancelled",
        start_time="2024-03-01T12:00:00+02:00",
        end_time="2024-03-01T13:00:00.5+02:00",
        start_state=1,
        end_state=2,
        status="CANCELLED",
        events=[
            event("SESSION_STARTED", "2024-03-01T10:00:00Z"),
            event("RAG_QUERY", "2024-03-01T12:30:00+02:00", query="what is x?", sources=["a", "b"]),
        ],
        metadata=OFFSET_META,
        created_at="2024-03-01T10:00:00Z",
    ),
    legacy_row(
        "zulu-active",
        start_time="2024-03-02T08:00:00Z",
        start_state=2,
        events=[
            event("SESSION_STARTED", "2024-03-02T08:00:00Z"),
            event("STATE_CHANGED", "2024-03-02T08:05:30.999999Z", **{"from": 2, "new_state": 5}),
        ],
        updated_at="",
    ),
    legacy_row(
        "space-faulted",
        start_time="2024-03-02 09:00:00.123456",
        end_time="2024-03-02 10:00:00-05:30",
        start_state=1,
        status="FAULTED",
        events=[event("STATE_CHANGED", state=7)],
        metadata={"user_id": 42},
    ),
    legacy_row(
        "bad-metadata",
        start_time="2024-03-03T00:00:00",
        end_time="2024-03-03T00:00:00",
        start_state=3,
        end_state=3,
        status="COMPLETED",
        metadata="{not json",
    ),
    legacy_row("list-metadata", start_time="2024-03-03T00:00:00", start_state=8, events="[]", metadata='["a", 1]'),
    # the old gateway's reversible "inactive": open here too (no end time), with the old descriptive fields
    legacy_row(
        "paused-inactive", start_time="2024-03-04T00:00:00Z", start_state=2, status="INACTIVE", metadata={"tags": ["x"]}
    ),
    legacy_row(
        "unicode-note",
        start_state=4,
        events=[event("CLIENT_NOTE", "2024-03-01T10:00:01", text="héllo ✓")],
        metadata={"created_by": "  "},
    ),
]

EXPECTED_SESSIONS = [
    # session_id, user_id, start, end, start_state, end_state, current_state, status, metadata, created, updated
    ("bad-metadata", "legacy", 1709424000000, 1709424000000, 3, 3, 3, "COMPLETED",
     '{"legacy_metadata":"{not json"}', 1709424000000, 1709424000000),
    ("list-metadata", "legacy", 1709424000000, None, 8, None, 8, "ACTIVE",
     '{"legacy_metadata":"[\\"a\\", 1]"}', 1709424000000, 1709424000000),
    ("naive-completed", "teacher-1", 1709287200000, 1709292600250, 0, 4, 6, "COMPLETED",
     json.dumps(NAIVE_META), 1709287200000, 1709292600250),
    ("offset-cancelled", "teacher-2", 1709287200000, 1709290800500, 1, 2, 2, "CANCELLED",
     json.dumps(OFFSET_META), 1709287200000, 1709287200000),
    ("paused-inactive", "legacy", 1709510400000, None, 2, None, 2, "INACTIVE", '{"tags": ["x"]}',
     1709510400000, 1709510400000),
    ("space-faulted", "42", 1709370000123, 1709393400000, 1, 7, 7, "FAULTED",
     '{"user_id": 42}', 1709370000123, 1709370000123),
    ("unicode-note", "legacy", 1709287200000, None, 4, None, 4, "ACTIVE",
     '{"created_by": "  "}', 1709287200000, 1709287200000),
    ("zulu-active", "legacy", 1709366400000, None, 2, None, 5, "ACTIVE", "{}", 1709366400000, 1709366400000),
]  # fmt: skip

EXPECTED_EVENTS = [
    ("naive-completed", "SESSION_STARTED", 1709287200000, '{"start_state":0}'),
    ("naive-completed", "STATE_CHANGED", 1709288100000, '{"from":0,"to":3}'),
    ("naive-completed", "STATE_CHANGED", 1709290800000, '{"from":3,"to":6}'),
    ("naive-completed", "SESSION_ENDED", 1709292600250, "{}"),
    ("offset-cancelled", "SESSION_STARTED", 1709287200000, "{}"),
    ("offset-cancelled", "RAG_QUERY", 1709289000000, '{"query":"what is x?","sources":["a","b"]}'),
    ("zulu-active", "SESSION_STARTED", 1709366400000, "{}"),
    ("zulu-active", "STATE_CHANGED", 1709366730999, '{"from":2,"new_state":5}'),
    ("space-faulted", "STATE_CHANGED", 1709370000123, '{"state":7}'),  # no timestamp: the session's start
    ("unicode-note", "CLIENT_NOTE", 1709287201000, '{"text":"héllo ✓"}'),
]

EXPECTED_FIXUPS = [
    legacy_rows.FixUp("space-faulted", "ended session had no end_state; used its last known state 7"),
    legacy_rows.FixUp("bad-metadata", 'metadata was not a JSON object; kept as {"legacy_metadata": <raw text>}'),
    legacy_rows.FixUp("list-metadata", 'metadata was not a JSON object; kept as {"legacy_metadata": <raw text>}'),
]

ENDED = {"end_time": "2024-03-01T11:00:00", "end_state": 1, "status": "COMPLETED"}
BAD_ROWS: list[tuple[Row, str | None, str]] = [
    (legacy_row("bad-status", status="PAUSED"), "bad-status", f"status 'PAUSED' is not one of {STATUSES}"),
    (legacy_row("bad-start-state", start_state=9), "bad-start-state", "start_state 9 is not a state code in 0..8"),
    (
        legacy_row("bad-end-state", **{**ENDED, "end_state": -1}),
        "bad-end-state",
        "end_state -1 is not a state code in 0..8",
    ),
    (
        legacy_row("active-with-end", end_time="2024-03-01T11:00:00"),
        "active-with-end",
        "status ACTIVE but end_time is set",
    ),
    (
        legacy_row("inactive-with-end", status="INACTIVE", end_time="2024-03-01T11:00:00"),
        "inactive-with-end",
        "status INACTIVE but end_time is set",
    ),
    (
        legacy_row("ended-without-end", status="COMPLETED", end_state=1),
        "ended-without-end",
        "status COMPLETED but end_time is missing",
    ),
    (
        legacy_row("end-before-start", **{**ENDED, "end_time": "2024-03-01T09:59:59.999"}),
        "end-before-start",
        "end_time is before start_time (1709287199999 < 1709287200000 ms)",
    ),
    (
        legacy_row("garbage-start", start_time="yesterday"),
        "garbage-start",
        "start_time 'yesterday' is not an ISO-8601 timestamp",
    ),
    (legacy_row("missing-start", start_time=None), "missing-start", "start_time is missing"),
    (
        legacy_row("bad-created", created_at="2024-13-01T00:00:00"),
        "bad-created",
        "created_at '2024-13-01T00:00:00' is not an ISO-8601 timestamp",
    ),
    (legacy_row(None), None, "session_id is missing"),
    (legacy_row(""), None, "session_id is missing"),
    (legacy_row("bad-events-json", events="[{"), "bad-events-json", "events is not valid JSON"),
    (legacy_row("events-object", events='{"event_type": "X"}'), "events-object", "events is not a JSON array"),
    (
        legacy_row("event-no-type", events=[event(None, "2024-03-01T10:00:00")]),
        "event-no-type",
        "events[0] has no valid event_type (None)",
    ),
    (
        legacy_row("event-bad-ts", events=[event("SESSION_STARTED"), event("X", "soon")]),
        "event-bad-ts",
        "events[1] timestamp 'soon' is not an ISO-8601 timestamp",
    ),
    (
        legacy_row("bad-state-change", events=[event("STATE_CHANGED", to=12)]),
        "bad-state-change",
        "events[0] STATE_CHANGED to=12 is not a state code in 0..8",
    ),
    (
        legacy_row("event-nan", events='[{"event_type": "X", "score": NaN}]'),
        "event-nan",
        "events is not valid JSON",
    ),
    (legacy_row("active-with-end-state", end_state=3), "active-with-end-state", "status ACTIVE but end_state is set"),
    (
        legacy_row("many-problems", status="??", start_state=None, start_time="nope"),
        "many-problems",
        f"status '??' is not one of {STATUSES}; start_state is missing; start_time 'nope' is not an ISO-8601 timestamp",
    ),
]


def reference_rows() -> list[Row]:
    """Good and bad rows interleaved, so rejection never depends on position."""
    rows: list[Row] = []
    bad = [row for row, _, _ in BAD_ROWS]
    for index in range(max(len(GOOD_ROWS), len(bad))):
        rows.extend(GOOD_ROWS[index : index + 1])
        rows.extend(bad[index : index + 1])
    return rows


def stored(rows: list[Row]) -> list[Row]:
    """The rows as the legacy table holds them (column affinity applied)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(LEGACY_DDL)
        conn.executemany(LEGACY_INSERT, rows)
        return conn.execute("SELECT * FROM sessions ORDER BY rowid").fetchall()
    finally:
        conn.close()


@pytest.fixture
def legacy_path(tmp_path: Path) -> Path:
    return make_legacy_db(tmp_path / "legacy.db", reference_rows())


def assert_migrated(conn: sqlite3.Connection) -> None:
    """Every converted value, the events, the backup and the rejected rows of the reference database."""
    assert migrations.current_version(conn) == migrations.SCHEMA_VERSION
    assert tables(conn) >= {"sessions", "session_events", "sessions_legacy_backup", "legacy_rejected"}
    assert conn.execute("SELECT * FROM sessions ORDER BY session_id").fetchall() == EXPECTED_SESSIONS
    events = conn.execute("SELECT session_id, event_type, timestamp, event_data FROM session_events ORDER BY id")
    assert events.fetchall() == EXPECTED_EVENTS

    # the backup is the legacy table, row for row, without its old indexes
    assert conn.execute("SELECT * FROM sessions_legacy_backup ORDER BY rowid").fetchall() == stored(reference_rows())
    backup_indexes = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sessions_legacy_backup' AND sql NOT NULL"
    ).fetchall()
    assert backup_indexes == []
    new_indexes = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql NOT NULL"
        " AND tbl_name IN ('sessions', 'session_events')"
    ).fetchall()
    assert {name for (name,) in new_indexes} == NEW_INDEXES

    rejected = conn.execute("SELECT session_id, reason, row_json FROM legacy_rejected ORDER BY rowid").fetchall()
    assert [(sid, reason) for sid, reason, _ in rejected] == [(sid, reason) for _, sid, reason in BAD_ROWS]
    assert [json.loads(row_json) for _, _, row_json in rejected] == [
        dict(zip(COLUMNS, row, strict=True)) for row in stored([row for row, _, _ in BAD_ROWS])
    ]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def run_migrate(path: Path) -> list[str]:
    conn = connect(path)
    try:
        return migrations.migrate(conn)
    finally:
        conn.close()


# -- detection -------------------------------------------------------------------------------------------------------
def test_is_legacy(tmp_path: Path, legacy_path: Path) -> None:
    conn = connect(legacy_path)
    assert legacy.is_legacy(conn)
    conn.close()

    fresh = connect(tmp_path / "fresh.db")
    assert not legacy.is_legacy(fresh)  # empty database
    migrations.migrate(fresh)
    assert not legacy.is_legacy(fresh)  # the new schema
    fresh.close()

    other = connect(tmp_path / "other.db")
    other.execute("CREATE TABLE sessions (session_id TEXT, start_time TEXT)")
    assert not legacy.is_legacy(other)  # no events column
    other.close()

    mixed = connect(tmp_path / "mixed.db")
    mixed.execute("CREATE TABLE Sessions (session_id TEXT, EVENTS TEXT, user_id TEXT)")
    assert not legacy.is_legacy(mixed)  # has user_id
    mixed.close()


# -- the migration, through the service and through the CLI path -----------------------------------------------------
async def test_database_open_migrates_legacy_database(legacy_path: Path) -> None:
    db = Database(str(legacy_path))
    try:
        await db.open()
        summary, *_ = db.migrations_applied
        assert summary.startswith(
            f"migrated legacy database: {len(reference_rows())} legacy rows -> {len(GOOD_ROWS)} sessions"
            f" with {len(EXPECTED_EVENTS)} events; original table kept as sessions_legacy_backup"
        )
        assert f"{len(BAD_ROWS)} rows rejected" in summary
        assert "... and" in summary
        rows = await db.read("SELECT session_id, user_id, start_time FROM sessions ORDER BY session_id")
        assert [tuple(r) for r in rows] == [s[:3] for s in EXPECTED_SESSIONS]
    finally:
        await db.close()

    conn = connect(legacy_path)
    try:
        assert_migrated(conn)
    finally:
        conn.close()

    # opening again is a no-op: nothing applied, nothing changed
    before = dump(legacy_path)
    again = Database(str(legacy_path))
    try:
        await again.open()
        assert again.migrations_applied == []
    finally:
        await again.close()
    assert dump(legacy_path) == before


def test_schema_migrate_with_sqlite3_and_report(legacy_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reports: list[legacy_rows.LegacyReport] = []
    real = legacy.migrate_legacy

    def spy(conn: sqlite3.Connection) -> legacy_rows.LegacyReport:
        reports.append(real(conn))
        return reports[-1]

    monkeypatch.setattr(legacy, "migrate_legacy", spy)
    done = run_migrate(legacy_path)

    [report] = reports
    later = [f"applied schema migration v{n}" for n in range(legacy.CREATES_VERSION + 1, migrations.SCHEMA_VERSION + 1)]
    assert done == [report.summary(), *later]
    assert report.legacy_rows == len(GOOD_ROWS) + len(BAD_ROWS)
    assert report.migrated_sessions == len(GOOD_ROWS)
    assert report.migrated_events == len(EXPECTED_EVENTS)
    assert report.rejected == [legacy_rows.RejectedRow(sid, reason) for _, sid, reason in BAD_ROWS]
    assert report.backup_table == "sessions_legacy_backup"
    assert report.rejected_table == "legacy_rejected"
    assert report.dropped_indexes == ["idx_sessions_start_time", "idx_sessions_status"]
    assert sorted(report.fixups, key=str) == sorted(EXPECTED_FIXUPS, key=str)

    conn = connect(legacy_path)
    try:
        assert_migrated(conn)
    finally:
        conn.close()

    before = legacy_path.read_bytes()
    assert run_migrate(legacy_path) == []  # user_version is set: a no-op
    assert legacy_path.read_bytes() == before


def test_legacy_connection_with_default_isolation_level(legacy_path: Path) -> None:
    """The CLI might hand over a plain ``sqlite3.connect()`` connection (legacy transaction control)."""
    conn = sqlite3.connect(legacy_path)
    try:
        assert (
            len(migrations.migrate(conn)) == 1 + migrations.SCHEMA_VERSION - legacy.CREATES_VERSION
        )  # the conversion, then the later steps
    finally:
        conn.close()
    conn = connect(legacy_path)
    try:
        assert_migrated(conn)
    finally:
        conn.close()


def test_empty_legacy_table(tmp_path: Path) -> None:
    path = make_legacy_db(tmp_path / "empty.db", [])
    summary, *_ = run_migrate(path)
    assert summary.startswith("migrated legacy database: 0 legacy rows -> 0 sessions with 0 events")
    conn = connect(path)
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0
    assert migrations.current_version(conn) == migrations.SCHEMA_VERSION
    conn.close()


def test_taken_names_get_a_suffix(tmp_path: Path) -> None:
    path = make_legacy_db(
        tmp_path / "taken.db",
        GOOD_ROWS[:1] + [BAD_ROWS[0][0]],
        extra_sql=(
            "CREATE TABLE sessions_legacy_backup (note TEXT)",
            "INSERT INTO sessions_legacy_backup VALUES ('an older manual backup')",
            "CREATE TABLE legacy_rejected (x)",
        ),
    )
    summary, *_ = run_migrate(path)
    assert "original table kept as sessions_legacy_backup_2" in summary
    assert "kept in sessions_legacy_backup_2 and legacy_rejected_2" in summary
    conn = connect(path)
    try:
        assert conn.execute("SELECT * FROM sessions_legacy_backup").fetchall() == [("an older manual backup",)]
        assert conn.execute("SELECT count(*) FROM sessions_legacy_backup_2").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM legacy_rejected").fetchone()[0] == 0
        assert conn.execute("SELECT session_id FROM legacy_rejected_2").fetchall() == [("bad-status",)]
        assert conn.execute("SELECT session_id FROM sessions").fetchall() == [("naive-completed",)]
    finally:
        conn.close()


def test_minimal_legacy_table_without_primary_key(tmp_path: Path) -> None:
    """No PK (so duplicate ids are possible), untyped state columns, no created_at/updated_at columns at all."""
    ddl = (
        "CREATE TABLE sessions (session_id TEXT, start_time TEXT, end_time TEXT, start_state,"
        " end_state, status TEXT, events TEXT, metadata TEXT)"
    )
    rows = [
        ("dup", "2024-03-01T10:00:00", None, 1, None, "ACTIVE", None, None),
        ("dup", "2024-03-01T11:00:00", None, 2, None, "ACTIVE", None, None),
        ("solo", "2024-03-01T12:00:00Z", None, " 3", None, "ACTIVE", '[{"event_type": "X"}]', None),
        ("x-state", "2024-03-01T12:00:00Z", None, "x", None, "ACTIVE", None, None),
        ("fraction-state", "2024-03-01T12:00:00Z", None, 2.5, None, "ACTIVE", None, None),
    ]
    insert = "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    path = make_legacy_db(tmp_path / "minimal.db", rows, ddl=ddl, extra_sql=(), insert=insert)
    run_migrate(path)
    conn = connect(path)
    try:
        sessions = conn.execute("SELECT session_id, start_state, created_at, updated_at FROM sessions ORDER BY 1")
        assert sessions.fetchall() == [
            ("dup", 1, 1709287200000, 1709287200000),
            ("solo", 3, 1709294400000, 1709294400000),
        ]
        assert conn.execute("SELECT session_id, reason FROM legacy_rejected").fetchall() == [
            ("dup", "duplicate session_id"),
            ("x-state", "start_state 'x' is not a state code in 0..8"),
            ("fraction-state", "start_state 2.5 is not a state code in 0..8"),
        ]
        assert conn.execute("SELECT session_id, event_type, timestamp FROM session_events").fetchall() == [
            ("solo", "X", 1709294400000)
        ]
    finally:
        conn.close()


def test_row_refused_by_sqlite_is_rejected_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Safety net: a row the Python checks let through but a CHECK refuses is rejected; the batch still lands."""
    monkeypatch.setattr(legacy_rows, "VALID_STATUSES", legacy_rows.VALID_STATUSES | {"PAUSED"})
    rows = [
        GOOD_ROWS[0],
        legacy_row("paused", **{**ENDED, "status": "PAUSED"}, events=[event("SESSION_STARTED", "2024-03-01T10:00:00")]),
        GOOD_ROWS[1],
    ]
    path = make_legacy_db(tmp_path / "net.db", rows)
    summary, *_ = run_migrate(path)
    assert "3 legacy rows -> 2 sessions with 6 events" in summary
    conn = connect(path)
    try:
        assert conn.execute("SELECT session_id FROM sessions ORDER BY 1").fetchall() == [
            ("naive-completed",),
            ("offset-cancelled",),
        ]
        assert conn.execute("SELECT count(*) FROM session_events WHERE session_id = 'paused'").fetchone()[0] == 0
        [(sid, reason)] = conn.execute("SELECT session_id, reason FROM legacy_rejected").fetchall()
        assert sid == "paused"
        assert reason.startswith("violates the new schema: CHECK constraint failed")
    finally:
        conn.close()


def test_migrate_legacy_refuses_to_run_outside_a_transaction(legacy_path: Path) -> None:
    conn = connect(legacy_path)
    try:
        with pytest.raises(RuntimeError, match="inside the caller's transaction"):
            legacy.migrate_legacy(conn)
        assert tables(conn) == {"sessions"}
    finally:
        conn.close()


# -- atomicity: any failure leaves the database untouched ------------------------------------------------------------
def assert_untouched(path: Path, before: list[str]) -> None:
    assert dump(path) == before
    conn = connect(path)
    try:
        assert tables(conn) == {"sessions"}
        assert migrations.current_version(conn) == 0
        assert legacy.is_legacy(conn)
    finally:
        conn.close()


def failing_convert(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make the conversion blow up on row ``after + 1``, once earlier batches were already inserted."""
    real = legacy_rows.convert_row
    calls = iter(range(10**6))

    def convert(row: Any) -> Any:
        if next(calls) == after:
            raise RuntimeError("boom mid-way")
        return real(row)

    monkeypatch.setattr(legacy, "BATCH_ROWS", 2)
    monkeypatch.setattr(legacy_rows, "convert_row", convert)


def dropping_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Create the schema plus a trigger that silently loses every event: verification must catch it."""
    lose_events = (
        "CREATE TRIGGER lose_events AFTER INSERT ON session_events BEGIN"
        " DELETE FROM session_events WHERE id = NEW.id; END"
    )
    monkeypatch.setattr(ddl, "V2", (*ddl.V2, lose_events))


def test_failure_mid_way_leaves_file_byte_for_byte_untouched(
    legacy_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_bytes, before = legacy_path.read_bytes(), dump(legacy_path)
    failing_convert(monkeypatch, after=9)
    with pytest.raises(RuntimeError, match="boom mid-way"):
        run_migrate(legacy_path)
    assert legacy_path.read_bytes() == before_bytes
    assert_untouched(legacy_path, before)


def test_failed_verification_rolls_back(legacy_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before_bytes, before = legacy_path.read_bytes(), dump(legacy_path)
    dropping_events(monkeypatch)
    with pytest.raises(
        RuntimeError, match="verification failed: session_events holds 0 rows, the migrated rows had 10"
    ):
        run_migrate(legacy_path)
    assert legacy_path.read_bytes() == before_bytes
    assert_untouched(legacy_path, before)


def test_schema_creation_failure_rolls_back(tmp_path: Path) -> None:
    """A legacy database that already has a table the new schema needs: the migration fails, nothing changes."""
    path = make_legacy_db(tmp_path / "clash.db", reference_rows(), extra_sql=("CREATE TABLE session_events (x)",))
    before_bytes, before = path.read_bytes(), dump(path)
    with pytest.raises(sqlite3.OperationalError, match="session_events already exists"):
        run_migrate(path)
    assert path.read_bytes() == before_bytes
    assert dump(path) == before


@pytest.mark.parametrize("break_it", [failing_convert, dropping_events], ids=["exception", "verification"])
async def test_failure_through_database_open_rolls_back(
    legacy_path: Path, monkeypatch: pytest.MonkeyPatch, break_it: Callable[..., None]
) -> None:
    before = dump(legacy_path)
    if break_it is failing_convert:
        failing_convert(monkeypatch, after=3)
    else:
        dropping_events(monkeypatch)
    db = Database(str(legacy_path))
    try:
        with pytest.raises(RuntimeError):
            await db.open()
    finally:
        await db.close()
    assert_untouched(legacy_path, before)  # WAL mode was switched on; the content is unchanged

    monkeypatch.undo()  # the cause is gone: the next start-up migrates
    db = Database(str(legacy_path))
    try:
        await db.open()
        assert (
            len(db.migrations_applied) == 1 + migrations.SCHEMA_VERSION - legacy.CREATES_VERSION
        )  # the conversion, then the later steps
    finally:
        await db.close()
    conn = connect(legacy_path)
    try:
        assert_migrated(conn)
    finally:
        conn.close()


# -- scale -----------------------------------------------------------------------------------------------------------
def big_rows(n: int) -> Iterator[Row]:
    base = datetime(2023, 1, 1)
    for i in range(n):
        start = base + timedelta(seconds=i)
        end = start + timedelta(minutes=30)
        events = json.dumps(
            [
                {"event_type": "SESSION_STARTED", "timestamp": start.isoformat()},
                {"event_type": "STATE_CHANGED", "timestamp": end.isoformat(), "from": 0, "to": i % 9},
            ]
        )
        status = "BOGUS" if i % 1000 == 999 else "COMPLETED"
        meta = json.dumps({"user_id": f"u{i % 50}", "name": f"session {i}"})
        yield (f"s{i:06d}", start.isoformat(), end.isoformat(), 0, i % 9, status, events, meta,
               start.isoformat(), end.isoformat())  # fmt: skip


def test_100k_row_legacy_database(tmp_path: Path) -> None:
    n = 100_000
    path = tmp_path / "big.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(LEGACY_DDL)
        conn.executemany(LEGACY_INSERT, big_rows(n))
    conn.close()

    summary, *_ = run_migrate(path)  # no time limit: a shared machine's speed is not a pass/fail criterion
    assert summary.startswith(
        f"migrated legacy database: {n} legacy rows -> {n - 100} sessions with {2 * (n - 100)} events"
    )
    assert "100 rows rejected" in summary

    conn = connect(path)
    try:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM session_events),"
            " (SELECT count(*) FROM legacy_rejected), (SELECT count(*) FROM sessions_legacy_backup)"
        ).fetchone()
        assert counts == (n - 100, 2 * (n - 100), 100, n)
        last = conn.execute("SELECT * FROM sessions WHERE session_id = 's099998'").fetchone()
        start_ms = 1672531200000 + 99_998 * 1000
        assert last == ("s099998", "u48", start_ms, start_ms + 1_800_000, 0, 8, 8, "COMPLETED",
                        '{"user_id": "u48", "name": "session 99998"}', start_ms, start_ms + 1_800_000)  # fmt: skip
    finally:
        conn.close()


# -- parse_legacy_timestamp ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T10:00:00", 1709287200000),
        ("2024-03-01T10:00", 1709287200000),
        ("2024-03-01 10:00:00", 1709287200000),
        ("2024-03-01T10:00:00Z", 1709287200000),
        ("2024-03-01T10:00:00+00:00", 1709287200000),
        ("2024-03-01T12:00:00+02:00", 1709287200000),
        ("2024-03-01T12:00:00+0200", 1709287200000),
        ("2024-03-01T04:30:00-05:30", 1709287200000),
        ("2024-03-01T10:00:00.999999", 1709287200999),
        ("2024-03-01T10:00:00.5Z", 1709287200500),
        ("  2024-03-01T10:00:00  ", 1709287200000),
        ("1970-01-01T00:00:00", 0),
        ("1969-12-31T23:59:59.9995", -1),  # floored, like every other value
        (None, None),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_legacy_timestamp_examples(text: str | None, expected: int | None) -> None:
    assert legacy_rows.parse_legacy_timestamp(text) == expected


@pytest.mark.parametrize(
    "garbage",
    [
        "yesterday",
        "2024-03-01",  # a date without a time
        "20240301T100000",  # basic format
        "2024-W09-5T10:00:00",
        "2024-13-01T00:00:00",
        "2024-02-30T00:00:00",
        "2024-03-01T24:00:00",
        "2024-03-01T10:00:00z",
        "2024-03-01T10:00:00.+02:00",
        "2024-03-01T10:00:00+24:00",
        "2024-03-01T10:00:00+00:00:00.000001",  # fractional offsets (CPython 3.11 drops them)
        "0000-01-01T00:00:00",
        "２０２４-03-01T10:00:00",  # non-ASCII digits
        1709287200,
        1709287200.0,
        b"2024-03-01T10:00:00",
    ],
)
def test_parse_legacy_timestamp_rejects_garbage(garbage: object) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 timestamp"):
        legacy_rows.parse_legacy_timestamp(garbage)


def expected_ms(moment: datetime) -> int:
    """Unix ms computed from the fields, independently of datetime arithmetic; naive means UTC."""
    days = moment.toordinal() - date(1970, 1, 1).toordinal()
    local_us = (days * 86400 + moment.hour * 3600 + moment.minute * 60 + moment.second) * 10**6 + moment.microsecond
    offset = moment.utcoffset() or timedelta(0)
    offset_us = (offset.days * 86400 + offset.seconds) * 10**6 + offset.microseconds
    return (local_us - offset_us) // 1000


fixed_offsets = st.one_of(
    st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m))),
    st.integers(-86399, 86399).map(lambda sec: timezone(timedelta(seconds=sec))),
)
TIMESPECS = {"auto": None, "seconds": 10**6, "milliseconds": 1000, "microseconds": 1}


@settings(database=None, max_examples=300)
@given(
    moment=st.datetimes(timezones=st.none() | fixed_offsets),
    sep=st.sampled_from(["T", " "]),
    timespec=st.sampled_from(sorted(TIMESPECS)),
    zulu=st.booleans(),
)
def test_parse_round_trips_isoformat(moment: datetime, sep: str, timespec: str, zulu: bool) -> None:
    text = moment.isoformat(sep=sep, timespec=timespec)
    if zulu and text.endswith("+00:00"):
        text = text[: -len("+00:00")] + "Z"
    unit = TIMESPECS[timespec]
    if unit is not None:
        moment = moment.replace(microsecond=moment.microsecond // unit * unit)
    assert legacy_rows.parse_legacy_timestamp(text) == expected_ms(moment)


@settings(database=None)
@given(
    moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    minutes=st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_parse_naive_is_utc_and_offsets_shift(moment: datetime, minutes: int) -> None:
    naive = legacy_rows.parse_legacy_timestamp(moment.isoformat())
    assert naive is not None
    assert naive == legacy_rows.parse_legacy_timestamp(moment.isoformat() + "Z")
    assert naive == legacy_rows.parse_legacy_timestamp(moment.isoformat(sep=" ") + "+00:00")
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    assert legacy_rows.parse_legacy_timestamp(aware.isoformat()) == naive - minutes * 60_000


@settings(database=None)
@given(text=st.text(max_size=40))
def test_parse_never_fails_other_than_value_error(text: str) -> None:
    try:
        result = legacy_rows.parse_legacy_timestamp(text)
    except ValueError:
        return
    assert result is None or isinstance(result, int)
    assert result is not None or not text.strip()
