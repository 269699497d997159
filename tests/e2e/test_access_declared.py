"""Access declared on each endpoint: checked before the request is parsed, shown in the OpenAPI document.

Authorization comes first as the caller sees it: a role the endpoint does not admit gets 403 whatever it sent,
and on a session route an invalid request to a session the caller may not see (or change) gets the 404 the
operation would give, never the 400/413/422 that would tell the caller their request reached that session.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sessions_kit import create, end, error_of, start_gateway

from service.api.endpoint import PUBLIC, STAFF, Call, Endpoint, routes_for
from service.app import all_endpoints, create_app
from service.auth import Principal
from support.servers import GatewayFactory, ServerThread, auth, gateway_settings

pytestmark = pytest.mark.engines

ROLES = ("admin", "teacher", "student")
MISSING = "0" * 32


def twin(path: str) -> str:
    return path.removeprefix("/api") if path.startswith("/api/") else "/api" + path


def invalid_request(ep: Endpoint) -> dict[str, Any]:
    """httpx keyword arguments of a request the endpoint refuses as invalid once the caller is admitted."""
    if ep.multipart:
        return {"json": {"session_id": MISSING}}  # JSON where multipart is required: 415
    if ep.body is not None:
        return {"json": []}  # not an object: 422
    if ep.query is not None:
        return {"params": [("zz", "1"), ("zz", "2")]}  # a parameter given twice: 422
    return {}


async def devstack_counts(devstack: ServerThread) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=devstack.url) as c:
        counts: dict[str, int] = (await c.get("/_control")).json()["counts"]
        return counts


# -- the role check comes before the body ------------------------------------------------------------------------
async def test_student_cleanup_with_an_invalid_body_is_403(client: httpx.AsyncClient) -> None:
    for role in ("student", "teacher"):
        for body in ({}, {"keep_newest": "x"}, {"keep_newest": -1, "bogus": True}):
            r = await client.post("/admin/cleanup", json=body, headers=auth(role))
            details = error_of(r, 403, "forbidden")["details"]
            assert details == {"role": role, "allowed_roles": ["admin"]}
        r = await client.post("/api/admin/cleanup", content=b"{", headers={**auth(role), "content-type": "text/x"})
        error_of(r, 403, "forbidden")
    # the same bodies are invalid for the role that may call it
    error_of(await client.post("/admin/cleanup", json={}, headers=auth("admin")), 422, "validation_error")
    error_of(await client.post("/admin/cleanup", json={"keep_newest": "x"}, headers=auth("admin")), 422)


async def test_refused_role_is_answered_without_reading_the_body(make_gateway: GatewayFactory) -> None:
    """The body of a refused caller is never awaited: a request whose body never arrives still gets its 403."""
    gateway = await start_gateway(make_gateway)  # a real socket: the body is held back on the wire
    host, port = "127.0.0.1", gateway.port
    for role, path in (("student", "/admin/cleanup"), ("teacher", "/admin/cleanup"), ("student", "/sessions")):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth(role)['Authorization']}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                ).encode()
            )
            await writer.drain()
            started = time.monotonic()
            status_line = await asyncio.wait_for(reader.readline(), timeout=5)
            assert status_line.split()[1] == b"403", status_line
            assert time.monotonic() - started < 5
        finally:
            writer.close()
            await writer.wait_closed()


async def test_declared_roles_match_behaviour(client: httpx.AsyncClient, db_engine: str) -> None:
    """Every operation x role, with an invalid request and an unknown session: the OpenAPI ``x-roles`` decide
    403; an admitted role on a session route gets the operation's 404 (the session is checked first)."""
    document = (await client.get("/openapi.json")).json()
    for ep in all_endpoints():
        for path in (ep.path, twin(ep.path)):
            op = document["paths"][path][ep.method.lower()]
            declared = op.get("x-roles")
            url = path.replace("{session_id}", MISSING).replace("{filename}", "missing.md")
            for role in ROLES:
                r = await client.request(ep.method, url, headers=auth(role), **invalid_request(ep))
                where = f"{ep.method} {path} as {role}: {r.status_code} {r.text[:200]}"
                if declared is None:
                    assert "security" not in op and r.status_code in (200, 503), where
                elif role not in declared:
                    assert r.status_code == 403, where
                    assert r.json()["error"]["details"]["allowed_roles"] == declared, where
                elif any(p in path for p in ("{session_id}", "{filename}", "{job_id}")):  # nobody made that file/job
                    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", where
                elif db_engine == "postgres" and ep.path == "/admin/backup":  # pg_dump's job: declared 501
                    assert r.status_code == 501 and "501" in op["responses"], where
                else:
                    assert r.status_code in (200, 201, 415, 422), where
            if declared is not None:
                assert op["security"] == [{"bearer": []}]
                error_of(await client.request(ep.method, url, **invalid_request(ep)), 401, "unauthorized")


