"""Bounds and input validation: every rejected request leaves the database exactly as it was."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sessions_kit import create, db_path, error_of, settings_of, snapshot, start_gateway

from service.sessions.models import RESERVED_METADATA_KEYS
from support.inprocess import AppGatewayFactory, InProcessServer
from support.servers import ServerThread, auth

pytestmark = pytest.mark.engines

NESTED_17: dict[str, Any] = {"a": {}}
for _ in range(15):
    NESTED_17 = {"a": NESTED_17}


JSON_CT = {"content-type": "application/json"}


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


async def test_rejections_leave_database_unchanged(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    settings = settings_of(gateway)
    sid = (await create(client, metadata={"k": 1}))["session_id"]
    path = db_path(gateway)
    before = await snapshot(path)
    teacher = auth("teacher")
    big_meta = {"blob": "x" * (settings.max_metadata_bytes + 1)}
    big_event = {"blob": "x" * (settings.max_event_data_bytes + 1)}
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        # (method, path, request kwargs, status, error code)
        ("POST", "/sessions", {"json": {"name": "x", "metadata": big_meta}}, 413, "payload_too_large"),
        ("PATCH", f"/sessions/{sid}", {"json": {"metadata": big_meta}}, 413, "payload_too_large"),
        ("POST", f"/sessions/{sid}/events", {"json": {"event_type": "BIG", "event_data": big_event}}, 413, ""),
        ("POST", "/sessions", {"json": {"name": "x", "metadata": NESTED_17}}, 422, "validation_error"),
        ("PATCH", f"/sessions/{sid}", {"json": {"metadata": NESTED_17}}, 422, "validation_error"),
        ("POST", f"/sessions/{sid}/events", {"json": {"event_type": "DEEP", "event_data": NESTED_17}}, 422, ""),
        (
            "POST",
            "/sessions",
            {"content": '{"name":"x","metadata":' + nested(300) + "}", "headers": JSON_CT},
            422,
            "validation_error",
        ),
        ("POST", "/sessions", {"json": {"name": "x", "colour": "red"}}, 422, "validation_error"),
        ("PATCH", f"/sessions/{sid}", {"json": {"name": "y", "owner": "me"}}, 422, "validation_error"),
        ("POST", f"/sessions/{sid}/events", {"json": {"event_type": "E", "extra": 1}}, 422, "validation_error"),
        ("POST", f"/sessions/{sid}/end", {"json": {"end_state": 1, "reason": "x"}}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"name": "x", "rag_settings": {"top_k": 5, "k": 1}}}, 422, ""),
        ("POST", "/sessions", {"content": "name=x", "headers": {"content-type": "text/plain"}}, 415, ""),
        (
            "POST",
            "/sessions",
            {"content": "name=x", "headers": {"content-type": "application/x-www-form-urlencoded"}},
            415,
            "unsupported_media_type",
        ),
        ("PATCH", f"/sessions/{sid}", {"content": b"<xml/>", "headers": {"content-type": "application/xml"}}, 415, ""),
        ("POST", "/sessions", {"content": '{"name": "x",', "headers": JSON_CT}, 400, ""),
        ("POST", "/sessions", {"content": b"\xff\xfe{}", "headers": JSON_CT}, 400, ""),
        (
            "PATCH",
            f"/sessions/{sid}",
            {"content": "{'name': 'x'}", "headers": JSON_CT},
            400,
            "",
        ),
        (
            "POST",
            f"/sessions/{sid}/events",
            {"content": "nope", "headers": JSON_CT},
            400,
            "",
        ),
        ("POST", "/sessions", {"json": ["not", "an", "object"]}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"name": "x", "metadata": ["list"]}}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"name": "x", "metadata": "text"}}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"name": "x", "start_state": 9}}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"name": "x", "start_state": -1}}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"name": ""}}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"name": "x" * 201}}, 422, "validation_error"),
        ("POST", "/sessions", {"json": {"category": "no name"}}, 422, "validation_error"),
        ("POST", f"/sessions/{sid}/end", {"json": {"end_state": 9}}, 422, "validation_error"),
        ("POST", f"/sessions/{sid}/end", {"json": {"status": "ACTIVE", "end_state": 1}}, 422, ""),
        ("POST", f"/sessions/{sid}/events", {"json": {"state": 42}}, 422, "validation_error"),
    ]
    for key in sorted(RESERVED_METADATA_KEYS):
        cases.append(("POST", "/sessions", {"json": {"name": "x", "metadata": {key: 1}}}, 422, "validation_error"))
        cases.append(("PATCH", f"/sessions/{sid}", {"json": {"metadata": {key: 1}}}, 422, "validation_error"))
    # numbers JSON cannot carry: accepted by the parser, refused before they reach SQLite
    for body in ('{"name":"x","metadata":{"v":NaN}}', '{"name":"x","metadata":{"v":1e999}}'):
        cases.append(("POST", "/sessions", {"content": body, "headers": JSON_CT}, 422, ""))
    cases.append(
        (
            "PATCH",
            f"/sessions/{sid}",
            {"content": '{"metadata":{"v":Infinity}}', "headers": JSON_CT},
            422,
            "",
        )
    )
    cases.append(
        (
            "POST",
            f"/sessions/{sid}/events",
            {
                "content": '{"event_type":"N","event_data":{"v":-Infinity}}',
                "headers": JSON_CT,
            },
            422,
            "",
        )
    )
    for method, url, kwargs, status, code in cases:
        headers = {**teacher, **kwargs.pop("headers", {})}
        r = await client.request(method, url, headers=headers, **kwargs)
        error_of(r, status, code or None)
        assert await snapshot(path) == before, f"{method} {url} -> {status} changed the database"


async def test_error_details_name_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/sessions", json={"name": "x", "start_state": 12}, headers=auth("teacher"))
    details = error_of(r, 422, "validation_error")["details"]
    assert any(d["loc"][-1] == "start_state" for d in details)
    assert all("input" not in d for d in details)  # the offending value is not echoed back
    r = await client.post("/sessions", content="{", headers={**auth("teacher"), "content-type": "application/json"})
    assert error_of(r, 400, "bad_request")["message"]


async def test_body_over_max_body_bytes(make_gateway: Any) -> None:
    gw = await start_gateway(make_gateway, max_body_bytes=2048)
    path = db_path(gw)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        sid = (await create(c))["session_id"]
        before = await snapshot(path)
        payload = json.dumps({"name": "x", "metadata": {"blob": "y" * 3000}}).encode()
        # declared length over the bound: refused before the body is read
        r = await c.post("/sessions", content=payload, headers={**auth("teacher"), "content-type": "application/json"})
        error_of(r, 413, "payload_too_large")
        assert r.headers.get("x-request-id")

        # no declared length (chunked): refused while reading
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(payload), 500):
                yield payload[i : i + 500]

        r = await c.post("/sessions", content=chunks(), headers={**auth("teacher"), "content-type": "application/json"})
        error_of(r, 413, "payload_too_large")
        r = await c.post(
            f"/sessions/{sid}/events",
            json={"event_type": "BIG", "event_data": {"blob": "z" * 3000}},
            headers=auth("teacher"),
        )
        error_of(r, 413, "payload_too_large")
        r = await c.patch(f"/sessions/{sid}", json={"metadata": {"blob": "z" * 3000}}, headers=auth("teacher"))
        error_of(r, 413)
        assert await snapshot(path) == before
        # just under the bound is fine
        r = await c.post("/sessions", json={"name": "x", "metadata": {"blob": "y" * 1500}}, headers=auth("teacher"))
        assert r.status_code == 201, r.text


async def test_metadata_bound_applies_to_the_merged_object(make_app_gateway: AppGatewayFactory) -> None:
    gw = await make_app_gateway(max_metadata_bytes=1024)
    path = db_path(gw)
    async with gw.client(timeout=30) as c:
        sid = (await create(c, metadata={"a": "x" * 400}))["session_id"]
        r = await c.patch(f"/sessions/{sid}", json={"metadata": {"b": "y" * 400}}, headers=auth("teacher"))
        assert r.status_code == 200, r.text
        before = await snapshot(path)
        # each patch is small; the merged object would not be
        r = await c.patch(f"/sessions/{sid}", json={"metadata": {"c": "z" * 400}}, headers=auth("teacher"))
        error_of(r, 413, "payload_too_large")
        assert await snapshot(path) == before
        r = await c.get(f"/sessions/{sid}", headers=auth("teacher"))
        assert set(r.json()["metadata"]) == {"a", "b"}


async def test_in_flight_bound_sheds_with_503(make_gateway: Any, devstack: ServerThread) -> None:
    gw = await start_gateway(make_gateway, max_in_flight=1)
    slow = {"Authorization": f"Bearer dev:teacher:slow{uuid.uuid4().hex[:12]}"}
    async with httpx.AsyncClient(base_url=devstack.url) as ds, httpx.AsyncClient(base_url=gw.url, timeout=30) as c:
        try:
            await ds.post("/_control", json={"latency_ms": 400, "fault_paths": ["/users/me"]})
            first = asyncio.create_task(c.get("/sessions", headers=slow))
            # wait until the first request is parked inside its auth lookup
            for _ in range(200):
                if (await ds.get("/_control")).json()["inflight"] >= 1:
                    break
                await asyncio.sleep(0.005)
            r = await c.get("/sessions", headers=auth("teacher"))
            error_of(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1" and r.headers["x-request-id"]
            assert (await c.get("/health")).status_code == 200  # probes are never shed
            assert (await first).status_code == 200
        finally:
            await ds.post("/_control/reset")
        # capacity is back once the first request is done
        assert (await c.get("/sessions", headers=auth("teacher"))).status_code == 200
