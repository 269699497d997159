"""Session lifecycle through the HTTP API: create, events, state, end, patch, delete, stats, envelopes."""

from __future__ import annotations

import re
import uuid
from typing import Any, cast

import httpx
import pytest
from sessions_kit import all_events, create, db_path, end, error_of, pages, sql

from support.inprocess import AppGatewayFactory, InProcessServer
from support.ports import closed_port_url
from support.servers import ServerThread, auth
from support.session_view import counters_of

pytestmark = pytest.mark.engines

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_create_writes_session_started_with_the_session(
    client: httpx.AsyncClient, gateway: InProcessServer
) -> None:
    body = {
        "name": "  Algebra  ",
        "category": "math",
        "description": "linear equations",
        "start_state": 3,
        "metadata": {"client": "web", "nested": {"a": [1, 2]}},
        "rag_settings": {"top_k": 7, "use_rerank": True},
    }
    r = await client.post("/sessions", json=body, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    s = r.json()
    assert len(s["session_id"]) >= 32 and s["session_id"].isalnum()
    assert s["user_id"] == "u-teacher"
    assert s["status"] == "active"  # lower case in the API; upper case in the database
    assert s["name"] == "Algebra"  # stripped
    assert (s["category"], s["description"]) == ("math", "linear equations")
    assert (s["start_state"], s["current_state"], s["end_state"]) == (3, 3, None)
    assert s["metadata"] == {"client": "web", "nested": {"a": [1, 2]}}
    assert s["rag_settings"] == {"top_k": 7, "use_rerank": True}
    assert counters_of(s) == {"document_count": 0, "total_chunks": 0, "query_count": 0, "questions_generated": 0}
    assert s["end_time"] is None and s["end_time_ms"] is None and s["duration_ms"] is None
    assert ISO_UTC.match(s["start_time"]) and ISO_UTC.match(s["created_at"]) and ISO_UTC.match(s["updated_at"])
    assert s["start_time_ms"] == s["created_at_ms"] == s["updated_at_ms"]
    assert [e["event_type"] for e in s["events"]] == ["SESSION_STARTED"]
    assert s["events"][0]["event_data"] == {"start_state": 3, "name": "Algebra"}

    # the row and its first event are both in the database
    sid = s["session_id"]
    path = db_path(gateway)
    rows = await sql(path, "SELECT status, start_time, end_time FROM sessions WHERE session_id = ?", sid)
    assert rows == [("ACTIVE", s["start_time_ms"], None)]
    events = await sql(path, "SELECT event_type, timestamp FROM session_events WHERE session_id = ?", sid)
    assert events == [("SESSION_STARTED", s["start_time_ms"])]

    r = await client.get(f"/sessions/{sid}", headers=auth("teacher"))
    assert r.status_code == 200
    got = r.json()
    assert got.get("events") is None  # not inlined unless asked
    assert {k: v for k, v in got.items() if k != "events"} == {k: v for k, v in s.items() if k != "events"}


async def test_state_changes_events_and_end(client: httpx.AsyncClient) -> None:
    sid = (await create(client, start_state=1))["session_id"]
    url = f"/sessions/{sid}/events"

    r = await client.post(url, json={"state": 4}, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["current_state"] == 4
    assert [(e["event_type"], e["event_data"]) for e in out["events"]] == [("STATE_CHANGED", {"from": 1, "to": 4})]

    r = await client.post(
        url, json={"event_type": "ANSWER_GIVEN", "event_data": {"q": 1}, "state": 5}, headers=auth("teacher")
    )
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["current_state"] == 5
    assert [(e["event_type"], e["event_data"]) for e in out["events"]] == [
        ("ANSWER_GIVEN", {"q": 1}),
        ("STATE_CHANGED", {"from": 4, "to": 5}),
    ]

    r = await client.post(
        url, json={"event_type": "STATE_CHANGED", "state": 2, "event_data": {"why": "x"}}, headers=auth("teacher")
    )
    assert r.status_code == 201, r.text
    assert [(e["event_type"], e["event_data"]) for e in r.json()["events"]] == [
        ("STATE_CHANGED", {"why": "x", "from": 5, "to": 2})
    ]

    # a state change alone keeps the data sent with it; the service's from/to win over the client's
    r = await client.post(url, json={"state": 3, "event_data": {"reason": "quiz", "to": 99}}, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    assert [(e["event_type"], e["event_data"]) for e in r.json()["events"]] == [
        ("STATE_CHANGED", {"reason": "quiz", "from": 2, "to": 3})
    ]
    r = await client.post(url, json={"state": 2}, headers=auth("teacher"))
    assert r.json()["events"][0]["event_data"] == {"from": 3, "to": 2}

    r = await client.post(url, json={"event_type": "NOTE"}, headers=auth("teacher"))
    assert r.status_code == 201
    assert r.json()["current_state"] == 2
    assert r.json()["events"][0]["event_data"] is None

    r = await client.get(f"/sessions/{sid}", headers=auth("teacher"))
    assert r.json()["current_state"] == 2

    # events: empty body, STATE_CHANGED without state, service-owned type, bad name -> 422
    for bad in (
        {},
        {"event_type": "STATE_CHANGED"},
        {"event_type": "SESSION_ENDED"},
        {"event_type": "lower_case"},
        {"event_type": "X" * 65},
        {"state": 9},
        {"state": -1},
    ):
        error_of(await client.post(url, json=bad, headers=auth("teacher")), 422, "validation_error")

    ended = await end(client, sid, status="FAULTED", end_state=7)
    assert ended["status"] == "faulted"
    assert (ended["end_state"], ended["current_state"]) == (7, 7)
    assert ended["end_time_ms"] >= ended["start_time_ms"]
    assert ended["duration_ms"] == ended["end_time_ms"] - ended["start_time_ms"]
    assert ISO_UTC.match(ended["end_time"])

    events = await all_events(client, sid, "teacher")
    assert [e["event_type"] for e in events] == [
        "SESSION_STARTED",
        "STATE_CHANGED",
        "ANSWER_GIVEN",
        "STATE_CHANGED",
        "STATE_CHANGED",
        "STATE_CHANGED",
        "STATE_CHANGED",
        "NOTE",
        "STATE_CHANGED",
        "SESSION_ENDED",
    ]
    assert events[-2]["event_data"] == {"from": 2, "to": 7}
    assert events[-1]["event_data"] == {"status": "FAULTED", "end_state": 7, "duration_ms": ended["duration_ms"]}
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)

    # a second end is a conflict, and an ended session takes no events
    error_of(await client.post(f"/sessions/{sid}/end", json={"end_state": 1}, headers=auth("teacher")), 409, "conflict")
    error_of(await client.post(url, json={"event_type": "LATE"}, headers=auth("teacher")), 409, "conflict")
    error_of(await client.post(url, json={"state": 1}, headers=auth("teacher")), 409, "conflict")
    assert len(await all_events(client, sid, "teacher")) == len(events)


async def test_end_validation_and_same_state(client: httpx.AsyncClient) -> None:
    sid = (await create(client, start_state=2))["session_id"]
    for bad in ({}, {"end_state": 9}, {"status": "ACTIVE", "end_state": 1}, {"status": "DONE", "end_state": 1}):
        error_of(await client.post(f"/sessions/{sid}/end", json=bad, headers=auth("teacher")), 422)
    ended = await end(client, sid, end_state=2)  # default status, no state change
    assert ended["status"] == "completed"
    types = [e["event_type"] for e in await all_events(client, sid, "teacher")]
    assert types == ["SESSION_STARTED", "SESSION_ENDED"]
    for status in ("CANCELLED", "cancelled", "Faulted"):  # either case
        sid2 = (await create(client))["session_id"]
        assert (await end(client, sid2, status=status, end_state=0))["status"] == status.lower()


async def test_patch_changes_only_fields_sent(client: httpx.AsyncClient) -> None:
    s = await create(
        client,
        name="Orig",
        category="cat",
        description="desc",
        metadata={"keep": 1, "drop": 2, "deep": {"a": 1, "b": 2}},
    )
    sid = s["session_id"]

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        r = await client.patch(f"/sessions/{sid}", json=body, headers=auth("teacher"))
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    out = await patch({"name": "Renamed"})
    assert (out["name"], out["category"], out["description"]) == ("Renamed", "cat", "desc")
    assert out["metadata"] == {"keep": 1, "drop": 2, "deep": {"a": 1, "b": 2}}
    assert out["updated_at_ms"] >= s["updated_at_ms"]

    out = await patch({"metadata": {"drop": None, "new": "x", "deep": {"b": None, "c": 3}}})
    assert out["metadata"] == {"keep": 1, "new": "x", "deep": {"a": 1, "c": 3}}
    assert (out["name"], out["category"], out["description"]) == ("Renamed", "cat", "desc")

    out = await patch({"description": None, "category": None})
    assert (out["name"], out["category"], out["description"]) == ("Renamed", None, "")
    assert out["metadata"] == {"keep": 1, "new": "x", "deep": {"a": 1, "c": 3}}
    assert out["rag_settings"] == {} and out["query_count"] == 0

    # name cannot be removed; an empty patch and reserved keys are refused; nothing changes
    for bad in ({"name": None}, {}, {"metadata": {"name": "x"}}, {"metadata": {"counters": None}}, {"name": "  "}):
        error_of(await client.patch(f"/sessions/{sid}", json=bad, headers=auth("teacher")), 422, "validation_error")
    r = await client.get(f"/sessions/{sid}", headers=auth("teacher"))
    assert {k: r.json()[k] for k in ("name", "category", "description", "metadata")} == {
        "name": "Renamed",
        "category": None,
        "description": "",
        "metadata": {"keep": 1, "new": "x", "deep": {"a": 1, "c": 3}},
    }
    updates = [e for e in await all_events(client, sid, "teacher") if e["event_type"] == "METADATA_UPDATED"]
    assert [e["event_data"]["fields"] for e in updates] == [["name"], ["metadata"], ["category", "description"]]


async def test_delete_removes_events_and_collection(
    client: httpx.AsyncClient, gateway: InProcessServer, devstack: ServerThread
) -> None:
    sid = (await create(client))["session_id"]
    keep = (await create(client))["session_id"]
    for i in range(3):
        r = await client.post(
            f"/sessions/{sid}/events", json={"event_type": "E", "event_data": {"i": i}}, headers=auth("teacher")
        )
        assert r.status_code == 201
    rid = f"del-{uuid.uuid4().hex}"
    r = await client.delete(f"/sessions/{sid}", headers={**auth("teacher"), "X-Request-ID": rid})
    assert r.status_code == 200, r.text
    assert r.json() == {"session_id": sid, "deleted": True, "events_deleted": 4, "collection_deleted": True}
    assert r.headers["x-request-id"] == rid

    # the reference downstream saw the collection delete, carrying our request id
    async with httpx.AsyncClient(base_url=devstack.url) as ds:
        recent = (await ds.get("/_control")).json()["recent"]
    assert {"method": "DELETE", "path": f"/sessions/{sid}/collection", "request_id": rid} in recent

    path = db_path(gateway)
    assert await sql(path, "SELECT count(*) FROM sessions WHERE session_id = ?", sid) == [(0,)]
    assert await sql(path, "SELECT count(*) FROM session_events WHERE session_id = ?", sid) == [(0,)]
    assert await sql(path, "SELECT count(*) FROM session_events WHERE session_id = ?", keep) == [(1,)]
    error_of(await client.get(f"/sessions/{sid}", headers=auth("teacher")), 404, "not_found")
    error_of(await client.delete(f"/sessions/{sid}", headers=auth("teacher")), 404, "not_found")


async def test_delete_reports_collection_failure(make_app_gateway: AppGatewayFactory) -> None:
    # the session is the source of truth: it goes even when the RAG service is unreachable
    gw = await make_app_gateway(rag_service_url=closed_port_url(), http_retries=0)
    async with gw.client(timeout=30) as c:
        sid = (await create(c))["session_id"]
        r = await c.delete(f"/sessions/{sid}", headers=auth("teacher"))
        assert r.status_code == 200, r.text
        assert r.json()["collection_deleted"] is False
        error_of(await c.get(f"/sessions/{sid}", headers=auth("admin")), 404)


async def test_get_with_events_and_events_pagination(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]
    for i in range(11):
        r = await client.post(
            f"/sessions/{sid}/events", json={"event_type": "STEP", "event_data": {"i": i}}, headers=auth("teacher")
        )
        assert r.status_code == 201

    r = await client.get(f"/sessions/{sid}", params={"include": "events"}, headers=auth("teacher"))
    assert r.status_code == 200
    inlined = r.json()["events"]
    assert [e["event_type"] for e in inlined] == ["SESSION_STARTED"] + ["STEP"] * 11
    error_of(await client.get(f"/sessions/{sid}", params={"include": "everything"}, headers=auth("teacher")), 422)

    seen: list[dict[str, Any]] = []
    walked = 0
    async for page in pages(client, f"/sessions/{sid}/events", "teacher", limit=5):
        assert len(page) <= 5
        seen.extend(page)
        walked += 1
    assert walked == 3
    assert seen == inlined  # oldest first, each exactly once
    assert [e["event_data"]["i"] for e in seen[1:]] == list(range(11))
    for e in seen:
        assert e["session_id"] == sid and ISO_UTC.match(e["timestamp"]) and isinstance(e["timestamp_ms"], int)

    for bad in ({"limit": 0}, {"limit": 10_001}, {"limit": "x"}, {"bogus": 1}):
        error_of(await client.get(f"/sessions/{sid}/events", params=bad, headers=auth("teacher")), 422)
    error_of(await client.get(f"/sessions/{sid}/events", params={"cursor": "nope"}, headers=auth("teacher")), 400)


async def test_stats(client: httpx.AsyncClient) -> None:
    teacher = {"Authorization": f"Bearer dev:teacher:stats{uuid.uuid4().hex[:12]}"}
    durations = []
    for status in ("COMPLETED", "CANCELLED", "FAULTED", "COMPLETED"):
        r = await client.post("/sessions", json={"name": "s"}, headers=teacher)
        sid = r.json()["session_id"]
        await client.post(f"/sessions/{sid}/events", json={"event_type": "PING"}, headers=teacher)
        r = await client.post(f"/sessions/{sid}/end", json={"status": status, "end_state": 1}, headers=teacher)
        assert r.status_code == 200
        durations.append(r.json()["duration_ms"])
    await client.post("/sessions", json={"name": "open"}, headers=teacher)
    await create(client)  # another teacher's session: not in this teacher's stats

    r = await client.get("/sessions/stats", headers=teacher)
    assert r.status_code == 200, r.text
    st = r.json()
    assert st["total"] == 5
    assert st["by_status"] == {"active": 1, "inactive": 0, "completed": 2, "cancelled": 1, "faulted": 1}
    d = st["durations"]
    assert d["count"] == 4
    assert d["avg_ms"] == sum(durations) / 4
    ordered = sorted(durations)
    assert d["p50_ms"] in ordered and d["p95_ms"] in ordered
    assert ordered[1] <= d["p50_ms"] <= ordered[2]
    assert d["p95_ms"] == ordered[-1]
    assert st["events_by_type"] == {"SESSION_STARTED": 5, "PING": 4, "STATE_CHANGED": 4, "SESSION_ENDED": 4}

    r = await client.get("/sessions/stats", headers=auth("admin"))
    st = r.json()
    assert st["total"] == 6 and st["by_status"]["active"] == 2
    assert st["events_by_type"]["SESSION_STARTED"] == 6
    error_of(await client.get("/sessions/stats", headers=auth("student")), 403, "forbidden")

    # an empty scope has no durations
    fresh = {"Authorization": f"Bearer dev:teacher:empty{uuid.uuid4().hex[:12]}"}
    st = (await client.get("/sessions/stats", headers=fresh)).json()
    assert st["total"] == 0
    assert st["durations"] == {"count": 0, "avg_ms": None, "p50_ms": None, "p95_ms": None}
    assert st["events_by_type"] == {}


async def test_list_filters(client: httpx.AsyncClient) -> None:
    a = await create(client, name="a", category="math")
    b = await create(client, name="b", category="art")
    c = await create(client, "teacher2", name="c", category="math")
    await end(client, b["session_id"])

    async def ids(role: str = "admin", **params: Any) -> list[str]:
        r = await client.get("/sessions", params=params, headers=auth(role))
        assert r.status_code == 200, r.text
        return [s["session_id"] for s in r.json()]

    newest_first = [c["session_id"], b["session_id"], a["session_id"]]
    assert await ids() == newest_first
    assert await ids(category="math") == [c["session_id"], a["session_id"]]
    assert await ids(status="COMPLETED") == [b["session_id"]]
    assert await ids(status="ACTIVE") == [c["session_id"], a["session_id"]]
    assert await ids(status="active") == await ids(status="Active") == [c["session_id"], a["session_id"]]
    assert await ids(status="completed") == [b["session_id"]] and await ids(status="inactive") == []
    assert await ids(user_id="u-teacher2") == [c["session_id"]]
    assert await ids("teacher") == [b["session_id"], a["session_id"]]
    assert await ids("teacher", user_id="u-teacher") == [b["session_id"], a["session_id"]]
    error_of(await client.get("/sessions", params={"user_id": "u-teacher2"}, headers=auth("teacher")), 403)
    assert await ids(started_after=a["start_time_ms"]) == newest_first
    assert await ids(started_before=a["start_time_ms"]) == []
    assert await ids(started_after=c["start_time_ms"] + 1) == []
    assert await ids(ended_after=0) == [b["session_id"]]
    assert await ids(ended_before=0) == []
    assert await ids(created_after=a["created_at_ms"], created_before=c["created_at_ms"] + 1) == newest_first
    assert await ids(created_after=c["created_at_ms"] + 1) == []
    for bad in (
        {"limit": 0},
        {"limit": 10_001},
        {"started_after": -1},
        {"started_after": "9" * 30},
        {"ended_before": "yesterday"},
        {"unknown": "x"},
    ):
        error_of(await client.get("/sessions", params=bad, headers=auth("admin")), 422, "validation_error")
    r = await client.get("/sessions?status=ACTIVE&status=COMPLETED", headers=auth("admin"))
    error_of(r, 422)


async def test_api_prefix_serves_every_route(client: httpx.AsyncClient) -> None:
    h = auth("teacher")
    r = await client.post("/api/sessions", json={"name": "twin"}, headers=h)
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert (await client.get("/api/sessions", headers=h)).json()[0]["session_id"] == sid
    assert (await client.get(f"/api/sessions/{sid}", headers=h)).json()["name"] == "twin"
    assert (await client.patch(f"/api/sessions/{sid}", json={"name": "t2"}, headers=h)).json()["name"] == "t2"
    assert (await client.post(f"/api/sessions/{sid}/events", json={"state": 2}, headers=h)).status_code == 201
    assert len((await client.get(f"/api/sessions/{sid}/events", headers=h)).json()["events"]) == 3
    assert (await client.get("/api/sessions/stats", headers=h)).json()["total"] == 1
    assert (await client.post(f"/api/sessions/{sid}/end", json={"end_state": 2}, headers=h)).status_code == 200
    assert (await client.delete(f"/api/sessions/{sid}", headers=h)).json()["deleted"] is True
    assert (await client.get("/api/health")).json() == {"status": "ok"}
    assert (await client.get("/api/health/ready")).status_code == 200
    r = await client.post("/api/admin/cleanup", json={"keep_newest": 10}, headers=auth("admin"))
    assert r.status_code == 200, r.text


async def test_route_table_has_twins_and_openapi_entries(client: httpx.AsyncClient, gateway: InProcessServer) -> None:
    """Every route of the app (not only the sessions ones) has its /api twin and an OpenAPI operation."""
    from starlette.routing import Route

    doc = (await client.get("/openapi.json")).json()
    routes = [rt for rt in gateway.app.routes if isinstance(rt, Route) and rt.path != "/openapi.json"]
    paths = {rt.path for rt in routes}
    for route in routes:
        twin = route.path.removeprefix("/api") if route.path.startswith("/api/") else "/api" + route.path
        assert twin in paths, f"{route.path} has no /api twin"
        assert route.path in doc["paths"], f"{route.path} missing from OpenAPI"
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in doc["paths"][route.path], f"{method} {route.path} missing from OpenAPI"


async def test_error_shapes_and_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/nowhere", headers={"X-Request-ID": "abc-123"})
    error_of(r, 404, "not_found")
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.put("/sessions", headers=auth("admin"))
    error_of(r, 405)
    r = await client.get("/sessions/" + "0" * 32, headers=auth("admin"))
    assert error_of(r, 404, "not_found")["details"] == {"session_id": "0" * 32}
    r = await client.get("/sessions")
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])  # generated when absent
    r2 = await client.get("/health")
    assert r2.headers["x-request-id"] != r.headers["x-request-id"]
    # an unusable id is replaced, not echoed
    r = await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = await client.get("/health", headers={"X-Request-ID": "x" * 200})
    assert r.headers["x-request-id"] != "x" * 200
    # echoed on errors raised anywhere, including validation
    r = await client.post("/sessions", json={}, headers={**auth("teacher"), "X-Request-ID": "req.42"})
    error_of(r, 422, "validation_error")
    assert r.headers["x-request-id"] == "req.42"
    assert isinstance(r.json()["error"]["details"], list)


