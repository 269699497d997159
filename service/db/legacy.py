"""Conversion of the legacy gateway's database to schema v1, in the caller's transaction.

The legacy table is ``sessions(session_id, start_time TEXT, end_time TEXT, start_state, end_state, status,
events TEXT, metadata TEXT, created_at TEXT, updated_at TEXT)``: ISO-8601 text timestamps (naive means UTC),
no owner column, and the whole audit trail as one JSON array of ``{"event_type", "timestamp", ...data}``.

``schema.migrate()`` opens ``BEGIN IMMEDIATE``, calls :func:`migrate_legacy` when ``user_version`` is 0 and
:func:`is_legacy` holds, then sets ``user_version`` and commits; it rolls back on any exception. So this module
never commits or rolls back the transaction itself (it only uses savepoints inside it), and every failure,
including a failed count verification, leaves the database exactly as it was.

What :func:`migrate_legacy` does:

1. renames the legacy table to ``sessions_legacy_backup`` (``_2``, ``_3``... if that name is taken) and drops the
   backup's own indexes (their names would collide with the new schema's; the backup is an archive, not queried);
2. creates the new schema with ``schema._v1`` and a ``legacy_rejected(session_id, reason, row_json)`` table
   (suffixed like the backup if the name is taken);
3. converts the rows in batches (``executemany``): timestamps to Unix milliseconds, ``user_id`` from the
   metadata's ``user_id``, else its ``created_by``, else ``"legacy"``; ``current_state`` from the last
   ``STATE_CHANGED`` event carrying ``to`` / ``new_state`` / ``state``, else ``end_state`` if ended, else
   ``start_state``; events into ``session_events`` (``event_data`` = the event minus ``event_type`` and
   ``timestamp``; a missing event timestamp falls back to the session's ``start_time``); missing
   ``created_at`` / ``updated_at`` fall back to ``start_time``;
4. verifies the counts (migrated + rejected == legacy rows, event rows == events of the migrated rows, the
   backup still holds every legacy row) and raises ``RuntimeError`` on any mismatch.

Choices (each one is reported, never silent):

- A row that would break the new CHECKs is *rejected*: not inserted, listed in the report with every reason
  found, copied to ``legacy_rejected`` (with the whole legacy row as JSON) and, like every row, still in the
  backup table. Rejected: missing/duplicate ``session_id``; status outside ACTIVE/COMPLETED/CANCELLED/FAULTED
  (no case folding); a state that is missing (start) or not an integer in 0..8; a missing or unparseable
  ``start_time``; an unparseable ``end_time`` / ``created_at`` / ``updated_at``; ACTIVE with an ``end_time``;
  ended without one; ``end_time < start_time``; ACTIVE with an ``end_state``; ``events`` that is not a JSON
  array of objects, or an event without a valid ``event_type`` (1..64 chars) or with an unparseable timestamp.
- *Fix-ups* (row migrated, noted in ``LegacyReport.fixups``): an ended row whose ``end_state`` is NULL gets its
  last known state (the ``current_state`` above) as ``end_state``; metadata that is not valid JSON or not a JSON
  object is kept as ``{"legacy_metadata": "<raw text>"}``. NULL or empty metadata becomes ``{}``.
- Valid metadata objects are stored as their original text (nothing re-encoded, ``user_id`` left in place).
- Safety net: should a row pass these checks yet still fail a constraint in SQLite, its batch is rolled back to
  a savepoint and retried row by row, and the offending rows are rejected with SQLite's message as the reason,
  so one odd row never blocks the migration of the others.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from service.db import schema

# The schema this migration converts from: the gateway this service replaces created exactly this table.
LEGACY_SESSIONS_DDL = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id  TEXT PRIMARY KEY,
    start_time  TEXT,
    end_time    TEXT,
    start_state INTEGER,
    end_state   INTEGER,
    status      TEXT,
    events      TEXT,
    metadata    TEXT,
    created_at  TEXT,
    updated_at  TEXT
)
"""

LEGACY_TABLE = "sessions"
BACKUP_TABLE = "sessions_legacy_backup"
REJECTED_TABLE = "legacy_rejected"
FALLBACK_USER_ID = "legacy"
VALID_STATUSES = frozenset({"ACTIVE", "COMPLETED", "CANCELLED", "FAULTED"})
MIN_STATE, MAX_STATE = 0, 8
MAX_EVENT_TYPE_LEN = 64
STATE_KEYS = ("to", "new_state", "state")
BATCH_ROWS = 5000
SUMMARY_REJECTS_SHOWN = 5

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_ONE_MS = timedelta(milliseconds=1)
# Extended ISO-8601 date and time, 'T' or ' ' between them; optional seconds, fraction and offset (Z or
# +HH[:MM[:SS]]). No fraction in the offset: ISO has none, and CPython 3.11 mis-parses "+00:00:00.000001".
_ISO_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)?"
)

