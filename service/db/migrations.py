"""The ordered schema migrations; the version a file is at lives in its ``PRAGMA user_version``.

Step ``n`` (``MIGRATIONS[n - 1]``) brings a database from version ``n - 1`` to ``n``; a legacy database (the
replaced gateway's, ``legacy.is_legacy``) is converted to v1 instead of getting step 1, then takes the later steps.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from service.db import ddl, legacy

Step = Callable[[sqlite3.Connection], None]


def _v1(conn: sqlite3.Connection) -> None:
    for statement in ddl.V1:
        conn.execute(statement)


def _library(conn: sqlite3.Connection) -> None:
    """The markdown library's table (its own step, so it can be ordered with other steps at merge)."""
    for statement in ddl.LIBRARY_V1:
        conn.execute(statement)


MIGRATIONS: list[Step] = [_v1, _library]
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
            version = 1
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
