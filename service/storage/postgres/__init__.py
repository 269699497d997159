"""The PostgreSQL engine (asyncpg), for replicas sharing one database: ``PostgresStorage``.

Imported only when ``DATABASE_URL`` selects it (asyncpg is the optional ``postgres`` extra).
"""

from service.storage.postgres.storage import PostgresStorage

__all__ = ["PostgresStorage"]