# -- session routes: the session is checked before the request is refused as invalid ------------------------------
async def test_invalid_request_on_a_session_answers_like_the_operation(client: httpx.AsyncClient) -> None:
    mine = (await create(client, "teacher"))["session_id"]
    mine_ended = (await create(client, "teacher"))["session_id"]
    await end(client, mine_ended, "teacher")
    theirs = (await create(client, "teacher2"))["session_id"]
    targets = (mine, mine_ended, theirs, MISSING)
    expected = {  # per target, for an invalid request
        ("admin", "see"): (422, 422, 422, 404),
        ("admin", "own"): (422, 422, 422, 404),
        ("teacher", "see"): (422, 422, 404, 404),
        ("teacher", "own"): (422, 422, 404, 404),
        ("student", "see"): (422, 404, 422, 404),  # a student sees ACTIVE sessions only
        ("student", "own"): (403, 403, 403, 403),  # not a student's route at all
    }
    checked = 0
    for ep in all_endpoints():
        if not ep.session_in_path or (ep.body is None and ep.query is None):
            continue
        assert ep.access.session is not None, ep.path
        for role in ROLES:
            got = []
            for sid in targets:
                r = await client.request(
                    ep.method, ep.path.replace("{session_id}", sid), headers=auth(role), **invalid_request(ep)
                )
                got.append(r.status_code)
            assert tuple(got) == expected[role, ep.access.session], f"{ep.method} {ep.path} as {role}: {got}"
            checked += 1
    assert checked >= 3 * 8


async def test_handler_level_refusals_come_after_the_session_check(make_gateway: GatewayFactory) -> None:
    """Refusals decided after parsing (an empty patch, a bad cursor, an oversized event) also answer 404 for a
    session that is not the caller's, and their own status for the caller's session."""
    gw = await start_gateway(make_gateway, max_event_data_bytes=64)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        mine = (await create(client, "teacher"))["session_id"]
        theirs = (await create(client, "teacher2"))["session_id"]
        cases: list[tuple[str, str, dict[str, Any], int]] = [
            ("PATCH", "", {"json": {}}, 422),
            ("PATCH", "", {"json": {"name": None}}, 422),
            ("PATCH", "/rag-settings", {"json": {}}, 422),
            ("GET", "/events", {"params": {"cursor": "not-a-cursor"}}, 400),
            ("POST", "/events", {"json": {"event_type": "NOTE", "event_data": {"x": "y" * 100}}}, 413),
        ]
        for method, suffix, kwargs, own_status in cases:
            r = await client.request(method, f"/sessions/{theirs}{suffix}", headers=auth("teacher"), **kwargs)
            error_of(r, 404, "not_found")
            r = await client.request(method, f"/sessions/{MISSING}{suffix}", headers=auth("teacher"), **kwargs)
            error_of(r, 404, "not_found")
            r = await client.request(method, f"/sessions/{mine}{suffix}", headers=auth("teacher"), **kwargs)
            assert r.status_code == own_status, (method, suffix, r.text)


async def test_session_named_in_the_body_is_checked_after_the_body(client: httpx.AsyncClient) -> None:
    """``POST /rag/query`` and uploads name their session in the body: only the role is checked before it."""
    theirs = (await create(client, "teacher2"))["session_id"]
    r = await client.post("/rag/query", json={"session_id": theirs}, headers=auth("teacher"))
    error_of(r, 422, "validation_error")
    r = await client.post("/rag/query", json={"session_id": theirs, "query": "x"}, headers=auth("teacher"))
    error_of(r, 404, "not_found")
    r = await client.post(
        "/api/documents/process-and-store", data={"session_id": theirs}, headers=auth("student"), files={}
    )
    error_of(r, 403, "forbidden")


