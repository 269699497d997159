"""Helpers shared by the sessions end-to-end tests (imported as a plain module next to them)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx

from service.settings import Settings
from support.dbquery import DUMP, query
from support.inprocess import InProcessServer
from support.servers import ServerThread, auth

T = TypeVar("T")
Snapshot = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def settings_of(server: ServerThread | InProcessServer) -> Settings:
    """The settings of a gateway started by ``make_gateway`` or ``make_app_gateway``."""
    settings: Settings = server.app.state.settings
    return settings


def db_path(server: ServerThread | InProcessServer) -> str:
    """Where the gateway keeps its data: its SQLite file, or its PostgreSQL URL (``sql`` takes either)."""
    settings = settings_of(server)
    return settings.database_url.get_secret_value() or str(settings.database_path)


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the status and the error body shape ``{"error": {"code", "message", "details"}, "detail"}``
    (``detail`` is the message again, for clients of the FastAPI gateway this replaces)."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert body["detail"] == error["message"], body
    if code is not None:
        assert error["code"] == code, error
    return error


async def create(client: httpx.AsyncClient, role: str = "teacher", **body: Any) -> dict[str, Any]:
    body.setdefault("name", "Session")
    r = await client.post("/sessions", json=body, headers=auth(role))
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def end(client: httpx.AsyncClient, sid: str, role: str = "teacher", **body: Any) -> dict[str, Any]:
    body.setdefault("end_state", 0)
    r = await client.post(f"/sessions/{sid}/end", json=body, headers=auth(role))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def pages(
    client: httpx.AsyncClient, path: str, role: str = "admin", limit: int = 500, **params: Any
) -> AsyncIterator[list[dict[str, Any]]]:
    """The items of each page of a keyset-paginated listing, to the end; every page is asserted to be a 200.

    ``/sessions`` answers a bare array and is walked the way a client of GitHub's API walks: by requesting the
    ``Link: rel="next"`` URL as given (checked to carry ``X-Next-Cursor`` as its cursor, and both to be absent
    on the last page). ``/sessions/{id}/events`` is a page object, walked by its ``next_cursor``."""
    r = await client.get(path, params={"limit": limit, **params}, headers=auth(role))
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        if isinstance(body, list):
            yield body
            link = r.links.get("next", {}).get("url")
            assert (link is None) == ("x-next-cursor" not in r.headers), r.headers
            if link is None:
                return
            assert parse_qs(urlsplit(link).query)["cursor"] == [r.headers["x-next-cursor"]], link
            r = await client.get(link, headers=auth(role))
        else:
            yield body["events"]
            if not body["next_cursor"]:
                return
            query = {"limit": limit, **params, "cursor": body["next_cursor"]}
            r = await client.get(path, params=query, headers=auth(role))


async def all_events(client: httpx.AsyncClient, sid: str, role: str = "admin") -> list[dict[str, Any]]:
    """Every event of the session, oldest first."""
    return [e async for page in pages(client, f"/sessions/{sid}/events", role) for e in page]


async def walk_sessions(
    client: httpx.AsyncClient, role: str = "admin", limit: int = 500, **filters: Any
) -> list[dict[str, Any]]:
    """Every session the role sees, by following the ``Link: rel="next"`` header to the end."""
    return [s async for page in pages(client, "/sessions", role, limit, **filters) for s in page]


async def snapshot(path: str) -> Snapshot:
    """All rows of both tables, read by a connection of its own (the SQLite file or the PostgreSQL database)."""
    return await sql(path, DUMP["sessions"]), await sql(path, DUMP["session_events"])


async def sql(path: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the gateway's database from a connection of its own: the SQLite file (off the event
    loop), or the PostgreSQL database of a ``postgresql://`` URL (``?`` placeholders become ``$1``, ``$2``...).
    Portable SQL only (no PRAGMA, no JSON functions): tests that need SQLite's own are ``sqlite_only``."""
    return await query(path, statement, *params)


async def bounded_gather(limit: int, thunks: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the awaitables with at most ``limit`` in flight; results in order."""
    slots = asyncio.Semaphore(limit)

    async def one(thunk: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await thunk()

    return list(await asyncio.gather(*(one(t) for t in thunks)))


async def start_gateway(make_gateway: Callable[..., ServerThread], **overrides: Any) -> ServerThread:
    """``make_gateway`` from inside an async test: server start-up waits, so it runs off the loop."""
    return await asyncio.to_thread(make_gateway, **overrides)