_SESSION_INSERT = (
    "INSERT INTO sessions (session_id, user_id, start_time, end_time, start_state, end_state, current_state,"
    " status, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_EVENT_INSERT = "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, ?, ?, ?)"
_ROWID = "__legacy_rowid__"


# -- public types ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectedRow:
    session_id: str | None
    reason: str


@dataclass(frozen=True)
class FixUp:
    session_id: str
    note: str


@dataclass
class LegacyReport:
    legacy_rows: int = 0
    migrated_sessions: int = 0
    migrated_events: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    backup_table: str = BACKUP_TABLE
    rejected_table: str = REJECTED_TABLE
    fixups: list[FixUp] = field(default_factory=list)
    dropped_indexes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"migrated legacy database: {self.legacy_rows} legacy rows -> {self.migrated_sessions} sessions"
            f" with {self.migrated_events} events; original table kept as {self.backup_table}"
        )
        if self.fixups:
            text += f"; {len(self.fixups)} fix-ups (see the report)"
        if self.rejected:
            shown = "; ".join(f"{r.session_id!r}: {r.reason}" for r in self.rejected[:SUMMARY_REJECTS_SHOWN])
            more = len(self.rejected) - SUMMARY_REJECTS_SHOWN
            if more > 0:
                shown += f"; ... and {more} more"
            text += (
                f"; {len(self.rejected)} rows rejected (not migrated, kept in {self.backup_table}"
                f" and {self.rejected_table}): {shown}"
            )
        return text


# -- detection and timestamps -----------------------------------------------------------------------------------
def is_legacy(conn: sqlite3.Connection) -> bool:
    """True when ``main`` has a ``sessions`` table with an ``events`` column and no ``user_id`` column."""
    table = _legacy_table(conn)
    if table is None:
        return False
    columns = {name.lower() for name in _columns(conn, table)}
    return "events" in columns and "user_id" not in columns


def parse_legacy_timestamp(value: object) -> int | None:
    """ISO-8601 text to Unix milliseconds (floored); naive times are UTC. None or blank text gives None.

    Accepts ``YYYY-MM-DD`` then ``T`` or a space, ``HH:MM[:SS[.fraction]]`` and an optional ``Z`` or
    ``+HH[:MM[:SS]]`` offset (colons optional). Anything else (other types, a date without a time, impossible
    dates) raises ``ValueError``.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
    text = value.strip()
    if not text:
        return None
    if _ISO_RE.fullmatch(text) is None:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not an ISO-8601 timestamp: {value!r} ({exc})") from None
    return (moment - (_EPOCH_NAIVE if moment.tzinfo is None else _EPOCH)) // _ONE_MS


# -- the migration --------------------------------------------------------------------------------------------------
def migrate_legacy(conn: sqlite3.Connection) -> LegacyReport:
    """Convert the legacy ``sessions`` table to schema v1 inside the caller's open transaction (see module doc)."""
    if not conn.in_transaction:
        raise RuntimeError("migrate_legacy must run inside the caller's transaction")
    table = _legacy_table(conn)
    if table is None:
        raise RuntimeError("no legacy sessions table to migrate")
    report = LegacyReport()
    report.legacy_rows = _count(conn, table)

    report.backup_table = _free_name(conn, BACKUP_TABLE)
    conn.execute(f"ALTER TABLE main.{_quote(table)} RENAME TO {_quote(report.backup_table)}")
    report.dropped_indexes = _drop_indexes(conn, report.backup_table)

    schema._v1(conn)
    report.rejected_table = _free_name(conn, REJECTED_TABLE)
    conn.execute(f"CREATE TABLE {_quote(report.rejected_table)} (session_id TEXT, reason TEXT, row_json TEXT)")
    reject_sql = (
        f"INSERT INTO {_quote(report.rejected_table)} (session_id, reason, row_json)"  # noqa: S608 - quoted
        " VALUES (?, ?, ?)"
    )

    seen: set[str] = set()
    for names, rows in _batches(conn, report.backup_table):
        keys = [name.lower() for name in names]
        good: list[_Converted] = []
        bad: list[tuple[str | None, str, str]] = []
        for values in rows:
            row = dict(zip(keys, values, strict=True))
            try:
                converted = _convert_row(row)
                if converted.session_id in seen:
                    raise _Rejected(converted.session_id, ["duplicate session_id"])
            except _Rejected as rejected:
                bad.append((rejected.session_id, "; ".join(rejected.reasons), _row_json(names, values)))
                continue
            seen.add(converted.session_id)
            converted.legacy_values = values
            good.append(converted)
        for converted, reason in _insert(conn, good):
            seen.discard(converted.session_id)
            bad.append((converted.session_id, reason, _row_json(names, converted.legacy_values)))
        conn.executemany(reject_sql, bad)
        report.rejected.extend(RejectedRow(session_id, reason) for session_id, reason, _ in bad)
        for converted in good:
            if converted.inserted:
                report.migrated_sessions += 1
                report.migrated_events += len(converted.events)
                report.fixups.extend(FixUp(converted.session_id, note) for note in converted.fixups)

    _verify(conn, report)
    return report


