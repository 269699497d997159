"""Many concurrent writers through the HTTP API against one database: nothing locked, nothing lost."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from functools import partial
from typing import Any

import httpx
import pytest
from sessions_kit import all_events, bounded_gather, create, db_path, sql, walk_sessions

from support.inprocess import AppGatewayFactory
from support.servers import auth

pytestmark = pytest.mark.engines

FLOWS = 200
HOT_WRITERS = 60
IN_FLIGHT = 48


async def test_concurrent_creates_events_and_patches(make_app_gateway: AppGatewayFactory, db_engine: str) -> None:
    # exact counts are the point: PostgreSQL's pool wait gets the client's patience (its 503 is tested elsewhere)
    gateway = await make_app_gateway(db_pool_timeout_s=30.0)
    responses: list[httpx.Response] = []
    async with gateway.client(timeout=60) as client:
        hot = (await create(client, name="hot", start_state=0))["session_id"]
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def req(method: str, url: str, role: str, body: Any) -> httpx.Response:
            async with slots:
                r = await client.request(method, url, json=body, headers=auth(role))
            responses.append(r)
            return r

        async def flow(i: int) -> str:
            role = ("teacher", "teacher2", "admin")[i % 3]
            r = await req("POST", "/sessions", role, {"name": f"flow {i}", "metadata": {"i": i}})
            assert r.status_code == 201, r.text
            sid: str = r.json()["session_id"]
            # events, a state change and two patches of different keys, all at once on this session
            results = await asyncio.gather(
                req("POST", f"/sessions/{sid}/events", role, {"event_type": "A", "event_data": {"i": i}}),
                req("POST", f"/sessions/{sid}/events", role, {"event_type": "B"}),
                req("POST", f"/sessions/{sid}/events", role, {"state": (i % 8) + 1}),
                req("PATCH", f"/sessions/{sid}", role, {"metadata": {"x": i}}),
                req("PATCH", f"/sessions/{sid}", role, {"metadata": {"y": -i}}),
            )
            assert [r.status_code for r in results] == [201, 201, 201, 200, 200], [r.text for r in results]
            return sid

        async def hot_patch(k: int) -> None:
            r = await req("PATCH", f"/sessions/{hot}", "teacher", {"metadata": {f"k{k}": k}})
            assert r.status_code == 200, r.text

        async def hot_event(k: int) -> None:
            r = await req("POST", f"/sessions/{hot}/events", "teacher", {"event_type": "HOT", "event_data": {"k": k}})
            assert r.status_code == 201, r.text

        outcome = await asyncio.gather(
            *(flow(i) for i in range(FLOWS)),
            *(hot_patch(k) for k in range(HOT_WRITERS)),
            *(hot_event(k) for k in range(HOT_WRITERS)),
        )
        sids = [s for s in outcome[:FLOWS] if isinstance(s, str)]

        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 201}, statuses
        assert not [r for r in responses if "locked" in r.text]
        assert len(responses) == FLOWS * 6 + 2 * HOT_WRITERS

        # no lost update: every concurrent patch of the hot session survived
        hot_row = (await client.get(f"/sessions/{hot}", headers=auth("teacher"))).json()
        assert hot_row["metadata"] == {f"k{k}": k for k in range(HOT_WRITERS)}
        hot_events = Counter(e["event_type"] for e in await all_events(client, hot))
        assert hot_events == {"SESSION_STARTED": 1, "METADATA_UPDATED": HOT_WRITERS, "HOT": HOT_WRITERS}

        # counts exact, per session and in total
        assert len(set(sids)) == FLOWS
        full = await bounded_gather(
            IN_FLIGHT,
            [
                partial(client.get, f"/sessions/{sid}", params={"include": "events"}, headers=auth("admin"))
                for sid in sids
            ],
        )
        for i, r in enumerate(full):
            s = r.json()
            assert s["metadata"] == {"i": i, "x": i, "y": -i}
            assert s["current_state"] == (i % 8) + 1
            types = Counter(e["event_type"] for e in s["events"])
            assert types == {"SESSION_STARTED": 1, "A": 1, "B": 1, "STATE_CHANGED": 1, "METADATA_UPDATED": 2}
        listed = await walk_sessions(client, "admin", limit=97)
        assert len(listed) == FLOWS + 1
        stats = (await client.get("/sessions/stats", headers=auth("admin"))).json()
        assert stats["total"] == FLOWS + 1
        assert stats["events_by_type"]["SESSION_STARTED"] == FLOWS + 1
        assert stats["events_by_type"]["METADATA_UPDATED"] == 2 * FLOWS + HOT_WRITERS

    path = db_path(gateway)
    assert await sql(path, "SELECT count(*) FROM sessions") == [(FLOWS + 1,)]
    assert await sql(path, "SELECT count(*) FROM session_events") == [(FLOWS * 6 + 1 + 2 * HOT_WRITERS,)]
    orphans = "SELECT count(*) FROM session_events e LEFT JOIN sessions s USING (session_id) WHERE s.user_id IS NULL"
    assert await sql(path, orphans) == [(0,)]
    if db_engine == "sqlite":  # the file itself, page by page
        assert await sql(path, "PRAGMA integrity_check") == [("ok",)]


async def test_concurrent_end_has_one_winner(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]
    results = await asyncio.gather(
        *(client.post(f"/sessions/{sid}/end", json={"end_state": k % 9}, headers=auth("teacher")) for k in range(20))
    )
    assert sorted(r.status_code for r in results) == [200] + [409] * 19
    events = (await client.get(f"/sessions/{sid}/events", headers=auth("teacher"))).json()["events"]
    assert [e["event_type"] for e in events].count("SESSION_ENDED") == 1


async def test_concurrent_events_and_end(client: httpx.AsyncClient) -> None:
    # events racing the end: each event is either in before the end (201) or refused after it (409)
    sid = (await create(client))["session_id"]
    tag = uuid.uuid4().hex[:8]
    tasks = [
        client.post(
            f"/sessions/{sid}/events", json={"event_type": "RACE", "event_data": {"t": tag}}, headers=auth("teacher")
        )
        for _ in range(30)
    ]
    tasks.insert(15, client.post(f"/sessions/{sid}/end", json={"end_state": 0}, headers=auth("teacher")))
    results = await asyncio.gather(*tasks)
    assert {r.status_code for r in results} <= {200, 201, 409}
    accepted = sum(1 for r in results if r.status_code == 201)
    events = (await client.get(f"/sessions/{sid}/events", params={"limit": 500}, headers=auth("teacher"))).json()
    types = [e["event_type"] for e in events["events"]]
    assert types.count("RACE") == accepted
    assert types[-1] == "SESSION_ENDED"  # nothing was appended after the end
