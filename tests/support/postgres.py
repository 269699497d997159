"""A real PostgreSQL server for the tests: started once per test session, one fresh database per test.

The server binaries are Debian's (``/usr/lib/postgresql/<version>/bin``, package ``postgresql``; ``make test``
installs it when missing). ``initdb`` refuses to run as root, so as root the cluster is created and run as the
``postgres`` OS user. Data directory and unix socket live in one temporary directory; the server listens on a
free loopback port, with ``fsync=off`` (a test cluster need not survive a power cut). Where the binaries (or
asyncpg) are missing the PostgreSQL tests skip, except under ``CI=true``, where they fail naming the package.
Under pytest-xdist each worker starts a server of its own: its own directory (``mkdtemp``) and a port from the
worker's own block (``support.ports``), so two workers' servers never meet.

Fixtures: ``postgres_server`` (the session's server), ``pg_empty_dsn`` (a new, empty database), ``pg_dsn``
(a new database copied from a migrated template: ``CREATE DATABASE ... TEMPLATE``, cheaper than migrating),
``pg_gateway_dsn`` / ``pg_module_dsn`` (the same for gateways, per test / per module, emptied afterwards and
reused) and ``pg_storage`` (a ``PostgresStorage`` opened on it).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.ports import free_port

if TYPE_CHECKING:
    from service.storage.postgres import PostgresStorage

PACKAGE = "postgresql"  # Debian's package with the server binaries
TEMPLATE_DB = "migrated_template"


def find_bindir(root: Path = Path("/usr/lib/postgresql")) -> Path | None:
    """The newest installed server's bin directory (not /usr/local/bin's wrappers: the real binaries)."""
    if not root.is_dir():
        return None
    found = [d / "bin" for d in root.iterdir() if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run these tests, a missing server is a broken environment."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int = 0
    user: str | None = None  # the OS user running the server (postgres when the tests run as root)
    template_ready: bool = False
    spare: list[str] = field(default_factory=list)  # emptied gateway databases, ready for the next test
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def dsn(self, database: str = "postgres") -> str:
        # a password (ignored: trust) and no TLS, so asyncpg reads neither ~/.pgpass nor certificate files on the
        # event loop when it connects (blockbuster would fail the test)
        return f"postgresql://postgres:test@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def next_name(self) -> str:
        return f"test_{os.getpid()}_{next(self._names)}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            user=self.user,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    def init(self) -> None:
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.socket_dir.mkdir()
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        """Start (or restart) on the same port once one was chosen; pg_ctl -w returns when it accepts connections."""
        self.port = self.port or free_port()
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.socket_dir} -F -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def require_bindir(root: Path = Path("/usr/lib/postgresql")) -> Path:
    """The server binaries, or a skip (a failure under CI=true) naming the package that provides them."""
    try:
        import asyncpg  # noqa: F401 - only whether it is installed
    except ImportError:
        unavailable("asyncpg is not installed (pip install '.[postgres]')")
    bindir = find_bindir(root)
    if bindir is None:
        unavailable(f"no PostgreSQL server binaries under {root}: install Debian's {PACKAGE!r} package")
        raise AssertionError("unreachable")
    return bindir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = require_bindir()
    root = Path(tempfile.mkdtemp(prefix="pgtest-"))
    server = PostgresServer(bindir, root)
    try:
        server.init()
        server.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr}\n{server.log()}", pytrace=False)
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped by a test that stopped it and failed before restarting it
        shutil.rmtree(root, ignore_errors=True)


async def _create_database(server: PostgresServer, name: str, template: str = "template0") -> None:
    import asyncpg

    conn = await asyncpg.connect(server.dsn())
    try:
        # names are ours (test_<pid>_<n>, a constant), never client input
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()


async def _drop_database(server: PostgresServer, name: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(server.dsn())
    except (OSError, asyncpg.PostgresError):
        return  # the server is down (a test stopped it): the cluster goes with the session anyway
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_empty_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A new empty database (no schema), dropped after the test."""
    name = postgres_server.next_name()
    await _create_database(postgres_server, name)
    yield postgres_server.dsn(name)
    await _drop_database(postgres_server, name)