# -- conversion of one row ------------------------------------------------------------------------------------------
class _Rejected(Exception):
    def __init__(self, session_id: str | None, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.session_id = session_id
        self.reasons = reasons


@dataclass
class _Converted:
    session_id: str
    session: tuple[object, ...]
    events: list[tuple[str, str, int, str]]
    fixups: list[str]
    legacy_values: Sequence[object] = ()
    inserted: bool = False


def _convert_row(row: Mapping[str, object]) -> _Converted:
    """One legacy row (lower-case column names) to the new session and event rows, or raise ``_Rejected``."""
    errors: list[str] = []
    fixups: list[str] = []

    raw_id = row.get("session_id")
    session_id: str | None = None
    if isinstance(raw_id, str) and raw_id.strip():
        session_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        session_id = str(raw_id)
    elif raw_id is None or isinstance(raw_id, str):
        errors.append("session_id is missing")
    else:
        errors.append(f"session_id {raw_id!r} is not text")

    status = row.get("status")
    if not isinstance(status, str) or status not in VALID_STATUSES:
        errors.append(f"status {status!r} is not one of {', '.join(sorted(VALID_STATUSES))}")
        status = None

    start_state = _state_field("start_state", row.get("start_state"), errors, required=True)
    end_state = _state_field("end_state", row.get("end_state"), errors, required=False)

    unparsed: set[str] = set()
    times: dict[str, int | None] = {}
    for name in ("start_time", "end_time", "created_at", "updated_at"):
        raw = row.get(name)
        try:
            times[name] = parse_legacy_timestamp(raw)
        except ValueError:
            errors.append(f"{name} {raw!r} is not an ISO-8601 timestamp")
            unparsed.add(name)
            times[name] = None
    start_ms, end_ms = times["start_time"], times["end_time"]
    if start_ms is None and "start_time" not in unparsed:
        errors.append("start_time is missing")
    if status is not None and "end_time" not in unparsed:
        if status == "ACTIVE" and end_ms is not None:
            errors.append("status ACTIVE but end_time is set")
        elif status != "ACTIVE" and end_ms is None:
            errors.append(f"status {status} but end_time is missing")
        elif status == "ACTIVE" and end_state is not None:
            errors.append("status ACTIVE but end_state is set")
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        errors.append(f"end_time is before start_time ({end_ms} < {start_ms} ms)")

    metadata_text, metadata = _metadata(row.get("metadata"))
    if metadata is None:
        metadata = {}
        fixups.append('metadata was not a JSON object; kept as {"legacy_metadata": <raw text>}')

    events, last_state = _events(row.get("events"), start_ms, errors)

    if errors or session_id is None or start_ms is None or start_state is None or status is None:
        raise _Rejected(session_id, errors)

    if last_state is not None:
        current_state = last_state
    elif end_ms is not None and end_state is not None:
        current_state = end_state
    else:
        current_state = start_state
    if end_ms is not None and end_state is None:
        end_state = current_state
        fixups.append(f"ended session had no end_state; used its last known state {current_state}")

    created_ms = times["created_at"] if times["created_at"] is not None else start_ms
    updated_ms = times["updated_at"] if times["updated_at"] is not None else start_ms
    session = (
        session_id,
        _user_id(metadata),
        start_ms,
        end_ms,
        start_state,
        end_state,
        current_state,
        status,
        metadata_text,
        created_ms,
        updated_ms,
    )
    event_rows = [(session_id, event_type, ts, data) for event_type, ts, data in events]
    return _Converted(session_id, session, event_rows, fixups)


def _state_field(name: str, value: object, errors: list[str], *, required: bool) -> int | None:
    if value is None:
        if required:
            errors.append(f"{name} is missing")
        return None
    state = _as_state(value)
    if state is None:
        errors.append(f"{name} {value!r} is not a state code in {MIN_STATE}..{MAX_STATE}")
    return state


def _as_state(value: object) -> int | None:
    """An integer state code in 0..8 (also from ``'3'`` or ``3.0``), else None."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        number = int(value)
    if number is None or not MIN_STATE <= number <= MAX_STATE:
        return None
    return number


def _metadata(raw: object) -> tuple[str, dict[str, object] | None]:
    """The metadata text to store and its parsed object; the object is None when the raw value was wrapped."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "{}", {}
    if isinstance(raw, str):
        try:
            parsed = _loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return raw, parsed
        text = raw
    elif isinstance(raw, bytes):
        text = raw.decode("utf-8", errors="replace")
    else:
        text = str(raw)
    return _dumps({"legacy_metadata": text}), None


def _user_id(metadata: Mapping[str, object]) -> str:
    for key in ("user_id", "created_by"):
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return FALLBACK_USER_ID


def _events(raw: object, start_ms: int | None, errors: list[str]) -> tuple[list[tuple[str, int, str]], int | None]:
    """The events as ``(event_type, timestamp_ms, event_data)`` and the last STATE_CHANGED state, if any."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return [], None
    if not isinstance(raw, str):
        errors.append("events is not JSON text")
        return [], None
    try:
        parsed = _loads(raw)
    except ValueError:
        errors.append("events is not valid JSON")
        return [], None
    if parsed is None:
        return [], None
    if not isinstance(parsed, list):
        errors.append("events is not a JSON array")
        return [], None
    events: list[tuple[str, int, str]] = []
    last_state: int | None = None
    for index, event in enumerate(parsed):
        if not isinstance(event, dict):
            errors.append(f"events[{index}] is not a JSON object")
            continue
        event_type = event.get("event_type")
        if not isinstance(event_type, str) or not 1 <= len(event_type) <= MAX_EVENT_TYPE_LEN:
            errors.append(f"events[{index}] has no valid event_type ({event_type!r})")
            continue
        raw_ts = event.get("timestamp")
        try:
            ts = parse_legacy_timestamp(raw_ts)
        except ValueError:
            errors.append(f"events[{index}] timestamp {raw_ts!r} is not an ISO-8601 timestamp")
            continue
        if event_type == "STATE_CHANGED":
            key = next((k for k in STATE_KEYS if event.get(k) is not None), None)
            if key is not None:
                last_state = _as_state(event[key])
                if last_state is None:
                    errors.append(
                        f"events[{index}] STATE_CHANGED {key}={event[key]!r} is not a state code"
                        f" in {MIN_STATE}..{MAX_STATE}"
                    )
        data = {k: v for k, v in event.items() if k not in ("event_type", "timestamp")}
        try:
            data_text = _dumps(data)
        except ValueError:  # e.g. 1e999 parsed as inf: not representable in strict JSON
            errors.append(f"events[{index}] data cannot be stored as strict JSON")
            continue
        if ts is None:
            ts = start_ms
        if ts is not None:
            events.append((event_type, ts, data_text))
    return events, last_state


# -- SQL helpers -------------------------------------------------------------------------------------------------------
def _insert(conn: sqlite3.Connection, rows: list[_Converted]) -> list[tuple[_Converted, str]]:
    """Insert a batch in bulk; if SQLite rejects any row, redo it row by row. Returns the rows SQLite refused."""
    if not rows:
        return []
    conn.execute("SAVEPOINT legacy_batch")
    try:
        conn.executemany(_SESSION_INSERT, [row.session for row in rows])
        conn.executemany(_EVENT_INSERT, [event for row in rows for event in row.events])
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO legacy_batch")
        conn.execute("RELEASE legacy_batch")
    else:
        conn.execute("RELEASE legacy_batch")
        for row in rows:
            row.inserted = True
        return []
    refused: list[tuple[_Converted, str]] = []
    for row in rows:
        conn.execute("SAVEPOINT legacy_row")
        try:
            conn.execute(_SESSION_INSERT, row.session)
            conn.executemany(_EVENT_INSERT, row.events)
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK TO legacy_row")
            conn.execute("RELEASE legacy_row")
            refused.append((row, f"violates the new schema: {exc}"))
        else:
            conn.execute("RELEASE legacy_row")
            row.inserted = True
    return refused


def _verify(conn: sqlite3.Connection, report: LegacyReport) -> None:
    problems: list[str] = []
    backup_rows = _count(conn, report.backup_table)
    sessions = _count(conn, "sessions")
    events = _count(conn, "session_events")
    rejected_rows = _count(conn, report.rejected_table)
    if backup_rows != report.legacy_rows:
        problems.append(f"backup holds {backup_rows} rows, legacy table had {report.legacy_rows}")
    if sessions != report.migrated_sessions:
        problems.append(f"sessions holds {sessions} rows, {report.migrated_sessions} were migrated")
    if sessions + len(report.rejected) != report.legacy_rows:
        problems.append(f"{sessions} sessions + {len(report.rejected)} rejected != {report.legacy_rows} legacy rows")
    if events != report.migrated_events:
        problems.append(f"session_events holds {events} rows, the migrated rows had {report.migrated_events}")
    if rejected_rows != len(report.rejected):
        problems.append(f"{report.rejected_table} holds {rejected_rows} rows, {len(report.rejected)} were rejected")
    strangers = conn.execute(
        "SELECT count(*) FROM sessions WHERE session_id NOT IN"  # noqa: S608 - quoted identifier
        f" (SELECT CAST(session_id AS TEXT) FROM {_quote(report.backup_table)} WHERE session_id IS NOT NULL)"
    ).fetchone()[0]
    if strangers:
        problems.append(f"{strangers} sessions do not come from the legacy table")
    if problems:
        raise RuntimeError("legacy migration verification failed: " + "; ".join(problems))


def _batches(conn: sqlite3.Connection, table: str) -> Iterator[tuple[list[str], list[Sequence[object]]]]:
    """The table's rows in rowid order, ``BATCH_ROWS`` at a time, each batch fully read before it is yielded.

    No cursor stays open while the caller writes (rolling back to a savepoint after DDL would abort it).
    """
    quoted = _quote(table)
    select = f"SELECT rowid AS {_ROWID}, * FROM {quoted}"  # noqa: S608 - quoted identifier
    try:
        cursor = conn.execute(f"{select} ORDER BY rowid LIMIT ?", (BATCH_ROWS,))
    except sqlite3.OperationalError:
        # a WITHOUT ROWID legacy table: read it whole
        cursor = conn.execute(f"SELECT * FROM {quoted}")  # noqa: S608 - quoted identifier
        rows = cursor.fetchall()
        if rows:
            yield [d[0] for d in cursor.description], rows
        return
    names = [d[0] for d in cursor.description][1:]
    while rows := cursor.fetchall():
        last = int(rows[-1][0])
        yield names, [tuple(row)[1:] for row in rows]
        cursor = conn.execute(f"{select} WHERE rowid > ? ORDER BY rowid LIMIT ?", (last, BATCH_ROWS))


def _legacy_table(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND lower(name) = ?", (LEGACY_TABLE,)
    ).fetchone()
    return None if row is None else str(row[0])


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in conn.execute(f"PRAGMA main.table_info({_quote(table)})")]


def _count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM main.{_quote(table)}").fetchone()[0])  # noqa: S608


def _free_name(conn: sqlite3.Connection, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``... : the first name no table, index, view or trigger uses."""
    taken = {str(row[0]).lower() for row in conn.execute("SELECT name FROM main.sqlite_master")}
    name, suffix = base, 1
    while name.lower() in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    return name


def _drop_indexes(conn: sqlite3.Connection, table: str) -> list[str]:
    names = [
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL"
            " ORDER BY name",
            (table,),
        )
    ]
    for name in names:
        conn.execute(f"DROP INDEX main.{_quote(name)}")
    return names


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _reject_constant(token: str) -> object:
    raise ValueError(f"{token} is not valid JSON")


# Strict JSON both ways: NaN and Infinity (accepted by Python, refused by SQLite's json_valid) are errors.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _loads(text: str) -> object:
    return _DECODER.decode(text)


def _dumps(value: object) -> str:
    text = _ENCODER.encode(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \\ud800-style escapes: keep them escaped
        text = _ASCII_ENCODER.encode(value)
    return text


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return {"blob_hex": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _row_json(names: Sequence[str], values: Sequence[object]) -> str:
    return _dumps({name: _plain(value) for name, value in zip(names, values, strict=True)})
