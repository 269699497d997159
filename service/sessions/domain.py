"""The session vocabulary, defined once: statuses, the state range, the event-type length.

It imports nothing of the package, so every layer may use it (models, SQL, the legacy conversion) without a
cycle. The SQLite schema spells the same values in its CHECKs (``service/storage/sqlite/ddl.py``: a migration's DDL is
history and must not move when a constant does); ``tests/storage/sqlite/test_db_constraints.py`` asserts the two agree.

Statuses are stored in upper case (the schema's CHECK) and rendered by the API in lower case, the old gateway's
spelling; API inputs take either case. ACTIVE and INACTIVE are *open* (no end time; the owner toggles between
them, students see only ACTIVE); the end statuses are final.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

EndStatus = Literal["COMPLETED", "CANCELLED", "FAULTED"]
OpenStatus = Literal["ACTIVE", "INACTIVE"]
Status = Literal[OpenStatus, EndStatus]
ACTIVE: Final = "ACTIVE"
INACTIVE: Final = "INACTIVE"
OPEN_STATUSES: Final[tuple[OpenStatus, ...]] = get_args(OpenStatus)
END_STATUSES: Final[tuple[EndStatus, ...]] = get_args(EndStatus)
STATUSES: Final[tuple[Status, ...]] = (*OPEN_STATUSES, *END_STATUSES)  # open ones first, then the end statuses
# As the API renders them.
ApiStatus = Literal["active", "inactive", "completed", "cancelled", "faulted"]
ApiOpenStatus = Literal["active", "inactive"]

MIN_STATE: Final = 0
MAX_STATE: Final = 8
MAX_EVENT_TYPE_LEN: Final = 64

# The largest ``limit`` any listing accepts; the MAX_PAGE_SIZE setting narrows it (pages are clamped to it).
PAGE_SIZE_LIMIT: Final = 10_000
