"""PostgreSQL connection policy, in one place: an asyncpg pool and one short transaction per unit of work.

- ``unit("read" | "write")``: a pooled connection inside one transaction (a read one is READ ONLY, REPEATABLE
  READ so its statements share a snapshot); committed on exit, rolled back by any exception.
- ``fetch`` / ``fetchrow`` / ``fetchval``: a single-statement read (autocommit: no BEGIN/COMMIT round trips).
- ``connection()``: a bare pooled connection (migrations manage their own transaction).

Session settings go in ``server_settings`` (sent once, at connect), never as ``SET``: the pool's reset on release
is replaced by a no-op (asyncpg's default runs ``RESET ALL`` and friends, one extra round trip per release, and
would undo a ``SET``). asyncpg still rolls back a transaction left open on release; nothing here takes session
state (advisory locks are transaction-scoped, no LISTEN, no cursors outside transactions).

Failures of the engine (refused or lost connections, a server shutting down or starting, no free connection
within ``pool_timeout_s``, a statement or lock wait past its bound) raise ``StorageUnavailable`` (503 +
Retry-After). The pool needs no help to recover: a dead connection is dropped on release and a new one is made on
the next acquire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg

from service.storage.base import OpObserver, StorageUnavailable

Kind = Literal["read", "write"]

# Errors meaning "the engine, not the request": retrying shortly may succeed.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    asyncio.TimeoutError,  # connect timeout
    asyncpg.PostgresConnectionError,  # class 08, including ConnectionDoesNotExistError (lost mid-query)
    asyncpg.AdminShutdownError,  # 57P01: the server is shutting down (or pg_terminate_backend)
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03: starting up / shutting down
    asyncpg.QueryCanceledError,  # 57014: statement_timeout
    asyncpg.LockNotAvailableError,  # 55P03: lock_timeout
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.DeadlockDetectedError,  # 40P01 (lock order makes it unlikely; transient when it happens)
    asyncpg.SerializationError,  # 40001
)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool reset on release: nothing beyond asyncpg's own rollback of an open transaction (see module doc)."""


def _lost(conn: asyncpg.Connection) -> bool:
    """Whether the connection is gone: closed, or already taken back by the pool (the clean-up of a lost
    connection detaches its pool proxy, and then even ``is_closed()`` raises ``InterfaceError``)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def _discard(conn: asyncpg.Connection) -> None:
    """Give a dead connection back to the pool for good (``terminate`` frees its pool slot; the next acquire
    connects anew). Without it, a connection asyncpg marked closed without its clean-up keeps its slot forever,
    and a pool of one answers 503 from then on."""
    with contextlib.suppress(asyncpg.InterfaceError):  # already detached: the pool has taken it back
        conn.terminate()


def _unavailable(exc: BaseException) -> StorageUnavailable:
    # The message names the class only: a server's message may quote connection details.
    return StorageUnavailable(f"database unavailable ({type(exc).__name__}), retry shortly")


class Engine:
    """``dsn`` carries the password: it is kept here, passed to asyncpg, and never logged or shown."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 8,
        pool_timeout_s: float = 2.0,
        observer: OpObserver | None = None,
        application_name: str = "session-gateway",
        statement_timeout_ms: int = 30_000,
        lock_timeout_ms: int = 10_000,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self.pool_size = pool_size
        self.pool_timeout_s = pool_timeout_s
        self._observer = observer
        self._connect_timeout_s = connect_timeout_s
        self.server_settings = {
            "application_name": application_name,
            # bounds a unit that would otherwise hold a pooled connection forever (a stuck lock, a runaway plan)
            "statement_timeout": str(statement_timeout_ms),
            "lock_timeout": str(lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(statement_timeout_ms),
        }
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=min(2, self.pool_size),
                max_size=self.pool_size,
                reset=_no_reset,
                server_settings=self.server_settings,
                timeout=self._connect_timeout_s,
                max_inactive_connection_lifetime=300.0,
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL engine is not open")
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection within ``pool_timeout_s``; engine failures as ``StorageUnavailable``."""
        pool = self.pool
        try:
            conn = await pool.acquire(timeout=self.pool_timeout_s)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        try:
            try:
                yield conn
            except _UNAVAILABLE as exc:
                raise _unavailable(exc) from exc
            except asyncpg.InterfaceError as exc:
                if _lost(conn):  # "the underlying connection is closed": lost before or during this call
                    _discard(conn)
                    raise _unavailable(exc) from exc
                raise
            except asyncpg.InternalClientError as exc:
                # The server's FATAL reached this idle pooled connection (a restart, pg_terminate_backend) before
                # its socket closed: asyncpg's protocol took it for an error of its own and fails the next call
                # ("cannot switch to state ..."), leaving the connection closed but still checked out.
                _discard(conn)
                raise _unavailable(exc) from exc
        finally:
            try:
                await pool.release(conn)
            except (*_UNAVAILABLE, asyncpg.InternalClientError):
                pass  # a lost or broken connection is terminated by the pool; the next acquire makes a new one

    @asynccontextmanager
    async def unit(self, kind: Kind) -> AsyncIterator[asyncpg.Connection]:
        """One unit of work: one transaction on one pooled connection, timed for the observer."""
        started = time.perf_counter()
        try:
            async with self.connection() as conn:
                if kind == "read":
                    transaction = conn.transaction(isolation="repeatable_read", readonly=True)
                else:
                    transaction = conn.transaction()
                async with transaction:
                    yield conn
        finally:
            if self._observer is not None:
                self._observer(kind, time.perf_counter() - started)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        started = time.perf_counter()
        try:
            async with self.connection() as conn:
                rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows
        finally:
            if self._observer is not None:
                self._observer("read", time.perf_counter() - started)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]
