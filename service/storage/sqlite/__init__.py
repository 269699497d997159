"""The SQLite engine, the one place that knows sqlite3 and aiosqlite: connections and their concurrency policy
(``database.py``, ``batching.py``), schema and migrations (``ddl.py``, ``migrations.py``, ``legacy*.py``), the
stores (``sessions.py``, ``rag.py``, ``library.py``, ``jobs.py``, ``access.py``) and maintenance."""

from service.storage.sqlite.database import Database
from service.storage.sqlite.storage import SqliteStorage

__all__ = ["Database", "SqliteStorage"]
