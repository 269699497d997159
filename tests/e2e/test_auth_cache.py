"""The token cache: concurrent first requests share one auth-service call; later ones make none."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sessions_kit import error_of

from support.servers import ServerThread


async def users_me_calls(ds: httpx.AsyncClient) -> int:
    snap = (await ds.get("/_control")).json()
    counts = snap["counts"]
    assert isinstance(counts, dict) and isinstance(snap["total"], int)
    return int(counts.get("/users/me", 0))


async def test_concurrent_first_requests_make_one_auth_call(client: httpx.AsyncClient, devstack: ServerThread) -> None:
    token = f"dev:teacher:cache{uuid.uuid4().hex[:16]}"
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=devstack.url) as ds:
        before = await users_me_calls(ds)
        results = await asyncio.gather(*(client.get("/sessions", headers=headers) for _ in range(40)))
        assert [r.status_code for r in results] == [200] * 40
        assert await users_me_calls(ds) == before + 1

        # cached: more requests, sequential and concurrent, make no further call
        r = await client.post("/sessions", json={"name": "mine"}, headers=headers)
        assert r.status_code == 201 and r.json()["user_id"] == token.rsplit(":", 1)[1]
        await asyncio.gather(*(client.get("/sessions", headers=headers) for _ in range(10)))
        assert await users_me_calls(ds) == before + 1

        # another token is another lookup; a bad token is looked up and refused
        other = {"Authorization": f"Bearer dev:student:cache{uuid.uuid4().hex[:16]}"}
        results = await asyncio.gather(*(client.get("/sessions", headers=other) for _ in range(10)))
        assert [r.status_code for r in results] == [200] * 10
        assert await users_me_calls(ds) == before + 2
        bad = {"Authorization": f"Bearer nonsense-{uuid.uuid4().hex}"}
        results = await asyncio.gather(*(client.get("/sessions", headers=bad) for _ in range(10)))
        for r in results:
            error_of(r, 401, "unauthorized")
        assert before + 3 <= await users_me_calls(ds) <= before + 3 + 10


async def test_failed_lookup_is_not_cached(client: httpx.AsyncClient, devstack: ServerThread) -> None:
    token = f"dev:teacher:fail{uuid.uuid4().hex[:16]}"
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=devstack.url) as ds:
        try:
            r = await ds.post("/_control", json={"fault": "status_503", "fault_paths": ["/users/me"]})
            assert r.status_code == 200
            error_of(await client.get("/sessions", headers=headers), 503, "service_unavailable")
        finally:
            await ds.post("/_control/reset")
        # the auth service is back: the same token now works (the failure was not remembered)
        assert (await client.get("/sessions", headers=headers)).status_code == 200