# -- public routes: no token is read, there is no principal --------------------------------------------------------
async def test_public_routes_never_ask_the_auth_service(client: httpx.AsyncClient, devstack: ServerThread) -> None:
    fresh = {"Authorization": f"Bearer dev:teacher:public{uuid.uuid4().hex[:16]}"}  # not in any cache yet
    public = [ep for ep in all_endpoints() if ep.access == PUBLIC]
    assert {ep.path for ep in public} == {"/health", "/health/ready", "/health/services", "/metrics"}
    before = (await devstack_counts(devstack)).get("/users/me", 0)
    for ep in public:
        for path in (ep.path, twin(ep.path)):
            for headers in (fresh, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
                r = await client.request(ep.method, path, headers=headers)
                assert r.status_code == 200, (path, r.text)
    assert (await devstack_counts(devstack)).get("/users/me", 0) == before
    # the same token on an authenticated route is looked up (so the counter above would have seen it)
    assert (await client.get("/profile", headers=fresh)).status_code == 200
    assert (await devstack_counts(devstack)).get("/users/me", 0) == before + 1


@pytest.fixture
def probe_gateway(
    tmp_path: Path, devstack: ServerThread, engine_overrides: dict[str, Any]
) -> Iterator[tuple[ServerThread, list[Principal | None]]]:
    """The real gateway with two extra endpoints that record the principal their handler receives."""
    seen: list[Principal | None] = []

    async def probe(call: Call[Any, Any]) -> dict[str, Any]:
        seen.append(call.caller)
        return {"ok": True}

    app = create_app(gateway_settings(tmp_path, devstack.url, **engine_overrides))
    app.router.routes.extend(
        routes_for(
            [
                Endpoint("GET", "/probe/public", probe, "probe", "test", PUBLIC),
                Endpoint("GET", "/probe/staff", probe, "probe", "test", STAFF),
            ]
        )
    )
    server = ServerThread(app).start()
    yield server, seen
    server.stop()


async def test_public_handler_gets_no_principal(probe_gateway: tuple[ServerThread, list[Principal | None]]) -> None:
    server, seen = probe_gateway
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.get("/probe/public")).status_code == 200
        assert (await client.get("/probe/public", headers=auth("teacher"))).status_code == 200
        assert seen == [None, None]  # not an anonymous "student": nobody
        assert (await client.get("/probe/staff", headers=auth("teacher"))).status_code == 200
        assert seen[-1] is not None and (seen[-1].id, seen[-1].role) == ("u-teacher", "teacher")
        error_of(await client.get("/probe/staff", headers=auth("student")), 403, "forbidden")
        error_of(await client.get("/probe/staff"), 401, "unauthorized")
        assert len(seen) == 3  # the handler never ran for the refused callers


# -- the OpenAPI document shows each operation's access -------------------------------------------------------------
async def test_openapi_shows_the_access_of_every_operation(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    for ep in all_endpoints():
        for path in (ep.path, twin(ep.path)):
            op = document["paths"][path][ep.method.lower()]
            statuses = set(op["responses"])
            roles = ep.access.roles
            if roles is None:
                assert "security" not in op and "x-roles" not in op and "401" not in statuses, path
                assert op["description"].startswith("Public"), path
                continue
            assert op["x-roles"] == sorted(roles) and op["security"] == [{"bearer": []}], path
            who = "any role" if set(roles) == set(ROLES) else ", ".join(sorted(roles))
            assert op["description"].startswith(f"Roles: {who}"), (path, op["description"])
            row_level_403 = (ep.method, ep.path) == ("GET", "/sessions")  # a user_id filter naming someone else
            assert ("403" in statuses) == (set(roles) != set(ROLES) or row_level_403), path
            # 404 from the session rule, or declared by the route itself (a library file is the caller's or absent)
            assert ("404" in statuses) == (ep.access.session is not None or 404 in ep.errors), path
            assert op.get("x-session-access") == ep.access.session, path
            if ep.access.session is not None and not ep.session_in_path:
                assert "named in the body" in op["description"], path
    cleanup = document["paths"]["/admin/cleanup"]["post"]
    assert cleanup["x-roles"] == ["admin"] and "403" in cleanup["responses"]
    patch = document["paths"]["/sessions/{session_id}"]["patch"]
    assert patch["x-roles"] == ["admin", "teacher"] and "the caller must own the session" in patch["description"]
    assert "security" not in document["paths"]["/health"]["get"]