async def test_health(gateway: InProcessServer, client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    r = await client.get("/health/ready")
    assert r.status_code == 200
    target = gateway.state["ctx"].storage.target_schema_version
    assert r.json() == {"status": "ready", "database": "ok", "schema_version": target}


async def test_openapi_document(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    sessions_routes = [
        ("post", "/sessions"),
        ("get", "/sessions"),
        ("get", "/sessions/stats"),
        ("get", "/sessions/{session_id}"),
        ("patch", "/sessions/{session_id}"),
        ("delete", "/sessions/{session_id}"),
        ("post", "/sessions/{session_id}/events"),
        ("get", "/sessions/{session_id}/events"),
        ("post", "/sessions/{session_id}/end"),
        ("post", "/admin/cleanup"),
        ("post", "/admin/backup"),
        ("get", "/health"),
        ("get", "/health/ready"),
    ]
    for method, path in sessions_routes:
        for p in (path, "/api" + path):
            assert method in doc["paths"].get(p, {}), f"{method.upper()} {p} missing from OpenAPI"
    schemas = doc["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [x for v in node.values() for x in refs(v)]
        if isinstance(node, list):
            return [x for v in node for x in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, f"dangling {ref}"
    create_op = doc["paths"]["/sessions"]["post"]
    assert create_op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SessionCreate")
    assert {"201", "401", "413", "415", "422"} <= set(create_op["responses"])
    assert schemas["SessionCreate"]["additionalProperties"] is False
    list_params = {p["name"] for p in doc["paths"]["/sessions"]["get"]["parameters"]}
    assert {"status", "limit", "cursor", "started_after", "ended_before"} <= list_params
    op_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(op_ids) == len(set(op_ids))


# The old gateway's SessionResponse: every field, with its type (the web client reads them unchanged).
OLD_SESSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "session_id": str,
    "name": str,
    "description": str,
    "category": str,
    "status": str,
    "created_by": str,
    "created_at": str,
    "updated_at": str,
    "last_accessed": str,
    "grade_level": str,
    "subject_area": str,
    "learning_objectives": list,
    "tags": list,
    "document_count": int,
    "total_chunks": int,
    "query_count": int,
    "user_rating": float,
    "is_public": bool,
    "backup_count": int,
    "rag_settings": dict,
}


async def test_old_client_create_request_and_session_response(client: httpx.AsyncClient) -> None:
    body = {
        "name": "Hücre",
        "description": "",
        "category": "general",
        "created_by": "someone-else",  # ignored: the owner is the caller
        "grade_level": "9",
        "subject_area": "Biyoloji",
        "learning_objectives": ["Hücreyi tanır", "Organelleri sayar"],
        "tags": ["bio"],
        "is_public": True,
    }
    r = await client.post("/sessions", json=body, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    for s in (r.json(), (await client.get(f"/sessions/{sid}", headers=auth("teacher"))).json()):
        for field, kind in OLD_SESSION_FIELDS.items():
            assert isinstance(s[field], kind), (field, s[field])
        assert "counters" not in s and s["created_by"] == s["user_id"] == "u-teacher"
        assert {k: s[k] for k in body if k != "created_by"} == {k: v for k, v in body.items() if k != "created_by"}
        assert s["last_accessed"] == s["updated_at"] and "created_by" not in s["metadata"]
        assert (s["user_rating"], s["backup_count"], s["student_entry_count"]) == (0.0, 0, 0)

    # unset: the old defaults ("" and [] and false), never null
    r = await client.post("/sessions", json={"name": "bare"}, headers=auth("teacher"))
    bare = r.json()
    assert (bare["description"], bare["grade_level"], bare["subject_area"]) == ("", "", "")
    assert (bare["learning_objectives"], bare["tags"], bare["is_public"]) == ([], [], False)


async def test_patch_descriptive_fields(client: httpx.AsyncClient) -> None:
    sid = (await create(client, "teacher", tags=["a"], grade_level="5", is_public=True))["session_id"]

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        r = await client.patch(f"/sessions/{sid}", json=body, headers=auth("teacher"))
        assert r.status_code == 200, r.text
        return cast(dict[str, Any], r.json())

    out = await patch({"tags": ["x", "y"], "learning_objectives": ["o"], "subject_area": "Fen", "is_public": False})
    assert (out["tags"], out["learning_objectives"], out["subject_area"], out["is_public"]) == (
        ["x", "y"],
        ["o"],
        "Fen",
        False,
    )
    assert out["grade_level"] == "5" and out["metadata"] == {}
    out = await patch({"tags": None, "grade_level": None, "description": "d"})
    assert (out["tags"], out["grade_level"], out["description"]) == ([], "", "d")

    # bounded like the rest: refused with 422, nothing written
    before = (await client.get(f"/sessions/{sid}", headers=auth("teacher"))).json()
    for bad in (
        {"tags": ["t"] * 51},
        {"tags": ["x" * 501]},
        {"tags": [" "]},
        {"learning_objectives": "not a list"},
        {"learning_objectives": [1]},
        {"is_public": "yes"},
        {"grade_level": "g" * 101},
        {"description": "d" * 2001},
    ):
        error_of(await client.patch(f"/sessions/{sid}", json=bad, headers=auth("teacher")), 422, "validation_error")
        error_of(
            await client.post("/sessions", json={"name": "n", **bad}, headers=auth("teacher")), 422, "validation_error"
        )
    assert (await client.get(f"/sessions/{sid}", headers=auth("teacher"))).json() == before


async def test_status_toggle_active_inactive(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]

    async def toggle(status: str, role: str = "teacher") -> httpx.Response:
        return await client.patch(f"/sessions/{sid}/status", json={"status": status}, headers=auth(role))

    r = await toggle("inactive")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"success", "session_id", "new_status", "updated_session"}  # the old gateway's shape
    assert (body["success"], body["session_id"], body["new_status"]) == (True, sid, "inactive")
    session = body["updated_session"]
    assert (session["status"], session["end_time"], session["duration_ms"]) == ("inactive", None, None)
    assert (await client.get(f"/sessions/{sid}", headers=auth("teacher"))).json() == session
    # hidden from students, like a missing session; still the owner's to work in
    error_of(await client.get(f"/sessions/{sid}", headers=auth("student")), 404, "not_found")
    r = await client.post(f"/sessions/{sid}/events", json={"state": 4}, headers=auth("teacher"))
    assert r.status_code == 201, r.text

    assert (await toggle("inactive")).status_code == 200  # already inactive: no change, no event
    assert (await toggle("ACTIVE")).json()["new_status"] == "active"  # either case
    assert (await client.get(f"/sessions/{sid}", headers=auth("student"))).status_code == 200
    assert (await toggle("Inactive")).status_code == 200
    changes = [e["event_data"] for e in await all_events(client, sid, "teacher") if e["event_type"] == "STATUS_CHANGED"]
    assert changes == [
        {"from": "ACTIVE", "to": "INACTIVE"},
        {"from": "INACTIVE", "to": "ACTIVE"},
        {"from": "ACTIVE", "to": "INACTIVE"},
    ]

    # only the open statuses; a student may not; another teacher sees nothing
    for bad in ({"status": "completed"}, {"status": "paused"}, {}, {"status": 1}, {"status": "active", "x": 1}):
        r = await client.patch(f"/sessions/{sid}/status", json=bad, headers=auth("teacher"))
        error_of(r, 422, "validation_error")
    error_of(await toggle("active", "student"), 403, "forbidden")
    error_of(await toggle("active", "teacher2"), 404, "not_found")
    error_of(
        await client.post(f"/sessions/{sid}/events", json={"event_type": "STATUS_CHANGED"}, headers=auth("teacher")),
        422,
    )

    # ending works from inactive; an ended session is final
    ended = await end(client, sid, status="cancelled", end_state=4)
    assert ended["status"] == "cancelled" and ended["end_time"] is not None
    for status in ("active", "inactive"):
        error_of(await toggle(status), 409, "conflict")
    assert (await client.get(f"/sessions/{sid}", headers=auth("teacher"))).json()["status"] == "cancelled"
    stats = (await client.get("/sessions/stats", headers=auth("teacher"))).json()
    assert set(stats["by_status"]) == {"active", "inactive", "completed", "cancelled", "faulted"}
