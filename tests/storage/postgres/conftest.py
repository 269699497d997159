"""Fixtures of the PostgreSQL storage tests: an opened ``PostgresStorage`` on the test's migrated database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.storage.postgres import PostgresStorage
from service.storage.postgres.engine import Engine


@pytest.fixture
async def storage(pg_dsn: str) -> AsyncIterator[PostgresStorage]:
    store = PostgresStorage(Engine(pg_dsn, pool_size=4, pool_timeout_s=10))
    await store.open()
    yield store
    await store.close()
