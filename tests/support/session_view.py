"""Reading a session document in tests."""

from __future__ import annotations

from typing import Any

from service.sessions.models import COUNTERS


def counters_of(session: dict[str, Any]) -> dict[str, int]:
    """The session's counters (top-level fields of the representation), as one dict to compare."""
    return {name: session[name] for name in COUNTERS}