async def _ensure_template(server: PostgresServer) -> None:
    """Migrate the template database once per session: each test's database is a copy of it."""
    from service.storage.postgres.engine import Engine
    from service.storage.postgres.migrations import migrate

    if server.template_ready:
        return
    await _drop_database(server, TEMPLATE_DB)
    await _create_database(server, TEMPLATE_DB)
    engine = Engine(server.dsn(TEMPLATE_DB), pool_size=1, pool_timeout_s=10)
    await engine.open()
    try:
        await migrate(engine)
    finally:
        await engine.close()
    server.template_ready = True


async def _migrated_database(server: PostgresServer) -> str:
    await _ensure_template(server)
    name = server.next_name()
    await _create_database(server, name, TEMPLATE_DB)
    return name


@pytest.fixture
async def pg_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A new database at the current schema, copied from a template migrated once per session."""
    name = await _migrated_database(postgres_server)
    yield postgres_server.dsn(name)
    await _drop_database(postgres_server, name)


# Every table but schema_version, quoted by PostgreSQL itself (names from the catalog, never from a client).
_DATA_TABLES = (
    "SELECT string_agg(format('%I', tablename), ', ') FROM pg_tables "
    "WHERE schemaname = 'public' AND tablename <> 'schema_version'"
)


async def _lend_database(server: PostgresServer) -> str:
    """A migrated database for a gateway test: an emptied one from an earlier test, or a new template copy."""
    return server.spare.pop() if server.spare else await _migrated_database(server)


async def _give_back(server: PostgresServer, name: str) -> None:
    """Empty the database (TRUNCATE ... RESTART IDENTITY: ~40 ms, a new copy costs ~0.4 s) for the next test.

    Only a database still at the current schema version is reused; one that cannot be emptied at once (the server is
    down, a leaked transaction holds a lock) is dropped instead."""
    import asyncpg

    from service.storage.postgres.migrations import SCHEMA_VERSION

    try:
        conn = await asyncpg.connect(server.dsn(name), timeout=5, server_settings={"lock_timeout": "2000"})
    except (OSError, TimeoutError, asyncpg.PostgresError):
        await _drop_database(server, name)
        return
    try:
        version = await conn.fetchval("SELECT max(version) FROM schema_version")
        tables = await conn.fetchval(_DATA_TABLES)
        if version != SCHEMA_VERSION or not tables:
            raise LookupError(f"{name} is not at the template's schema")
        await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
    except (OSError, LookupError, asyncpg.PostgresError):
        await conn.close()
        await _drop_database(server, name)
        return
    await conn.close()
    server.spare.append(name)


@pytest.fixture
async def pg_gateway_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A migrated, empty database for the test's gateways (``engine_overrides``); emptied and kept for the next
    test rather than dropped. Tests of the storage layer itself, which may change the schema, take ``pg_dsn``."""
    name = await _lend_database(postgres_server)
    yield postgres_server.dsn(name)
    await _give_back(postgres_server, name)


@pytest.fixture(scope="module")
def pg_module_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """``pg_gateway_dsn`` for a whole module (the security suites' shared gateways), from synchronous code."""
    from support.dbquery import run_sync

    name = run_sync(lambda: _lend_database(postgres_server))
    yield postgres_server.dsn(name)
    run_sync(lambda: _give_back(postgres_server, name))


@pytest.fixture
async def pg_storage(pg_dsn: str) -> AsyncIterator[PostgresStorage]:
    """An opened ``PostgresStorage`` on the test's migrated database (pool of 4)."""
    from service.storage.postgres import PostgresStorage
    from service.storage.postgres.engine import Engine

    store = PostgresStorage(Engine(pg_dsn, pool_size=4, pool_timeout_s=10))
    await store.open()
    yield store
    await store.close()
