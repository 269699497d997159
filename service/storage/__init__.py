"""Storage: the domain's operations behind one interface (``base.py``), one implementation per engine."""

from service.storage.base import (
    BackupResult,
    CleanupResult,
    Engine,
    EventPage,
    JobProgress,
    LeaseLost,
    NotSupportedByEngine,
    SessionPage,
    Storage,
    StorageUnavailable,
)

__all__ = [
    "BackupResult",
    "CleanupResult",
    "Engine",
    "EventPage",
    "JobProgress",
    "LeaseLost",
    "NotSupportedByEngine",
    "SessionPage",
    "Storage",
    "StorageUnavailable",
]
