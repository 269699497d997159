"""Keyset pagination: complete and duplicate-free under concurrent inserts; cursors cannot be forged."""

from __future__ import annotations

import asyncio
import base64
import json
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sessions_kit import bounded_gather, create, db_path, error_of, pages, sql, walk_sessions

from service.sessions.domain import PAGE_SIZE_LIMIT
from support.inprocess import AppGatewayFactory
from support.servers import auth

pytestmark = pytest.mark.engines


async def test_walk_is_complete_while_sessions_are_created(client: httpx.AsyncClient) -> None:
    existing = await bounded_gather(16, [partial(create, client, name=f"s{i}") for i in range(60)])
    expected = {s["session_id"] for s in existing}
    stop = asyncio.Event()
    created_during: list[str] = []

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            created_during.append((await create(client, name=f"new{i}"))["session_id"])
            i += 1
            await asyncio.sleep(0)

    async def walk(role: str, limit: int, **filters: Any) -> list[str]:
        seen: list[str] = []
        async for page in pages(client, "/sessions", role, limit, **filters):
            assert len(page) <= limit
            seen.extend(s["session_id"] for s in page)
            starts = [s["start_time_ms"] for s in page]
            assert starts == sorted(starts, reverse=True)
            await asyncio.sleep(0.005)  # let the writer interleave between pages
        return seen

    writers = [asyncio.create_task(writer()) for _ in range(2)]
    try:
        walks = await asyncio.gather(walk("admin", 7), walk("teacher", 4), walk("admin", 5, status="ACTIVE"))
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert created_during, "the writers did not overlap the walk"
    for seen in walks:
        assert len(seen) == len(set(seen)), "a session was returned twice"
        assert expected <= set(seen), "a session that existed before the walk was skipped"
        assert set(seen) <= expected | set(created_during)
    # after the writers stop, a walk sees everything exactly once
    final = [s["session_id"] for s in await walk_sessions(client, "admin", limit=9)]
    assert sorted(final) == sorted(expected | set(created_during))


async def test_next_page_is_a_link_header_keeping_every_filter(client: httpx.AsyncClient) -> None:
    math = [(await create(client, name=f"m{i}", category="math"))["session_id"] for i in range(5)]
    await create(client, name="other", category="art")
    filters = {"category": "math", "status": "ACTIVE", "started_after": "0", "limit": "2"}
    r = await client.get("/api/sessions", params=filters, headers=auth("teacher"))
    assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) == 2
    assert r.headers["link"].startswith("<http") and r.headers["link"].endswith('>; rel="next"')
    seen = [s["session_id"] for s in r.json()]
    cursors = []
    while "link" in r.headers:
        url = urlsplit(r.links["next"]["url"])
        # the full URL of this request: same origin and path (the /api twin kept), filters kept, cursor replaced
        assert f"{url.scheme}://{url.netloc}" == str(client.base_url).rstrip("/") and url.path == "/api/sessions"
        assert parse_qs(url.query) == {k: [v] for k, v in filters.items()} | {"cursor": [r.headers["x-next-cursor"]]}
        cursors.append(r.headers["x-next-cursor"])
        r = await client.get(r.links["next"]["url"], headers=auth("teacher"))
        assert r.status_code == 200, r.text
        seen.extend(s["session_id"] for s in r.json())
    assert "x-next-cursor" not in r.headers and len(r.json()) == 1  # the last page names no next one
    assert seen == math[::-1] and len(set(cursors)) == 2

    op = (await client.get("/openapi.json")).json()["paths"]["/sessions"]["get"]["responses"]["200"]
    assert op["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SessionList"}
    assert set(op["headers"]) == {"Link", "X-Next-Cursor"}
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert schemas["SessionList"]["type"] == "array"
    assert schemas["SessionList"]["items"] == {"$ref": "#/components/schemas/SessionOut"}


async def test_cursor_tampering_is_refused(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, name=f"s{i}")
    r = await client.get("/sessions", params={"limit": 1}, headers=auth("admin"))
    cursor = r.headers["x-next-cursor"]
    assert cursor
    payload, _, sig = cursor.partition(".")
    position = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged_payload = base64.urlsafe_b64encode(json.dumps([position[0] + 1, position[1]]).encode()).decode().rstrip("=")
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    forged = [
        f"{forged_payload}.{sig}",  # moved position, old signature
        f"{payload}.{flipped}",  # altered signature
        payload,  # no signature
        f"{payload}.",
        "garbage",
        ".",
        f"{payload}.{sig}x",
        f"{payload}.é{sig[1:]}",  # non-ASCII signature
        f"é{payload}.{sig}",
        f"{payload}.{sig}".upper(),
    ]
    for bad in forged:
        r = await client.get("/sessions", params={"cursor": bad}, headers=auth("admin"))
        error_of(r, 400, "bad_request")
    error_of(await client.get("/sessions", params={"cursor": "x" * 600}, headers=auth("admin")), 422)

    # a cursor from one listing does not fit the other
    sid = (await create(client))["session_id"]
    for _ in range(3):
        await client.post(f"/sessions/{sid}/events", json={"event_type": "E"}, headers=auth("teacher"))
    r = await client.get(f"/sessions/{sid}/events", params={"limit": 1}, headers=auth("teacher"))
    event_cursor = r.json()["next_cursor"]
    assert event_cursor
    error_of(await client.get("/sessions", params={"cursor": event_cursor}, headers=auth("admin")), 400)
    r = await client.get(f"/sessions/{sid}/events", params={"cursor": cursor}, headers=auth("teacher"))
    error_of(r, 400)
    r = await client.get(f"/sessions/{sid}/events", params={"cursor": f"{payload}.é"}, headers=auth("teacher"))
    error_of(r, 400)

    # the genuine cursor still works
    r = await client.get("/sessions", params={"cursor": cursor, "limit": 1}, headers=auth("admin"))
    assert r.status_code == 200


