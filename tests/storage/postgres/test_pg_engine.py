"""The pool's policy: bounded waits answer 503, no RESET ALL per release, recovery after the server returns."""

from __future__ import annotations

import asyncio
import struct

import asyncpg
import pytest

from service.auth import Principal
from service.sessions.models import SessionCreate
from service.storage.base import StorageUnavailable
from service.storage.postgres import PostgresStorage
from service.storage.postgres.engine import Engine
from support.postgres import PostgresServer

ADMIN = Principal(id="admin-1", role="admin", username="admin", profile={})


async def test_a_pool_wait_past_the_timeout_is_storage_unavailable(pg_dsn: str) -> None:
    engine = Engine(pg_dsn, pool_size=1, pool_timeout_s=0.2)
    await engine.open()
    try:
        async with engine.unit("read") as held:
            assert await held.fetchval("SELECT 1") == 1
            with pytest.raises(StorageUnavailable) as caught:
                await engine.fetchval("SELECT 2")
        assert caught.value.status == 503
        assert caught.value.headers["Retry-After"] == "1"
        assert await engine.fetchval("SELECT 3") == 3  # the connection is back in the pool
    finally:
        await engine.close()


async def test_release_does_not_reset_session_state_but_server_settings_apply(pg_dsn: str) -> None:
    """asyncpg's default reset runs RESET ALL (and more) on every release; ours runs nothing but asyncpg's own
    rollback of an open transaction. A session SET survives a release: the proof that no RESET ALL ran."""
    engine = Engine(pg_dsn, pool_size=1, application_name="pg-test", statement_timeout_ms=12_345)
    await engine.open()
    try:
        async with engine.connection() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SET gateway.marker = 'kept'")
        async with engine.connection() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same pooled connection
            assert await conn.fetchval("SELECT current_setting('gateway.marker', true)") == "kept"
            assert await conn.fetchval("SHOW application_name") == "pg-test"
            assert await conn.fetchval("SHOW statement_timeout") == "12345ms"
        # a unit's failure rolls its transaction back; the connection is clean for the next unit
        with pytest.raises(asyncpg.UniqueViolationError):
            async with engine.unit("write") as conn:
                await conn.execute("CREATE TEMP TABLE t (x int PRIMARY KEY)")
                await conn.execute("INSERT INTO t VALUES (1), (1)")
        async with engine.connection() as conn:
            assert await conn.fetchval("SELECT to_regclass('pg_temp.t')") is None
            assert await conn.fetchval("SELECT txid_current_if_assigned()") is None  # no transaction left open
    finally:
        await engine.close()


async def test_the_default_pool_reset_would_have_undone_it(pg_dsn: str) -> None:
    """The contrast: asyncpg's default reset (no ``reset=``) clears the same SET on release."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET gateway.marker = 'kept'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_setting('gateway.marker', true)") in ("", None)
            assert "RESET ALL" in conn.get_reset_query()
    finally:
        await pool.close()


async def test_observer_sees_each_unit_as_a_read_or_a_write(pg_dsn: str) -> None:
    seen: list[tuple[str, float]] = []
    store = PostgresStorage(Engine(pg_dsn, pool_size=2, observer=lambda kind, s: seen.append((kind, s))))
    await store.open()
    try:
        created = await store.sessions.create(ADMIN, SessionCreate(name="x"), max_metadata_bytes=65536)
        await store.sessions.get(ADMIN, created["session_id"], with_events=False)
    finally:
        await store.close()
    assert [kind for kind, _ in seen[-2:]] == ["write", "read"]
    assert all(s >= 0 for _, s in seen)


async def _until_served(store: PostgresStorage, attempts: int) -> int:
    """Operations tried until one succeeds (each failure must be a clean 503); how many failed first."""
    failures = 0
    for _ in range(attempts):
        try:
            await store.sessions.stats(ADMIN)
            return failures
        except StorageUnavailable:
            failures += 1
    raise AssertionError(f"still unavailable after {attempts} attempts")


async def test_terminated_backends_answer_503_then_the_pool_reconnects(pg_dsn: str) -> None:
    store = PostgresStorage(Engine(pg_dsn, pool_size=2, application_name="pg-terminate-test"))
    await store.open()
    try:
        await _until_served(store, 1)
        killer = await asyncpg.connect(pg_dsn)
        try:
            killed = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                "pg-terminate-test",
            )
        finally:
            await killer.close()
        assert killed >= 1
        await asyncio.sleep(0.05)  # let the terminations reach the client sockets
        # each dead pooled connection fails at most once, then is replaced
        assert await _until_served(store, store.db.pool_size + 2) <= store.db.pool_size
        await _until_served(store, 1)
    finally:
        await store.close()


async def test_a_server_restart_answers_503_while_down_and_recovers_by_itself(
    postgres_server: PostgresServer, pg_dsn: str
) -> None:
    store = PostgresStorage(Engine(pg_dsn, pool_size=2, pool_timeout_s=1))
    await store.open()
    try:
        await _until_served(store, 1)
        await asyncio.to_thread(postgres_server.stop)
        try:
            with pytest.raises(StorageUnavailable):
                await store.sessions.stats(ADMIN)
            assert await store.schema_version() is None  # readiness: not ready
        finally:
            await asyncio.to_thread(postgres_server.start)
        assert await _until_served(store, store.db.pool_size + 2) <= store.db.pool_size + 1
        assert await store.schema_version() is not None
    finally:
        await store.close()


# The server's FATAL on an idle connection (what a fast shutdown or pg_terminate_backend sends before closing the
# socket): ErrorResponse with severity, SQLSTATE 57P01 and a message (PostgreSQL protocol, "Message Formats").
_FIELDS = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"
FATAL_57P01 = b"E" + struct.pack("!I", len(_FIELDS) + 4) + _FIELDS


class Relay:
    """A TCP relay on 127.0.0.1 in front of the server; ``speak_as_server`` sends bytes to every client as the server
    would, leaving the sockets open: the moment between a FATAL and the close, held as long as the test needs."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.clients: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.clients.append(writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def speak_as_server(self, data: bytes) -> None:
        for writer in self.clients:
            writer.write(data)

    async def close(self) -> None:
        for writer in self.clients:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_fatal_reaching_an_idle_pooled_connection_is_503_then_the_connection_is_replaced(
    postgres_server: PostgresServer, pg_dsn: str
) -> None:
    """Seen with three replicas under load while PostgreSQL restarted: asyncpg's protocol, idle, takes the FATAL as
    an error of its own and waits for a ReadyForQuery that never comes; the next unit failed with
    ``InternalClientError`` (a 500), and the pool would have handed the stuck connection out again and again."""
    relay = await Relay(postgres_server.port).start()
    store = PostgresStorage(Engine(pg_dsn.replace(f":{postgres_server.port}/", f":{relay.port}/"), pool_size=1))
    await store.open()
    try:
        await store.sessions.stats(ADMIN)  # the pool's one connection, idle again
        relay.speak_as_server(FATAL_57P01)
        await asyncio.sleep(0.05)  # let the bytes reach the client's protocol
        with pytest.raises(StorageUnavailable):
            await store.sessions.stats(ADMIN)
        assert (await store.sessions.stats(ADMIN))["total"] == 0  # a new connection
    finally:
        try:
            async with asyncio.timeout(10):  # a pool slot left checked out would make close() wait forever
                await store.close()
        finally:
            await relay.close()
