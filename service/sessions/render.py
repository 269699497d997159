"""Rendering stored rows as the API's documents, the same for every engine.

A row is a mapping with the ``sessions`` columns, ``metadata`` as JSON text (an engine that stores it as a JSON
type hands it over as text). The SQLite engine renders the same document in SQL (``SESSION_JSON``);
``tests/storage/sqlite/test_sql_rendering.py`` keeps the two identical.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from service.sessions.models import COUNTERS, LIST_FIELDS, RESERVED_METADATA_KEYS, TEXT_FIELDS
from service.timeutil import iso


class Row(Protocol):
    """A stored row by column name: a dict, ``sqlite3.Row`` or ``asyncpg.Record``."""

    def __getitem__(self, key: str, /) -> Any: ...


# Not tracked by this service; rendered for the old client's types (float rating, integer counts).
UNTRACKED = {"student_entry_count": 0, "user_rating": 0.0, "backup_count": 0}


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def session_out(row: Row) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(row["metadata"])
    counters = meta.get("counters") or {}
    end = row["end_time"]
    out: dict[str, Any] = {
        "session_id": row["session_id"],
        "user_id": row["user_id"],
        "created_by": row["user_id"],
        "status": row["status"].lower(),
        "name": meta.get("name"),
        "category": meta.get("category"),
    }
    for key in TEXT_FIELDS:
        value = meta.get(key)
        out[key] = value if isinstance(value, str) else ""
    for key in LIST_FIELDS:
        value = meta.get(key)
        out[key] = value if isinstance(value, list) else []
    return out | {
        "is_public": meta.get("is_public") is True,
        "start_state": row["start_state"],
        "current_state": row["current_state"],
        "end_state": row["end_state"],
        "start_time": iso(row["start_time"]),
        "start_time_ms": row["start_time"],
        "end_time": iso(end),
        "end_time_ms": end,
        "duration_ms": None if end is None else end - row["start_time"],
        "metadata": {k: v for k, v in meta.items() if k not in RESERVED_METADATA_KEYS},
        "rag_settings": meta.get("rag_settings") or {},
        **{name: int(counters.get(name) or 0) for name in COUNTERS},
        **UNTRACKED,
        "created_at": iso(row["created_at"]),
        "created_at_ms": row["created_at"],
        "updated_at": iso(row["updated_at"]),
        "updated_at_ms": row["updated_at"],
        "last_accessed": iso(row["updated_at"]),
    }


def event_out(row: Row) -> dict[str, Any]:
    data = row["event_data"]
    return {
        "id": row["id"],
        "session_id": row["session_id"],
        "event_type": row["event_type"],
        "timestamp": iso(row["timestamp"]),
        "timestamp_ms": row["timestamp"],
        "event_data": None if data is None else json.loads(data),
    }
