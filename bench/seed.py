"""Seed the gateway's database with N valid sessions, fast, before the gateway starts.

The schema comes from the service itself (``python -m service migrate`` with ``DATABASE_PATH`` set); rows
are then bulk-inserted with ``sqlite3`` in one transaction: every session satisfies the table's CHECKs and
has a SESSION_STARTED event (and a SESSION_ENDED one when it is not ACTIVE). The legacy database for the
baseline is seeded by ``bench.baseline.seed`` with the same shape (same fraction ACTIVE, same time span).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from bench.servers import REPO_ROOT

ENDED_STATUSES = ("COMPLETED", "CANCELLED", "FAULTED")
ENDED_WEIGHTS = (0.85, 0.10, 0.05)
CATEGORIES = ("math", "science", "history", "language", "programming")
COUNTERS = ("document_count", "total_chunks", "query_count", "questions_generated")
DAY_MS = 86_400_000

SESSION_SQL = (
    "INSERT INTO sessions (session_id, user_id, start_time, end_time, start_state, end_state, current_state, "
    "status, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
EVENT_SQL = "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, ?, ?, ?)"


def migrate(db_path: Path, code: Path = REPO_ROOT) -> None:
    """Create the current schema the way the service does it (CLI), so the seed never drifts from it."""
    env = {**os.environ, "DATABASE_PATH": str(db_path)}
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        cwd=code,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def _rows(
    n: int, rng: random.Random, now_ms: int, span_days: float, active_fraction: float, users: int
) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    span_ms = int(span_days * DAY_MS)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for i in range(n):
        sid = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        start = now_ms - rng.randrange(span_ms)
        start_state = rng.randint(0, 8)
        category = rng.choice(CATEGORIES)
        name = f"Session {i}"
        meta = {
            "name": name,
            "category": category,
            "description": f"Seeded {category} session",
            "rag_settings": {},
            "counters": dict.fromkeys(COUNTERS, 0),
        }
        events = [(sid, "SESSION_STARTED", start, dumps({"start_state": start_state, "name": name}))]
        if rng.random() < active_fraction:
            status, end, end_state, current, updated = "ACTIVE", None, None, start_state, start
        else:
            status = rng.choices(ENDED_STATUSES, ENDED_WEIGHTS)[0]
            end = min(now_ms, start + rng.randrange(1_000, 3_600_000))
            end_state = rng.randint(0, 8)
            current, updated = end_state, end
            events.append(
                (
                    sid,
                    "SESSION_ENDED",
                    end,
                    dumps({"status": status, "end_state": end_state, "duration_ms": end - start}),
                )
            )
        row = (
            sid,
            f"user-{rng.randint(1, users)}",
            start,
            end,
            start_state,
            end_state,
            current,
            status,
            dumps(meta),
            start,
            updated,
        )
        yield row, events


def seed_gateway(
    db_path: Path,
    n: int,
    *,
    active_fraction: float = 0.3,
    span_days: float = 90.0,
    users: int = 50,
    seed: int = 1234,
    code: Path = REPO_ROOT,
) -> dict[str, Any]:
    """Create ``db_path`` (must not exist) with the service's schema and ``n`` sessions; return a summary."""
    if db_path.exists():
        raise FileExistsError(db_path)
    started = time.perf_counter()
    migrate(db_path, code)
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        # Seeding only: no fsync, and a cache big enough that the 11 indexes' pages stay in memory.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        rows: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        for row, row_events in _rows(n, rng, now_ms, span_days, active_fraction, users):
            rows.append(row)
            events.extend(row_events)
        rows.sort()  # the table is WITHOUT ROWID (clustered on session_id): insert in key order
        conn.execute("BEGIN")
        conn.executemany(SESSION_SQL, rows)
        conn.executemany(EVENT_SQL, events)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        active = conn.execute("SELECT count(*) FROM sessions WHERE status = 'ACTIVE'").fetchone()[0]
        events_n = conn.execute("SELECT count(*) FROM session_events").fetchone()[0]
    return {
        "path": str(db_path),
        "sessions": sessions,
        "active": active,
        "events": events_n,
        "bytes": db_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 2),
    }


def seed_baseline(db_path: Path, n: int, *, active_fraction: float = 0.3, seed: int = 1234) -> dict[str, Any]:
    """The legacy database for the baseline, through its own seeder (legacy row format)."""
    from bench.baseline.seed import seed_sessions

    if db_path.exists():
        raise FileExistsError(db_path)
    started = time.perf_counter()
    ids = seed_sessions(str(db_path), n, active_fraction=active_fraction, seed=seed)
    with closing(sqlite3.connect(db_path)) as conn:
        active = conn.execute("SELECT count(*) FROM sessions WHERE status = 'ACTIVE'").fetchone()[0]
    return {
        "path": str(db_path),
        "sessions": len(ids),
        "active": active,
        "bytes": db_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 2),
    }


def integrity_check(db_path: Path) -> dict[str, Any]:
    """``PRAGMA integrity_check`` and ``foreign_key_check`` of a (stopped) database."""
    with closing(sqlite3.connect(db_path)) as conn:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM session_events").fetchone()[0]
    return {
        "integrity_check": integrity[0] if integrity == ["ok"] else integrity[:20],
        "ok": integrity == ["ok"] and not fk,
        "foreign_key_violations": len(fk),
        "sessions": sessions,
        "events": events,
    }
