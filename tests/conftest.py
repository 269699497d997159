"""Shared fixtures: a real reference downstream on 127.0.0.1, and gateways either in-process or on real sockets.

``gateway``/``client`` (and ``make_app_gateway``) run the gateway app in the test's own event loop and reach it
through ``httpx.ASGITransport``: its lifespan, database and shared downstream client are real, only the socket
between the test and the gateway is not. ``make_gateway`` starts a real uvicorn server in a thread, for the tests
that need real connections (slow clients, body streaming and timeouts, disconnects, shedding, shutdown).
"""

from __future__ import annotations

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
def make_gateway(tmp_path: Path, devstack: ServerThread) -> Iterator[GatewayFactory]:
    """Real uvicorn gateways (``downstream=`` injects a client; other keywords override settings)."""
    started: list[ServerThread] = []

    def make(**overrides: Any) -> ServerThread:
        downstream = overrides.pop("downstream", None)
        settings = gateway_settings(tmp_path, devstack.url, **overrides)
        server = ServerThread(create_app(settings, downstream=downstream)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def make_app_gateway(tmp_path: Path, devstack: ServerThread) -> AsyncIterator[AppGatewayFactory]:
    """In-process gateways, lifespan started; same keywords as ``make_gateway``. Reach one with ``.client()``."""
    started: list[InProcessServer] = []

    async def make(**overrides: Any) -> InProcessServer:
        downstream = overrides.pop("downstream", None)
        settings = gateway_settings(tmp_path, devstack.url, **overrides)
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