async def test_cursor_from_another_gateway_is_refused(
    make_app_gateway: AppGatewayFactory, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    # each gateway signs with its own secret: a cursor is not portable to a differently keyed deployment
    for i in range(2):
        await create(client, name=f"s{i}")
    cursor = (await client.get("/sessions", params={"limit": 1}, headers=auth("admin"))).headers["x-next-cursor"]
    other = await make_app_gateway(database_path=str(tmp_path / "other.db"))
    async with other.client() as c:
        await create(c)
        error_of(await c.get("/sessions", params={"cursor": cursor}, headers=auth("admin")), 400)


async def test_limit_bounds(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, name=f"s{i}")
    for limit in (0, -1, PAGE_SIZE_LIMIT + 1, 10**30, "ten", 1.5):
        error_of(await client.get("/sessions", params={"limit": limit}, headers=auth("admin")), 422, "validation_error")
    r = await client.get("/sessions", params={"limit": 500}, headers=auth("admin"))
    assert r.status_code == 200 and len(r.json()) == 3 and "link" not in r.headers and "x-next-cursor" not in r.headers
    for limit in (501, PAGE_SIZE_LIMIT):  # beyond MAX_PAGE_SIZE (500 by default): clamped, not refused
        r = await client.get("/sessions", params={"limit": limit}, headers=auth("admin"))
        assert r.status_code == 200 and len(r.json()) == 3 and "link" not in r.headers
    r = await client.get("/sessions", params={"limit": 3}, headers=auth("admin"))
    assert "link" not in r.headers and "x-next-cursor" not in r.headers  # exactly a page: no empty page after it
    r = await client.get("/sessions", params={"limit": 2}, headers=auth("admin"))
    assert len(r.json()) == 2 and r.headers["x-next-cursor"]


SEED_SESSION = "(?, 'u-seed', ?, 0, 0, 'ACTIVE', '{\"name\": \"seeded\"}', ?, ?)"
SEED_EVENT = "(?, 'E', ?)"


async def seed(location: str, sessions: int, events: int) -> None:
    """``sessions`` ACTIVE sessions, the newest with ``events`` events, in the gateway's database (one multi-row
    INSERT per table, portable and far faster than POSTs; the statements are made of constants only)."""
    await sql(
        location,
        "INSERT INTO sessions (session_id, user_id, start_time, start_state, current_state, status, metadata,"  # noqa: S608
        f" created_at, updated_at) VALUES {', '.join([SEED_SESSION] * sessions)}",
        *(v for i in range(sessions) for v in (f"s{i:05d}", 1_000 + i, 1_000 + i, 1_000 + i)),
    )
    newest = f"s{sessions - 1:05d}"
    await sql(
        location,
        f"INSERT INTO session_events (session_id, event_type, timestamp) VALUES {', '.join([SEED_EVENT] * events)}",  # noqa: S608
        *(v for i in range(events) for v in (newest, 2_000 + i)),
    )


async def test_max_page_size_above_500_is_honoured(make_app_gateway: AppGatewayFactory, tmp_path: Path) -> None:
    gw = await make_app_gateway(max_page_size=1000)
    await seed(db_path(gw), 900, 900)
    async with gw.client() as c:
        r = await c.get("/sessions", params={"limit": 800}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        assert len(r.json()) == 800 and r.headers["x-next-cursor"]
        rest = await c.get(r.links["next"]["url"], headers=auth("admin"))
        assert len(rest.json()) == 100 and "link" not in rest.headers
        r = await c.get("/sessions", params={"limit": 5000}, headers=auth("admin"))  # clamped to MAX_PAGE_SIZE
        assert len(r.json()) == 900 and "link" not in r.headers

        events = "/sessions/s00899/events"
        r = await c.get(events, params={"limit": 800}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        assert (len(r.json()["events"]), r.json()["limit"]) == (800, 800) and r.json()["next_cursor"]
        r = await c.get(events, params={"limit": 5000}, headers=auth("admin"))
        assert (len(r.json()["events"]), r.json()["limit"]) == (900, 1000)

        # the OpenAPI document states the bound the model really enforces, and says pages are clamped
        doc = (await c.get("/openapi.json")).json()
        for path in ("/sessions", "/sessions/{session_id}/events"):
            [limit] = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
            assert limit["schema"]["maximum"] == PAGE_SIZE_LIMIT, limit
            assert "MAX_PAGE_SIZE" in limit["schema"].get("description", "") + limit.get("description", "")

    small = await make_app_gateway(max_page_size=100, database_path=str(tmp_path / "gateway.db"))
    async with small.client() as c:
        r = await c.get("/sessions", params={"limit": 800}, headers=auth("admin"))
        assert len(r.json()) == 100 and r.headers["x-next-cursor"]
