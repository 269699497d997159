from __future__ import annotations

import httpx

from support.servers import auth


async def test_create_get_end(client: httpx.AsyncClient) -> None:
    r = await client.post("/sessions", json={"name": "Algebra", "start_state": 1}, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    r = await client.get(f"/sessions/{sid}", headers=auth("teacher"))
    assert r.status_code == 200
    assert r.json()["name"] == "Algebra"
