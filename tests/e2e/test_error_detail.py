"""Every error status the gateway produces carries a top-level ``detail`` equal to ``error.message``.

Clients written for the FastAPI gateway this replaces (the EBARS web frontend) read ``detail``; the envelope is
built in one place (``service.errors.error_body``), and this walks one real request per status through it.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sessions_kit import create, end

from support.inprocess import AppGatewayFactory
from support.ports import closed_port_url
from support.servers import ServerThread, auth

pytestmark = pytest.mark.engines


def assert_detail(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["detail"] == body["error"]["message"], body


async def test_every_error_status_carries_detail(
    make_app_gateway: AppGatewayFactory, devstack: ServerThread, reset_devstack: None
) -> None:
    gw = await make_app_gateway(max_body_bytes=2048, max_in_flight=1, http_retries=0)
    async with gw.client(timeout=30) as c:
        sid = (await create(c))["session_id"]
        teacher = auth("teacher")
        json_body = {**teacher, "Content-Type": "application/json"}
        assert_detail(await c.post("/sessions", content=b"{not json", headers=json_body), 400)
        assert_detail(await c.get("/sessions"), 401)
        assert_detail(await c.post("/sessions", json={"name": "x"}, headers=auth("student")), 403)
        assert_detail(await c.get("/sessions/nope", headers=teacher), 404)
        assert_detail(await c.get("/no/such/route", headers=teacher), 404)
        assert_detail(await c.put("/sessions/stats", headers=teacher), 405)
        await end(c, sid)
        assert_detail(await c.post(f"/sessions/{sid}/end", json={"end_state": 1}, headers=teacher), 409)
        assert_detail(await c.post("/sessions", json={"name": "x" * 4000}, headers=teacher), 413)
        text = {**teacher, "Content-Type": "text/plain"}
        assert_detail(await c.post("/sessions", content=b"name", headers=text), 415)
        assert_detail(await c.post("/sessions", json={"name": 5}, headers=teacher), 422)

        active = (await create(c))["session_id"]
        query = {"session_id": active, "query": "what?"}
        async with httpx.AsyncClient(base_url=devstack.url) as ds:
            await ds.post("/_control", json={"fault": "status_500", "fault_paths": ["/query"]})
            assert_detail(await c.post("/rag/query", json=query, headers=teacher), 502)
            # overload: one request in flight (a slow downstream) is the limit, the next is shed with 503
            await ds.post("/_control", json={"fault": "none", "latency_ms": 1500, "fault_paths": ["/query"]})
            slow = asyncio.create_task(c.post("/rag/query", json=query, headers=teacher))
            await asyncio.sleep(0.3)
            shed = await c.get("/sessions", headers=teacher)
            assert_detail(shed, 503)
            assert shed.json()["error"]["code"] == "overloaded"
            assert (await slow).status_code == 200

    down = await make_app_gateway(auth_service_url=closed_port_url(), http_retries=0)
    async with down.client() as c:
        assert_detail(await c.get("/sessions", headers=auth("teacher")), 503)  # the auth service is unreachable
