"""SQLite online backup and retention cleanup (``SqliteStorage.backup`` / ``cleanup``: the admin endpoints and
the CLI)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

from service.sessions import rules
from service.sessions.domain import END_STATUSES, OPEN_STATUSES
from service.storage.base import BackupResult, CleanupResult
from service.storage.sqlite.database import Database

_ENDED_MARKS = ", ".join("?" * len(END_STATUSES))
_OPEN_SQL = "(" + ", ".join(f"'{s}'" for s in OPEN_STATUSES) + ")"  # constants, spelled into SQL


async def backup(db: Database, dest_dir: str) -> BackupResult:
    """Copy the live database with SQLite's backup API into ``dest_dir/sessions-<UTC stamp>.db``.

    Runs on the writer's thread (one hop): writers queue behind it for its duration, readers do not, and the
    copy is a consistent snapshot including what is still in the WAL.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = Path(dest_dir) / f"sessions-{stamp}.db"

    def run(conn: sqlite3.Connection) -> BackupResult:
        started = time.perf_counter()
        target.parent.mkdir(parents=True, exist_ok=True)
        dest = sqlite3.connect(str(target))  # on the writer's thread (run_on_writer), never on the loop
        try:
            conn.backup(dest)
            pages = int(dest.execute("PRAGMA page_count").fetchone()[0])
            dest.execute("PRAGMA journal_mode = DELETE")
        finally:
            dest.close()
        return BackupResult(str(target), target.stat().st_size, pages, time.perf_counter() - started)

    return await db.run_on_writer(run)


async def cleanup(
    db: Database, *, keep_newest: int | None = None, older_than_days: float | None = None
) -> CleanupResult:
    """Delete ended sessions (and, by cascade, their events) beyond a retention rule.

    ``keep_newest``: keep the N most recently ended sessions; ``older_than_days``: delete sessions that ended
    before now - D days. With both, a session goes when either rule says so. Open sessions (ACTIVE and INACTIVE)
    never match: every statement filters on an ended status, through ``idx_sessions_status_end``.
    """
    cutoff = rules.retention_cutoff(keep_newest, older_than_days)

    def run(conn: sqlite3.Connection) -> CleanupResult:
        doomed: set[str] = set()
        for status in END_STATUSES:
            if cutoff is not None:
                doomed.update(
                    r[0]
                    for r in conn.execute(
                        "SELECT session_id FROM sessions WHERE status = ? AND end_time < ?", (status, cutoff)
                    )
                )
        if keep_newest is not None:
            rows = conn.execute(
                f"SELECT session_id FROM sessions WHERE status IN ({_ENDED_MARKS}) "  # noqa: S608 - placeholders
                "ORDER BY end_time DESC, session_id LIMIT -1 OFFSET ?",
                (*END_STATUSES, keep_newest),
            ).fetchall()
            doomed.update(r[0] for r in rows)
        events = 0
        ids = sorted(doomed)
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            events += conn.execute(
                f"SELECT count(*) FROM session_events WHERE session_id IN ({marks})",  # noqa: S608 - placeholders only
                chunk,
            ).fetchone()[0]
            conn.execute(
                f"DELETE FROM sessions WHERE status NOT IN {_OPEN_SQL} AND session_id IN ({marks})",  # noqa: S608
                chunk,
            )
        return CleanupResult(len(ids), int(events))

    return await db.write(run)
