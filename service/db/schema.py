"""Schema DDL and the ordered list of migrations; the version lives in ``PRAGMA user_version``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SESSIONS_DDL = """
CREATE TABLE sessions (
    session_id    TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    start_time    INTEGER NOT NULL,
    end_time      INTEGER,
    start_state   INTEGER NOT NULL CHECK (start_state BETWEEN 0 AND 8),
    end_state     INTEGER CHECK (end_state IS NULL OR end_state BETWEEN 0 AND 8),
    current_state INTEGER NOT NULL CHECK (current_state BETWEEN 0 AND 8),
    status        TEXT NOT NULL CHECK (status IN ('ACTIVE', 'COMPLETED', 'CANCELLED', 'FAULTED')),
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata) AND json_type(metadata) = 'object'),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CHECK ((status = 'ACTIVE') = (end_time IS NULL)),
    CHECK ((end_time IS NULL) = (end_state IS NULL)),
    CHECK (end_time IS NULL OR end_time >= start_time)
) WITHOUT ROWID
"""

EVENTS_DDL = """
CREATE TABLE session_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    event_type TEXT NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    timestamp  INTEGER NOT NULL,
    event_data TEXT CHECK (event_data IS NULL OR json_valid(event_data))
)
"""

# Each index names the query it exists for (tests check EXPLAIN QUERY PLAN uses it).
INDEXES = [
    # list, newest first, no filter
    "CREATE INDEX idx_sessions_start_time ON sessions (start_time DESC)",
    # counts by status (stats)
    "CREATE INDEX idx_sessions_status ON sessions (status)",
    # ended_after/ended_before without status
    "CREATE INDEX idx_sessions_end_time ON sessions (end_time DESC)",
    # recently created (admin views)
    "CREATE INDEX idx_sessions_created_at ON sessions (created_at DESC)",
    # list filtered by status
    "CREATE INDEX idx_sessions_status_start ON sessions (status, start_time DESC)",
    # cleanup and ended-range queries by status
    "CREATE INDEX idx_sessions_status_end ON sessions (status, end_time DESC)",
    # a teacher's own sessions
    "CREATE INDEX idx_sessions_user_start ON sessions (user_id, start_time DESC)",
    # active sessions (students' listing)
    "CREATE INDEX idx_sessions_active ON sessions (start_time DESC) WHERE status = 'ACTIVE' AND end_time IS NULL",
    # events of one session in order
    "CREATE INDEX idx_events_session ON session_events (session_id, id)",
    # recent events
    "CREATE INDEX idx_events_timestamp ON session_events (timestamp DESC)",
    # stats: events per type
    "CREATE INDEX idx_events_type ON session_events (event_type)",
]


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute(SESSIONS_DDL)
    conn.execute(EVENTS_DDL)
    for ddl in INDEXES:
        conn.execute(ddl)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction; a legacy database is converted first.

    Runs on the writer's thread (never on the event loop). Returns what was done, for logs and the CLI.
    """
    from service.db import legacy

    done: list[str] = []
    version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"database schema v{version} is newer than this build (v{SCHEMA_VERSION})")
    if version == SCHEMA_VERSION:
        return done
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version == 0 and legacy.is_legacy(conn):
            done.append(legacy.migrate_legacy(conn).summary())
            version = SCHEMA_VERSION
        else:
            for number in range(version, SCHEMA_VERSION):
                MIGRATIONS[number](conn)
                done.append(f"applied schema migration v{number + 1}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return done
