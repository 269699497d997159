"""The in-process server the functional tests use: lifespan and state handled as uvicorn handles them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from support.inprocess import InProcessServer


def make_app(events: list[str], *, fail: bool = False) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        task = asyncio.current_task()
        events.append("startup")
        if fail:
            raise RuntimeError("no database")
        yield {"counter": [0], "name": "shared"}
        assert asyncio.current_task() is task  # entered and exited in one task
        events.append("shutdown")

    async def hit(request: Request) -> JSONResponse:
        request.state.counter[0] += 1
        before = getattr(request.state, "mine", None)
        request.state.mine = "set by this request"
        return JSONResponse({"count": request.state.counter[0], "before": before, "name": request.state.name})

    return Starlette(routes=[Route("/hit", hit)], lifespan=lifespan)


async def test_lifespan_runs_and_each_request_gets_a_shallow_copy_of_its_state() -> None:
    events: list[str] = []
    server = await InProcessServer(make_app(events)).start()
    assert events == ["startup"]
    async with server.client() as c:
        first, second = (await c.get("/hit")).json(), (await c.get("/hit")).json()
    # the objects the lifespan made are shared; what a request sets on its state is its own
    assert first == {"count": 1, "before": None, "name": "shared"}
    assert second == {"count": 2, "before": None, "name": "shared"}
    await server.stop()
    assert events == ["startup", "shutdown"]


async def test_a_failing_startup_is_raised() -> None:
    events: list[str] = []
    with pytest.raises(RuntimeError, match="no database"):
        await InProcessServer(make_app(events, fail=True)).start()
    assert events == ["startup"]
