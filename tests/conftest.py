"""Shared fixtures: a real reference downstream and real gateway servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.app import create_app as create_devstack
from service.app import create_app
from support.servers import ServerThread, gateway_settings


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


GatewayFactory = Callable[..., ServerThread]


@pytest.fixture
def make_gateway(tmp_path: Path, devstack: ServerThread) -> Iterator[GatewayFactory]:
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
def gateway(make_gateway: GatewayFactory) -> ServerThread:
    return make_gateway()


@pytest.fixture
async def client(gateway: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as c:
        yield c
