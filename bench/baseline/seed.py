"""Fill a legacy-schema database with N realistic sessions, fast (one connection, batched executemany).

Used by the bench runner (e.g. the 100k-session list benchmark) and usable on its own:
``python -m bench.baseline.seed --db data/legacy.db -n 100000``.
The rows follow the legacy format exactly (ISO text timestamps, events as one JSON array, metadata as JSON
text), so the same file can also feed the new service's legacy-schema migration.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timedelta
from typing import Any

from bench.baseline.app import INSERT_SESSION, init_db

ENDED_STATUSES = ("COMPLETED", "CANCELLED", "FAULTED")
ENDED_WEIGHTS = (0.85, 0.10, 0.05)
CATEGORIES = ("math", "science", "history", "language", "programming")


def _rows(
    n: int,
    *,
    rng: random.Random,
    now: datetime,
    span: timedelta,
    active_fraction: float,
    events_per_session: int,
    users: int,
    ids: list[str],
) -> Iterator[tuple[Any, ...]]:
    span_s = span.total_seconds()
    for i in range(n):
        session_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        ids.append(session_id)
        start = now - timedelta(seconds=rng.uniform(0.0, span_s))
        start_state = rng.randint(0, 8)
        user_id = f"user-{rng.randint(1, users)}"
        category = rng.choice(CATEGORIES)
        metadata = {
            "name": f"Session {i}",
            "category": category,
            "description": f"Seeded {category} session",
            "created_by": user_id,
        }
        events: list[dict[str, Any]] = [
            {"event_type": "SESSION_STARTED", "timestamp": start.isoformat(), "start_state": start_state}
        ]
        t = start
        state = start_state
        for _ in range(events_per_session):
            t += timedelta(seconds=rng.uniform(1.0, 300.0))
            new_state = rng.randint(0, 8)
            events.append(
                {"event_type": "STATE_CHANGED", "timestamp": t.isoformat(), "from": state, "to": new_state}
            )
            state = new_state
        if rng.random() < active_fraction:
            status, end_iso, end_state, updated = "ACTIVE", None, None, t
        else:
            status = rng.choices(ENDED_STATUSES, ENDED_WEIGHTS)[0]
            end = t + timedelta(seconds=rng.uniform(1.0, 3600.0))
            end_iso, end_state, updated = end.isoformat(), rng.randint(0, 8), end
            events.append(
                {
                    "event_type": "SESSION_ENDED",
                    "timestamp": end_iso,
                    "status": status,
                    "end_state": end_state,
                }
            )
        yield (
            session_id,
            start.isoformat(),
            end_iso,
            start_state,
            end_state,
            status,
            json.dumps(events),
            json.dumps(metadata),
            start.isoformat(),
            updated.isoformat(),
        )


def seed_sessions(
    db_path: str,
    n: int,
    *,
    active_fraction: float = 0.3,
    events_per_session: int = 2,
    span_days: float = 90.0,
    users: int = 50,
    seed: int | None = 1234,
    now: datetime | None = None,
) -> list[str]:
    """Insert ``n`` legacy sessions into ``db_path`` (table created if missing); return their ids.

    Start times are spread uniformly over the ``span_days`` before ``now`` (naive local time, like
    ``datetime.now()``); ``active_fraction`` of them are ACTIVE, the rest ended (mostly COMPLETED).
    Deterministic for a given ``seed`` and ``now``. One transaction; the journal mode is left as it is.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    init_db(db_path)
    rng = random.Random(seed)
    ids: list[str] = []
    rows = _rows(
        n,
        rng=rng,
        now=now or datetime.now(),
        span=timedelta(days=span_days),
        active_fraction=active_fraction,
        events_per_session=events_per_session,
        users=users,
        ids=ids,
    )
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("PRAGMA synchronous=OFF")  # per connection only; the file keeps SQLite's defaults
        conn.executemany(INSERT_SESSION, rows)
        conn.commit()
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline.seed", description=__doc__)
    parser.add_argument("--db", required=True)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--active-fraction", type=float, default=0.3)
    parser.add_argument("--events-per-session", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    ids = seed_sessions(
        args.db,
        args.n,
        active_fraction=args.active_fraction,
        events_per_session=args.events_per_session,
        seed=args.seed,
    )
    print(f"seeded {len(ids)} sessions into {args.db}")


if __name__ == "__main__":
    main()
