"""The session vocabulary, defined once: statuses, the state range, the event-type length.

It imports nothing of the package, so every layer may use it (models, SQL, the legacy conversion) without a
cycle. The SQLite schema spells the same values in its CHECKs (``service/db/ddl.py``: a migration's DDL is
history and must not move when a constant does); ``tests/db/test_db_constraints.py`` asserts the two agree.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

EndStatus = Literal["COMPLETED", "CANCELLED", "FAULTED"]
Status = Literal["ACTIVE", EndStatus]
ACTIVE: Final = "ACTIVE"
END_STATUSES: Final[tuple[EndStatus, ...]] = get_args(EndStatus)
STATUSES: Final[tuple[Status, ...]] = get_args(Status)  # ACTIVE first, then the end statuses

MIN_STATE: Final = 0
MAX_STATE: Final = 8
MAX_EVENT_TYPE_LEN: Final = 64

# The largest ``limit`` any listing accepts; the MAX_PAGE_SIZE setting narrows it (pages are clamped to it).
PAGE_SIZE_LIMIT: Final = 10_000
