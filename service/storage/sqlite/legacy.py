"""Conversion of the legacy gateway's database to schema v1, in the caller's transaction: the SQL half.

The pure half (parsing and checking one row, the report types) is ``legacy_rows.py``.

The legacy table is ``sessions(session_id, start_time TEXT, end_time TEXT, start_state, end_state, status,
events TEXT, metadata TEXT, created_at TEXT, updated_at TEXT)``: ISO-8601 text timestamps (naive means UTC),
no owner column, and the whole audit trail as one JSON array of ``{"event_type", "timestamp", ...data}``.

``migrations.migrate()`` opens ``BEGIN IMMEDIATE``, calls :func:`migrate_legacy` when ``user_version`` is 0 and
:func:`is_legacy` holds, then sets ``user_version`` and commits; it rolls back on any exception. So this module
never commits or rolls back the transaction itself (it only uses savepoints inside it), and every failure,
including a failed count verification, leaves the database exactly as it was.

What :func:`migrate_legacy` does:

1. renames the legacy table to ``sessions_legacy_backup`` (``_2``, ``_3``... if that name is taken) and drops the
   backup's own indexes (their names would collide with the new schema's; the backup is an archive, not queried);
2. creates schema v2 (``ddl.V2``, so INACTIVE rows fit; ``CREATES_VERSION``) and a
   ``legacy_rejected(session_id, reason, row_json)`` table
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
  backup table. Rejected: missing/duplicate ``session_id``; status outside
  ACTIVE/INACTIVE/COMPLETED/CANCELLED/FAULTED (no case folding; the old gateway's reversible ``inactive`` is an
  open status here too); a state that is missing (start) or not an integer in 0..8; a missing or unparseable
  ``start_time``; an unparseable ``end_time`` / ``created_at`` / ``updated_at``; an open status with an ``end_time``;
  ended without one; ``end_time < start_time``; open with an ``end_state``; ``events`` that is not a JSON
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

import sqlite3
from collections.abc import Iterator, Sequence

from service.storage.sqlite import ddl, legacy_rows
from service.storage.sqlite.legacy_rows import (
    BACKUP_TABLE,
    REJECTED_TABLE,
    Converted,
    FixUp,
    LegacyReport,
    Rejected,
    RejectedRow,
)

LEGACY_TABLE = "sessions"
CREATES_VERSION = 2  # the schema version a converted file is at
BATCH_ROWS = 5000

_SESSION_INSERT = (
    "INSERT INTO sessions (session_id, user_id, start_time, end_time, start_state, end_state, current_state,"
    " status, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_EVENT_INSERT = "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, ?, ?, ?)"
_ROWID = "__legacy_rowid__"


# -- detection ------------------------------------------------------------------------------------------------------
def is_legacy(conn: sqlite3.Connection) -> bool:
    """True when ``main`` has a ``sessions`` table with an ``events`` column and no ``user_id`` column."""
    table = _legacy_table(conn)
    if table is None:
        return False
    columns = {name.lower() for name in _columns(conn, table)}
    return "events" in columns and "user_id" not in columns


# -- the migration --------------------------------------------------------------------------------------------------
def migrate_legacy(conn: sqlite3.Connection) -> LegacyReport:
    """Convert the legacy ``sessions`` table to schema v2 inside the caller's open transaction (see module doc)."""
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

    for statement in ddl.V2:
        conn.execute(statement)
    report.rejected_table = _free_name(conn, REJECTED_TABLE)
    conn.execute(f"CREATE TABLE {_quote(report.rejected_table)} (session_id TEXT, reason TEXT, row_json TEXT)")
    reject_sql = (
        f"INSERT INTO {_quote(report.rejected_table)} (session_id, reason, row_json)"  # noqa: S608 - quoted
        " VALUES (?, ?, ?)"
    )

    seen: set[str] = set()
    for names, rows in _batches(conn, report.backup_table):
        keys = [name.lower() for name in names]
        good: list[Converted] = []
        bad: list[tuple[str | None, str, str]] = []
        for values in rows:
            row = dict(zip(keys, values, strict=True))
            try:
                converted = legacy_rows.convert_row(row)
                if converted.session_id in seen:
                    raise Rejected(converted.session_id, ["duplicate session_id"])
            except Rejected as rejected:
                bad.append((rejected.session_id, "; ".join(rejected.reasons), legacy_rows.row_json(names, values)))
                continue
            seen.add(converted.session_id)
            converted.legacy_values = values
            good.append(converted)
        for converted, reason in _insert(conn, good):
            seen.discard(converted.session_id)
            bad.append((converted.session_id, reason, legacy_rows.row_json(names, converted.legacy_values)))
        conn.executemany(reject_sql, bad)
        report.rejected.extend(RejectedRow(session_id, reason) for session_id, reason, _ in bad)
        for converted in good:
            if converted.inserted:
                report.migrated_sessions += 1
                report.migrated_events += len(converted.events)
                report.fixups.extend(FixUp(converted.session_id, note) for note in converted.fixups)

    _verify(conn, report)
    return report


# -- SQL helpers ----------------------------------------------------------------------------------------------------
def _insert(conn: sqlite3.Connection, rows: list[Converted]) -> list[tuple[Converted, str]]:
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
    refused: list[tuple[Converted, str]] = []
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
