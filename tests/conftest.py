"""Shared fixtures: a real reference downstream on 127.0.0.1, and gateways either in-process or on real sockets.

``gateway``/``client`` (and ``make_app_gateway``) run the gateway app in the test's own event loop and reach it
through ``httpx.ASGITransport``: its lifespan, database and shared downstream client are real, only the socket
between the test and the gateway is not. ``make_gateway`` starts a real uvicorn server in a thread, for the tests
that need real connections (slow clients, body streaming and timeouts, disconnects, shedding, shutdown).

Both engines: a module marked ``pytestmark = pytest.mark.engines`` runs each of its gateway tests twice, on SQLite
(a file under ``tmp_path``) and on PostgreSQL (an empty database of the session's server, ``support.postgres``);
``db_engine`` says which. Gateways made in one test share one database, whichever the engine. A test of such a
module that is about SQLite itself (it opens the file, say) carries ``@pytest.mark.sqlite_only``
(``postgres_only``: a PostgreSQL twin of such a test, e.g. with a smaller fuzzing budget). Module-scoped
gateways (the security suites') take ``module_engine_overrides`` instead: one database per module and engine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.app import create_app as create_devstack
from service.app import create_app
from support.inprocess import AppGatewayFactory, InProcessServer
from support.servers import GatewayFactory, ServerThread, gateway_settings

# postgres_server / pg_dsn / pg_empty_dsn: a real PostgreSQL server for the tests that need one
pytest_plugins = ["support.postgres"]

ENGINES = ("sqlite", "postgres")
GATEWAY_FIXTURES = {"make_gateway", "make_app_gateway", "gateway", "client"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    both = metafunc.definition.get_closest_marker("engines") is not None
    only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
    only_postgres = both and metafunc.definition.get_closest_marker("postgres_only") is not None
    engines = ENGINES[1:] if only_postgres else ENGINES if both and not only_sqlite else ENGINES[:1]
    if "db_engine" in metafunc.fixturenames:
        metafunc.parametrize("db_engine", engines, indirect=True)
    if "module_db_engine" in metafunc.fixturenames:
        # grouped by module: a module-scoped gateway serves every test of one engine, then of the other
        metafunc.parametrize("module_db_engine", engines, indirect=True, scope="module")


SHARED_NODE_IDS = pytest.StashKey[frozenset[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Find node ids that name more than one test: pytest-xdist schedules by node id and runs only one of them (the
    JUnit report merges them too), so `make test` on two workers would silently run fewer tests than serially."""
    config.stash[SHARED_NODE_IDS] = frozenset(i for i, n in Counter(item.nodeid for item in items).items() if n > 1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail each test whose node id another test has (serially every one of them, under xdist the one it runs)."""
    if item.nodeid in item.config.stash.get(SHARED_NODE_IDS, frozenset()):
        pytest.fail(f"{item.nodeid} names more than one test: give each its own test id", pytrace=False)


@pytest.fixture
def db_engine(request: pytest.FixtureRequest) -> str:
    """The engine the test's gateways run on: "sqlite" unless the module runs on both (see above)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def engine_overrides(db_engine: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings that put a gateway on ``db_engine``: nothing for SQLite, an empty database for PostgreSQL."""
    if db_engine == "postgres":
        return {"database_url": request.getfixturevalue("pg_gateway_dsn")}
    return {}


@pytest.fixture(scope="module")
def module_db_engine(request: pytest.FixtureRequest) -> str:
    """``db_engine`` for module-scoped gateways (one per engine, shared by the module's tests)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="module")
def module_engine_overrides(module_db_engine: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """``engine_overrides`` for a module-scoped gateway: an empty database for the module on PostgreSQL."""
    if module_db_engine == "postgres":
        return {"database_url": request.getfixturevalue("pg_module_dsn")}
    return {}


@pytest.fixture(scope="session")
def devstack() -> Iterator[ServerThread]:
    server = ServerThread(create_devstack()).start()
    yield server
    server.stop()


@pytest.fixture
async def reset_devstack(devstack: ServerThread) -> AsyncIterator[None]:
    async with httpx.AsyncClient(base_url=devstack.url) as c:
        await c.post("/_control/reset")
        yield
        await c.post("/_control/reset")


@pytest.fixture
def make_gateway(
    tmp_path: Path, devstack: ServerThread, engine_overrides: dict[str, Any]
) -> Iterator[GatewayFactory]:
    """Real uvicorn gateways (``downstream=`` injects a client; other keywords override settings)."""
    started: list[ServerThread] = []

    def make(**overrides: Any) -> ServerThread:
        downstream = overrides.pop("downstream", None)
        settings = gateway_settings(tmp_path, devstack.url, **{**engine_overrides, **overrides})
        server = ServerThread(create_app(settings, downstream=downstream)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def make_app_gateway(
    tmp_path: Path, devstack: ServerThread, engine_overrides: dict[str, Any]
) -> AsyncIterator[AppGatewayFactory]:
    """In-process gateways, lifespan started; same keywords as ``make_gateway``. Reach one with ``.client()``."""
    started: list[InProcessServer] = []

    async def make(**overrides: Any) -> InProcessServer:
        downstream = overrides.pop("downstream", None)
        settings = gateway_settings(tmp_path, devstack.url, **{**engine_overrides, **overrides})
        server = await InProcessServer(create_app(settings, downstream=downstream)).start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def gateway(make_app_gateway: AppGatewayFactory) -> InProcessServer:
    """A gateway with a fresh database under ``tmp_path``, in the test's event loop."""
    return await make_app_gateway()


@pytest.fixture
async def client(gateway: InProcessServer) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client(timeout=30) as c:
        yield c
