"""The one place that knows aiosqlite: connections, schema, migrations, maintenance."""

from service.storage.sqlite.database import Database, DatabaseError, Rows

__all__ = ["Database", "DatabaseError", "Rows"]
