"""SPEC 5 access rules, role by role, on every sessions route."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sessions_kit import create, db_path, end, error_of, snapshot

from support.inprocess import AppGatewayFactory, InProcessServer
from support.ports import closed_port_url
from support.servers import auth

pytestmark = pytest.mark.engines

EVENT = {"event_type": "NOTE"}


def routes(sid: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every route that names one session, with a body valid for it."""
    return [
        ("GET", f"/sessions/{sid}", None),
        ("GET", f"/sessions/{sid}?include=events", None),
        ("GET", f"/sessions/{sid}/events", None),
        ("PATCH", f"/sessions/{sid}", {"name": "hijacked"}),
        ("POST", f"/sessions/{sid}/events", EVENT),
        ("POST", f"/sessions/{sid}/end", {"end_state": 1}),
        ("DELETE", f"/sessions/{sid}", None),
    ]


async def call(client: httpx.AsyncClient, role: str, method: str, url: str, body: Any) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": auth(role)}
    if body is not None:
        kwargs["json"] = body
    return await client.request(method, url, **kwargs)


async def test_admin_can_do_everything(client: httpx.AsyncClient, db_engine: str) -> None:
    sid = (await create(client, "teacher"))["session_id"]
    own = (await create(client, "admin", name="admin's"))["session_id"]
    listed = (await client.get("/sessions", headers=auth("admin"))).json()
    assert {s["session_id"] for s in listed} == {sid, own}
    expected = [200, 200, 200, 200, 201, 200, 200]
    for (method, url, body), status in zip(routes(sid), expected, strict=True):
        r = await call(client, "admin", method, url, body)
        assert r.status_code == status, (method, url, r.text)
    assert (await client.get("/sessions/stats", headers=auth("admin"))).status_code == 200
    r = await client.post("/admin/cleanup", json={"keep_newest": 5}, headers=auth("admin"))
    assert r.status_code == 200
    r = await client.post("/admin/backup", headers=auth("admin"))
    if db_engine == "sqlite":
        assert r.status_code == 201
    else:  # allowed, but a PostgreSQL backup is pg_dump's job (SPEC): a clear 501, not a 403
        assert "pg_dump" in error_of(r, 501, "not_supported")["message"]


