"""The ordered schema migrations; the version a file is at lives in its ``PRAGMA user_version``.

Step ``n`` (``MIGRATIONS[n - 1]``) brings a database from version ``n - 1`` to ``n``; a legacy database (the
replaced gateway's, ``legacy.is_legacy``) is converted to ``legacy.CREATES_VERSION`` instead of getting the steps up
to it, then takes the later ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from service.storage.sqlite import ddl, legacy

Step = Callable[[sqlite3.Connection], None]


def _v1(conn: sqlite3.Connection) -> None:
    for statement in ddl.V1:
        conn.execute(statement)


_SESSION_COLS = (
    "session_id, user_id, start_time, end_time, start_state, end_state, current_state, status, metadata, "
    "created_at, updated_at"
)
_EVENT_COLS = "id, session_id, event_type, timestamp, event_data"


def _v2(conn: sqlite3.Connection) -> None:
    """The INACTIVE status: both tables rebuilt with the new CHECKs (SQLite cannot alter one), inside the caller's
    transaction.

    ``PRAGMA foreign_keys`` cannot be turned off inside a transaction, and with it on, dropping ``sessions``
    would cascade-delete every event. So the events move first, into a table that references the new sessions
    table; the old events table is dropped before the old sessions table (nothing references it by then), and
    renaming the new tables into place rewrites the reference (SQLite >= 3.26). The AUTOINCREMENT high-water
    mark is carried over, so event ids are never reused; counts and ``foreign_key_check`` are verified.
    """
    conn.execute("PRAGMA legacy_alter_table = OFF")  # renames must rewrite the events' REFERENCES
    sessions_before = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
    events_before = conn.execute("SELECT count(*) FROM session_events").fetchone()[0]
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'session_events'").fetchone()
    conn.execute(ddl.SESSIONS_V2_DDL.format(sessions="sessions_v2"))
    conn.execute(f"INSERT INTO sessions_v2 ({_SESSION_COLS}) SELECT {_SESSION_COLS} FROM sessions")  # noqa: S608
    conn.execute(ddl.EVENTS_V2_DDL.format(events="session_events_v2", sessions="sessions_v2"))
    conn.execute(
        f"INSERT INTO session_events_v2 ({_EVENT_COLS}) SELECT {_EVENT_COLS} FROM session_events ORDER BY id"  # noqa: S608
    )
    conn.execute("DROP TABLE session_events")
    conn.execute("DROP TABLE sessions")
    conn.execute("ALTER TABLE sessions_v2 RENAME TO sessions")
    conn.execute("ALTER TABLE session_events_v2 RENAME TO session_events")
    if seq is not None:
        conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'session_events'", (seq[0],))
        if conn.execute("SELECT changes()").fetchone()[0] == 0:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('session_events', ?)", (seq[0],))
    for statement in ddl.V2_INDEXES:
        conn.execute(statement)
    problems = conn.execute("PRAGMA foreign_key_check").fetchall()
    after = (
        conn.execute("SELECT count(*) FROM sessions").fetchone()[0],
        conn.execute("SELECT count(*) FROM session_events").fetchone()[0],
    )
    if problems or after != (sessions_before, events_before):
        raise RuntimeError(
            f"migration v2 verification failed: {len(problems)} foreign key problems, "
            f"(sessions, events) {(sessions_before, events_before)} before and {after} after"
        )


def _library(conn: sqlite3.Connection) -> None:
    """The markdown library's table (its own step, so it can be ordered with other steps at merge)."""
    for statement in ddl.LIBRARY_V1:
        conn.execute(statement)


def _ingestion_jobs(conn: sqlite3.Connection) -> None:
    """The durable ingestion jobs' table (its own step, ordered after the library it reads from)."""
    for statement in ddl.INGESTION_JOBS_V1:
        conn.execute(statement)


MIGRATIONS: list[Step] = [_v1, _v2, _library, _ingestion_jobs]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction; returns what was done (for logs and the CLI).

    Runs on the writer's thread (never on the event loop). Safe when several processes start on one file at
    once: the version is read again under the write lock, so the first migrates and the others find it current.
    """
    version = current_version(conn)
    _check_not_newer(version)
    if version == SCHEMA_VERSION:  # the usual start-up: no write lock taken
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = current_version(conn)  # another process may have migrated between the read above and the lock
        _check_not_newer(version)
        done: list[str] = []
        if version == 0 and legacy.is_legacy(conn):
            done.append(legacy.migrate_legacy(conn).summary())
            version = legacy.CREATES_VERSION
        for number in range(version, SCHEMA_VERSION):
            MIGRATIONS[number](conn)
            done.append(f"applied schema migration v{number + 1}")
        if done:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return done


def _check_not_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"database schema v{version} is newer than this build (v{SCHEMA_VERSION})")
