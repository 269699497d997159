"""Time as the API shows it: Unix ms inside, ISO-8601 UTC beside it in responses."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    # integer arithmetic: no float rounding, and the same digits as the SQL rendering in storage/sqlite/sessions.py
    seconds, millis = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"