async def test_teacher_owns_theirs_and_cannot_see_others(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    mine = (await create(client, "teacher", name="mine"))["session_id"]
    theirs = (await create(client, "teacher2", name="theirs"))["session_id"]
    theirs_ended = (await create(client, "teacher2"))["session_id"]
    await end(client, theirs_ended, "teacher2")
    admins = (await create(client, "admin"))["session_id"]

    listed = {s["session_id"] for s in (await client.get("/sessions", headers=auth("teacher"))).json()}
    assert listed == {mine}
    for listed_status in ("ACTIVE", "COMPLETED"):
        r = await client.get("/sessions", params={"status": listed_status}, headers=auth("teacher"))
        assert {s["session_id"] for s in r.json()} <= {mine}

    path = db_path(gateway)
    before = await snapshot(path)
    for other in (theirs, theirs_ended, admins):
        for method, url, body in routes(other):
            r = await call(client, "teacher", method, url, body)
            error_of(r, 404, "not_found")
            # the same answer as for an id that does not exist at all
            assert r.json()["error"]["message"] == "session not found"
    assert await snapshot(path) == before

    expected = [200, 200, 200, 200, 201, 200, 200]
    for (method, url, body), status in zip(routes(mine), expected, strict=True):
        r = await call(client, "teacher", method, url, body)
        assert r.status_code == status, (method, url, r.text)
    error_of(await client.post("/admin/cleanup", json={"keep_newest": 1}, headers=auth("teacher")), 403, "forbidden")
    error_of(await client.post("/admin/backup", headers=auth("teacher")), 403, "forbidden")


async def test_student_reads_active_sessions_only(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    active = (await create(client, "teacher", name="open"))["session_id"]
    ended = (await create(client, "teacher2", name="closed"))["session_id"]
    await end(client, ended, "teacher2")

    r = await client.get("/sessions", headers=auth("student"))
    assert r.status_code == 200
    assert [s["session_id"] for s in r.json()] == [active]
    r = await client.get("/sessions", params={"status": "COMPLETED"}, headers=auth("student"))
    assert r.json() == []
    r = await client.get("/sessions", params={"ended_after": 0}, headers=auth("student"))
    assert r.json() == []
    error_of(await client.get("/sessions", params={"user_id": "u-teacher"}, headers=auth("student")), 403)
    r = await client.get(f"/sessions/{active}", headers=auth("student"))
    assert r.status_code == 200 and r.json()["name"] == "open"
    r = await client.get(f"/sessions/{active}/events", headers=auth("student"))
    assert r.status_code == 200 and r.json()["events"][0]["event_type"] == "SESSION_STARTED"
    r = await client.get(f"/sessions/{active}", params={"include": "events"}, headers=auth("student"))
    assert r.status_code == 200 and len(r.json()["events"]) == 1

    path = db_path(gateway)
    before = await snapshot(path)
    error_of(await client.post("/sessions", json={"name": "x"}, headers=auth("student")), 403, "forbidden")
    for sid in (active, ended, "f" * 32):  # the writes are not for students, whatever the session: 403
        for method, url, body in routes(sid)[3:]:
            error_of(await call(client, "student", method, url, body), 403, "forbidden")
    for method, url, body in routes(ended)[:3]:  # an ended session is invisible: reads are 404
        error_of(await call(client, "student", method, url, body), 404, "not_found")
    for method, url, body in routes("f" * 32)[:3]:
        error_of(await call(client, "student", method, url, body), 404, "not_found")
    error_of(await client.get("/sessions/stats", headers=auth("student")), 403)
    error_of(await client.post("/admin/cleanup", json={"keep_newest": 0}, headers=auth("student")), 403)
    error_of(await client.post("/admin/backup", headers=auth("student")), 403)
    assert await snapshot(path) == before

    # once the session ends it disappears for the student
    await end(client, active, "teacher")
    error_of(await client.get(f"/sessions/{active}", headers=auth("student")), 404)
    assert (await client.get("/sessions", headers=auth("student"))).json() == []


async def test_missing_and_bad_tokens(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    sid = (await create(client))["session_id"]
    path = db_path(gateway)
    before = await snapshot(path)
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-real-token"},
        {"Authorization": "Bearer dev:teacher:"},
        {"Authorization": "Bearer " + "x" * 5000},
    ]
    requests: list[tuple[str, str, Any]] = [
        ("POST", "/sessions", {"name": "x"}),
        ("GET", "/sessions", None),
        ("GET", "/sessions/stats", None),
        ("POST", "/admin/backup", None),
        ("POST", "/admin/cleanup", {"keep_newest": 0}),
        *routes(sid),
    ]
    for headers in bad_headers:
        for method, url, body in requests:
            kwargs: dict[str, Any] = {"headers": headers}
            if body is not None:
                kwargs["json"] = body
            r = await client.request(method, url, **kwargs)
            error_of(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
    # auth is checked before the body: an invalid body without a token is still 401
    error_of(await client.post("/sessions", content="{", headers={"content-type": "application/json"}), 401)
    assert await snapshot(path) == before
    # health and metrics need no token
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200


async def test_auth_service_down_is_503(make_app_gateway: AppGatewayFactory) -> None:
    gw = await make_app_gateway(auth_service_url=closed_port_url(), http_retries=1)
    async with gw.client(timeout=30) as c:
        for method, url, body in [("GET", "/sessions", None), ("POST", "/sessions", {"name": "x"})]:
            kwargs: dict[str, Any] = {"headers": auth("teacher")}
            if body is not None:
                kwargs["json"] = body
            r = await c.request(method, url, **kwargs)
            error_of(r, 503, "service_unavailable")
            assert r.headers["retry-after"] == "1"
        # no token is still 401: the auth service is not consulted for that
        error_of(await c.get("/sessions"), 401)
        assert (await c.get("/health")).status_code == 200
    assert (await snapshot(db_path(gw)))[0] == []
