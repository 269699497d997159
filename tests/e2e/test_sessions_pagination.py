"""Keyset pagination: complete and duplicate-free under concurrent inserts; cursors cannot be forged."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
from sessions_kit import bounded_gather, create, error_of, start_gateway, walk_sessions

from support.servers import auth


async def test_walk_is_complete_while_sessions_are_created(client: httpx.AsyncClient) -> None:
    existing = await bounded_gather(16, [lambda i=i: create(client, name=f"s{i}") for i in range(60)])
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
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit, **filters}
            if cursor:
                params["cursor"] = cursor
            r = await client.get("/sessions", params=params, headers=auth(role))
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["sessions"]) <= limit
            seen.extend(s["session_id"] for s in page["sessions"])
            starts = [s["start_time_ms"] for s in page["sessions"]]
            assert starts == sorted(starts, reverse=True)
            cursor = page["next_cursor"]
            if not cursor:
                return seen
            await asyncio.sleep(0.005)  # let the writer interleave between pages

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


async def test_cursor_tampering_is_refused(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, name=f"s{i}")
    r = await client.get("/sessions", params={"limit": 1}, headers=auth("admin"))
    cursor = r.json()["next_cursor"]
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
    make_gateway: Any, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    # each gateway signs with its own secret: a cursor is not portable to a differently keyed deployment
    for i in range(2):
        await create(client, name=f"s{i}")
    cursor = (await client.get("/sessions", params={"limit": 1}, headers=auth("admin"))).json()["next_cursor"]
    other = await start_gateway(make_gateway, database_path=str(tmp_path / "other.db"))
    async with httpx.AsyncClient(base_url=other.url) as c:
        await create(c)
        error_of(await c.get("/sessions", params={"cursor": cursor}, headers=auth("admin")), 400)


async def test_limit_bounds(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(client, name=f"s{i}")
    for limit in (0, -1, 501, 10**30, "ten", 1.5):
        error_of(await client.get("/sessions", params={"limit": limit}, headers=auth("admin")), 422, "validation_error")
    r = await client.get("/sessions", params={"limit": 500}, headers=auth("admin"))
    assert r.status_code == 200 and len(r.json()["sessions"]) == 3 and r.json()["next_cursor"] is None
    r = await client.get("/sessions", params={"limit": 3}, headers=auth("admin"))
    assert r.json()["next_cursor"] is None  # exactly a page: no empty page after it
    r = await client.get("/sessions", headers=auth("admin"))
    assert r.json()["limit"] == 50
