"""Fixtures of the security suite. All traffic goes to servers on 127.0.0.1 (``devstack`` is the downstream)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from security_kit import Gateway, security_settings

from service.app import create_app
from support.servers import ServerThread


@pytest.fixture(scope="module")
def shared_gateway(
    devstack: ServerThread, tmp_path_factory: pytest.TempPathFactory, module_engine_overrides: dict[str, Any]
) -> Iterator[Gateway]:
    """One gateway for a whole module (the fuzz and matrix tests make hundreds of requests against it).

    Those requests also change the dev users' profiles and passwords in the shared reference downstream
    (``PUT /profile``): it is reset afterwards, so later tests meet the users as documented. In a module marked
    ``engines`` there is one per engine (``module_engine_overrides``)."""
    settings = security_settings(tmp_path_factory.mktemp("security-gw"), devstack.url, **module_engine_overrides)
    server = ServerThread(create_app(settings)).start()
    yield Gateway(server, settings)
    server.stop()
    httpx.post(devstack.url + "/_control/reset", timeout=10).raise_for_status()
