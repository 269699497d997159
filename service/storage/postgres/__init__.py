"""The PostgreSQL engine (asyncpg), for replicas sharing one database: ``PostgresStorage``."""
