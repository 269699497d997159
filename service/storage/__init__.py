"""Storage: the domain's operations behind one interface (``base.py``), one implementation per engine.

``open_storage`` picks the engine from the settings: PostgreSQL when ``DATABASE_URL`` is set, else the SQLite
file at ``DATABASE_PATH``. Each engine's package is imported only when chosen, so SQLite needs no asyncpg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.storage.base import (
    BackupResult,
    BatchObserver,
    CleanupResult,
    Engine,
    EventPage,
    JobProgress,
    LeaseLost,
    NotSupportedByEngine,
    OpObserver,
    SessionPage,
    Storage,
    StorageError,
    StorageUnavailable,
)

if TYPE_CHECKING:
    from service.settings import DatabaseSettings


def open_storage(
    settings: DatabaseSettings,
    *,
    observer: OpObserver | None = None,
    batch_observer: BatchObserver | None = None,
) -> Storage:
    """The configured engine's storage, not opened yet (``await storage.open()``). ``batch_observer`` sees the
    size of each SQLite batch (PostgreSQL has none: each unit takes a pooled connection)."""
    if settings.database_url.get_secret_value():
        try:
            from service.storage import postgres
        except ImportError as exc:
            raise StorageError(f"DATABASE_URL is set but the PostgreSQL engine is not available: {exc}") from exc
        storage: Storage = postgres.PostgresStorage.from_settings(settings, observer=observer)
        return storage
    from service.storage.sqlite import SqliteStorage

    return SqliteStorage.from_settings(settings, observer=observer, batch_observer=batch_observer)


__all__ = [
    "BackupResult",
    "CleanupResult",
    "Engine",
    "EventPage",
    "JobProgress",
    "LeaseLost",
    "NotSupportedByEngine",
    "BatchObserver",
    "OpObserver",
    "SessionPage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "open_storage",
]
