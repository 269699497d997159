"""SPEC 5 access rules as a table: EVERY route (from ``service.app.all_endpoints()``, at its path and its
``/api`` twin) x role x target session, with the exact status expected.

Roles: admin, teacher (owns the t1_* sessions), teacher2 (another teacher, owns t2_active), student, and anon
(no token). Targets: t1_active, t1_ended (COMPLETED), t1_inactive (toggled inactive), t2_active and a missing id.
Rules: admin may do everything; a teacher has full control of their own sessions and gets 404 for another's;
a student may list and read ACTIVE sessions, run RAG queries and generate questions on them and read their own
profile, gets 404 where the session is not visible, and 403 for any other route whatever the session (the
route's declared roles exclude students, so the answer says nothing about the session);
a missing id is 404; an ended session refuses events, end, the status toggle, RAG work and uploads with 409;
an inactive session is open: hidden from students (404) but its owner works in it as in an active one.
Every error body is checked for the error envelope and for stack traces / SQL. A second part checks that
bearer tokens never reach the logs (nor any response body).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from security_kit import (
    Gateway,
    Seeded,
    assert_error,
    assert_no_leak,
    create_session,
    end_session,
    seed,
    set_status,
)

from service.app import all_endpoints
from service.logging_setup import JsonFormatter
from support.servers import auth

pytestmark = pytest.mark.engines

ROLES = ("admin", "teacher", "teacher2", "student", "anon")
TARGETS = ("t1_active", "t1_ended", "t1_inactive", "t2_active", "missing")
SID = "/sessions/{session_id}"
UPLOAD = "/api/documents/process-and-store"

# status per target (t1_active, t1_ended, t1_inactive, t2_active, missing), per role
READ = {
    "admin": (200, 200, 200, 200, 404),
    "teacher": (200, 200, 200, 404, 404),
    "teacher2": (404, 404, 404, 200, 404),
    "student": (200, 404, 404, 200, 404),
}
CHANGE = {  # any change, allowed on ended sessions too
    "admin": (200, 200, 200, 200, 404),
    "teacher": (200, 200, 200, 404, 404),
    "teacher2": (404, 404, 404, 200, 404),
    "student": (403, 403, 403, 403, 403),
}
OPEN_ONLY_CHANGE = {  # owner's work that needs an open (active or inactive) session
    "admin": (200, 409, 200, 200, 404),
    "teacher": (200, 409, 200, 404, 404),
    "teacher2": (404, 404, 404, 200, 404),
    "student": (403, 403, 403, 403, 403),
}
OPEN_ONLY_READ = {  # what a student may also do, on ACTIVE sessions (an inactive one is hidden from them)
    "admin": (200, 409, 200, 200, 404),
    "teacher": (200, 409, 200, 404, 404),
    "teacher2": (404, 404, 404, 200, 404),
    "student": (200, 404, 404, 200, 404),
}


def _with_status(table: Mapping[str, tuple[int, ...]], ok: int) -> dict[str, tuple[int, ...]]:
    return {role: tuple(ok if s == 200 else s for s in row) for role, row in table.items()}


@dataclass(frozen=True)
class Rule:
    """Expected statuses of one route. ``targets``: per-target rows (session routes) or ``None``."""

    method: str
    path: str
    per_role: dict[str, Any]  # role -> status, or role -> tuple per target
    body: Any = None
    targets: bool = False
    upload: bool = False
    documents: bool = False  # the active sessions need a processed document (questions, reprocess)
    markdown: bool = False  # a library upload (multipart ``file``)
    batch: bool = False  # an ingestion job of one library file the caller uploads first


STAFF_ONLY = {"admin": 200, "teacher": 200, "teacher2": 200, "student": 403}


def everyone(status: int, anon: int | None = None) -> dict[str, Any]:
    return {**dict.fromkeys(ROLES[:-1], status), "anon": status if anon is None else anon}


RULES = [
    Rule("GET", "/health", everyone(200)),
    Rule("GET", "/health/ready", everyone(200)),
    Rule("GET", "/health/services", everyone(200)),
    Rule("GET", "/metrics", everyone(200)),
    Rule("GET", "/profile", everyone(200, anon=401)),
    Rule("PUT", "/profile", everyone(200, anon=401), {"first_name": "Matrix"}),
    # a wrong old password: every role reaches the auth service, which refuses it (400, passed through)
    Rule(
        "PUT", "/profile/change-password", everyone(400, anon=401), {"old_password": "wrong", "new_password": "secret1"}
    ),
    Rule("POST", "/sessions", {"admin": 201, "teacher": 201, "teacher2": 201, "student": 403}, {"name": "m"}),
    Rule("GET", "/sessions", everyone(200, anon=401)),
    Rule("GET", "/sessions/stats", {"admin": 200, "teacher": 200, "teacher2": 200, "student": 403}),
    Rule(
        "POST",
        "/admin/cleanup",
        {"admin": 200, "teacher": 403, "teacher2": 403, "student": 403},
        {"keep_newest": 10**6},
    ),
    Rule("POST", "/admin/backup", {"admin": 201, "teacher": 403, "teacher2": 403, "student": 403}),
    Rule("GET", SID, READ, targets=True),
    Rule("PATCH", SID, CHANGE, {"description": "changed"}, targets=True),
    Rule("DELETE", SID, CHANGE, targets=True),
    Rule("PATCH", SID + "/status", OPEN_ONLY_CHANGE, {"status": "inactive"}, targets=True),
    Rule("POST", SID + "/events", _with_status(OPEN_ONLY_CHANGE, 201), {"event_type": "CLICK"}, targets=True),
    Rule("GET", SID + "/events", READ, targets=True),
    Rule("POST", SID + "/end", OPEN_ONLY_CHANGE, {"end_state": 2}, targets=True),
    Rule("GET", SID + "/rag-settings", READ, targets=True),
    Rule("GET", SID + "/chunks", READ, targets=True, documents=True),
    Rule("PATCH", SID + "/rag-settings", CHANGE, {"top_k": 3}, targets=True),
    Rule("POST", "/rag/query", OPEN_ONLY_READ, {"session_id": "{session_id}", "query": "light"}, targets=True),
    Rule("POST", SID + "/generate-questions", OPEN_ONLY_READ, {"count": 2}, targets=True, documents=True),
    Rule(
        "POST",
        SID + "/reprocess",
        OPEN_ONLY_CHANGE,
        {"chunk_size": 300, "chunk_overlap": 30},
        targets=True,
        documents=True,
    ),
    Rule("POST", UPLOAD, OPEN_ONLY_CHANGE, targets=True, upload=True),
    # the markdown library: staff only; a name the caller has no file of is a 404 (delete_all needs its flag: 422)
    Rule("POST", "/documents/upload-markdown", STAFF_ONLY, markdown=True),
    Rule("GET", "/documents/list-markdown", STAFF_ONLY),
    Rule("GET", "/documents/markdown/{filename}", {**STAFF_ONLY, "admin": 404, "teacher": 404, "teacher2": 404}),
    Rule("DELETE", "/documents/markdown/{filename}", {**STAFF_ONLY, "admin": 404, "teacher": 404, "teacher2": 404}),
    Rule("DELETE", "/documents/markdown", {**STAFF_ONLY, "admin": 422, "teacher": 422, "teacher2": 422}),
    # ingestion jobs: on a session the caller may change (open); a job the caller did not create is a 404
    Rule("POST", "/documents/process-and-store-batch", OPEN_ONLY_CHANGE, targets=True, batch=True),
    Rule(
        "GET",
        "/documents/process-and-store-batch/status/{job_id}",
        {**STAFF_ONLY, "admin": 404, "teacher": 404, "teacher2": 404},
    ),
]


def twin(path: str) -> str:
    return path.removeprefix("/api") if path.startswith("/api/") else "/api" + path


def test_the_table_covers_every_route() -> None:
    table = {(r.method, r.path) for r in RULES}
    routes = {(ep.method, ep.path) for ep in all_endpoints()}
    assert table == routes, f"missing from the table: {routes - table}; stale: {table - routes}"
    for rule in RULES:
        ep = next(e for e in all_endpoints() if (e.method, e.path) == (rule.method, rule.path))
        assert set(ROLES[:-1]) <= set(rule.per_role), rule
        assert (rule.per_role.get("anon", 401) == 401) == ep.access.authenticated, f"{rule.path}: 401 iff not public"


CELLS = [(rule, path, role) for rule in RULES for path in (rule.path, twin(rule.path)) for role in ROLES]


@pytest.fixture(scope="module")
def client(shared_gateway: Gateway) -> Iterator[httpx.Client]:
    """One client per gateway: making one loads the CA bundle (~50 ms), and the gateway sets no cookies."""
    with httpx.Client(base_url=shared_gateway.url, timeout=30) as c:
        yield c


def call(client: httpx.Client, rule: Rule, path: str, role: str, session_id: str | None) -> httpx.Response:
    headers = {} if role == "anon" else auth(role)
    url = path.replace("{session_id}", session_id or "").replace("{filename}", "never-uploaded.md")
    url = url.replace("{job_id}", "never-created")
    if rule.batch:
        client.post(
            "/documents/upload-markdown",
            files={"file": ("matrix-batch.md", b"# Matrix\n\nLeaves absorb light.\n", "text/markdown")},
            headers=headers,
        )
        fields = {"session_id": session_id or "", "markdown_files": '["matrix-batch.md"]', "chunk_size": "300"}
        return client.post(url, files=[(k, (None, v.encode())) for k, v in fields.items()], headers=headers)
    if rule.markdown:
        return client.post(url, files={"file": ("matrix.md", b"# Matrix\n", "text/markdown")}, headers=headers)
    if rule.upload:
        return client.post(
            url,
            data={"session_id": session_id or "", "chunk_size": "300", "chunk_overlap": "30"},
            files=[("files", ("notes.txt", b"Leaves absorb light for photosynthesis.", "text/plain"))],
            headers=headers,
        )
    body = rule.body
    if isinstance(body, dict) and session_id is not None:
        body = {k: (session_id if v == "{session_id}" else v) for k, v in body.items()}
    return client.request(rule.method, url, json=body, headers=headers)


@pytest.mark.parametrize(("rule", "path", "role"), CELLS, ids=[f"{r.method} {p} as {role}" for r, p, role in CELLS])
def test_access(rule: Rule, path: str, role: str, client: httpx.Client, module_db_engine: str) -> None:
    expected = rule.per_role.get(role, 401)
    if module_db_engine == "postgres" and rule.path == "/admin/backup" and expected == 201:
        expected = 501  # admitted, but a PostgreSQL backup is pg_dump's (the declared 501, not a 403)
    if not rule.targets:
        resp = call(client, rule, path, role, None)
        assert resp.status_code == expected, f"{rule.method} {path} as {role}: {resp.status_code} {resp.text}"
        if resp.status_code >= 400:
            assert_error(resp, expected)
        return
    seeded: Seeded = seed(client, documents=rule.documents)  # fresh sessions: the calls below may change them
    row = expected if isinstance(expected, tuple) else (expected,) * len(TARGETS)
    got = []
    for target in TARGETS:
        resp = call(client, rule, path, role, seeded.target(target))
        got.append(resp.status_code)
        if resp.status_code >= 400:
            assert_error(resp, resp.status_code, sent=[seeded.target(target)])
    assert tuple(got) == row, f"{rule.method} {path} as {role}: got {dict(zip(TARGETS, got, strict=True))}"


def test_bad_tokens_are_401_everywhere(client: httpx.Client) -> None:
    for rule in RULES:
        if "anon" in rule.per_role and rule.per_role["anon"] != 401:
            continue  # unauthenticated routes
        for header in ("Bearer not-a-real-token", "Bearer dev:nobody:x", "Token dev-admin-token", "dev-admin-token"):
            resp = client.request(
                rule.method, rule.path.replace("{session_id}", "0" * 32), headers={"Authorization": header}
            )
            assert_error(resp, 401)
            assert resp.headers.get("www-authenticate") == "Bearer"


def test_list_and_stats_are_scoped_to_the_caller(client: httpx.Client) -> None:
    """Fresh users (generated dev tokens) so counts are exact whatever else the module created."""
    tag = uuid.uuid4().hex[:10]
    me, other, pupil = f"dev:teacher:me{tag}", f"dev:teacher:other{tag}", f"dev:student:pupil{tag}"

    def h(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def make(token: str) -> str:
        r = client.post("/sessions", json={"name": "scoped", "category": f"cat{tag}"}, headers=h(token))
        assert r.status_code == 201, r.text
        return str(r.json()["session_id"])

    mine = [make(me), make(me), make(me)]
    theirs = make(other)
    assert client.post(f"/sessions/{mine[0]}/end", json={"end_state": 3}, headers=h(me)).status_code == 200

    def ids(token: str, **params: Any) -> set[str]:
        r = client.get("/sessions", params={"category": f"cat{tag}", **params}, headers=h(token))
        assert r.status_code == 200, r.text
        return {s["session_id"] for s in r.json()}

    assert ids(me) == set(mine)
    assert ids(other) == {theirs}
    assert ids(pupil) == {mine[1], mine[2], theirs}  # ACTIVE only
    assert ids(pupil, status="COMPLETED") == set()
    r = client.patch(f"/sessions/{mine[2]}/status", json={"status": "inactive"}, headers=h(me))
    assert r.status_code == 200, r.text
    assert ids(pupil) == {mine[1], theirs} and ids(pupil, status="inactive") == set()
    assert ids(me) == set(mine) and ids(me, status="INACTIVE") == {mine[2]}
    assert ids(me, user_id=f"me{tag}") == set(mine)
    assert_error(client.get("/sessions", params={"user_id": f"other{tag}"}, headers=h(me)), 403)
    assert_error(client.get("/sessions", params={"user_id": f"me{tag}"}, headers=h(pupil)), 403)
    admin = client.get("/sessions", params={"category": f"cat{tag}", "user_id": f"other{tag}"}, headers=auth("admin"))
    assert {s["session_id"] for s in admin.json()} == {theirs}
    stats = client.get("/sessions/stats", headers=h(me)).json()
    assert stats["total"] == 3 and stats["by_status"] == {
        "active": 1,
        "inactive": 1,
        "completed": 1,
        "cancelled": 0,
        "faulted": 0,
    }
    assert client.get("/sessions/stats", headers=h(other)).json()["total"] == 1
    assert_error(client.get("/sessions/stats", headers=h(pupil)), 403)
    profile = client.get("/profile", headers=h(pupil)).json()
    assert profile["id"] == f"pupil{tag}" and profile["role_name"] == "student"


def test_no_existence_oracle(client: httpx.Client) -> None:
    """Another teacher's session and a missing one give byte-identical answers (apart from the echoed id)."""
    theirs = create_session(client, "teacher2")
    end_session(client, ended := create_session(client, "teacher2"), role="teacher2")
    set_status(client, inactive := create_session(client, "teacher2"), "inactive", role="teacher2")
    missing = uuid.uuid4().hex
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"name": "x"}),
        ("DELETE", "", None),
        ("GET", "/events", None),
        ("POST", "/end", {"end_state": 1}),
        ("PATCH", "/status", {"status": "active"}),
    ):
        for role, hidden in (("teacher", theirs), ("teacher", ended), ("student", ended), ("student", inactive)):
            if role == "student" and method != "GET":
                continue  # refused by the route's roles (403) whatever the session
            a = client.request(method, f"/sessions/{hidden}{suffix}", json=body, headers=auth(role))
            b = client.request(method, f"/sessions/{missing}{suffix}", json=body, headers=auth(role))
            assert a.status_code == b.status_code == 404
            assert a.text.replace(hidden, "ID") == b.text.replace(missing, "ID")


# -- tokens never reach the logs ---------------------------------------------------------------------------------
LOGGERS = (
    "",
    "service",
    "service.access",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "httpx",
    "httpcore",
    "aiohttp",
)


def test_tokens_never_appear_in_logs_or_bodies(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    canary = uuid.uuid4().hex
    good = f"dev:teacher:canary{canary}"  # a valid generated dev token (its user id, canary<hex>, may appear)
    bad = f"canary-invalid-{canary}"  # refused by the auth service
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    bodies: list[str] = []

    def go(method: str, url: str, token: str, **kw: Any) -> httpx.Response:
        resp = client.request(method, url, headers={"Authorization": f"Bearer {token}", "X-Request-ID": "canary"}, **kw)
        bodies.append(resp.text)
        return resp

    sid = go("POST", "/sessions", good, json={"name": "canary"}).json()["session_id"]
    go("GET", f"/sessions/{sid}?include=events", good)
    go("GET", "/sessions", good, params={"limit": 1})
    go("PATCH", f"/sessions/{sid}", good, json={"metadata": {"k": "v"}})
    go("POST", f"/sessions/{sid}/events", good, json={"event_type": "CLICK", "state": 2})
    go(
        "POST",
        UPLOAD,
        good,
        data={"session_id": sid},
        files=[("files", ("n.txt", b"Leaves absorb light.", "text/plain"))],
    )
    go("POST", "/rag/query", good, json={"session_id": sid, "query": "light"})
    go("POST", f"/sessions/{sid}/generate-questions", good, json={"count": 1})
    go("GET", "/profile", good)
    assert go("GET", "/sessions/" + "0" * 32, good).status_code == 404
    assert go("POST", "/sessions", good, json={"name": ""}).status_code == 422
    assert go("POST", "/admin/backup", good).status_code == 403
    assert go("GET", "/sessions", bad).status_code == 401
    assert go("POST", "/sessions", bad, json={"name": "x"}).status_code == 401
    go("DELETE", f"/sessions/{sid}", good)
    formatter = JsonFormatter()
    records = [r for r in caplog.records if not r.name.startswith("devstack")]
    assert any(r.name == "service.access" for r in records), "the access log was not captured"
    for record in records:
        text = " ".join(
            [
                record.getMessage(),
                repr(record.args),
                repr(record.__dict__),
                formatter.format(record),
                record.exc_text or "",
            ]
        )
        for token in (good, bad, f"invalid-{canary}"):
            assert token not in text, f"token in a log record of {record.name}: {text[:300]}"
    for body in bodies:
        assert good not in body and f"invalid-{canary}" not in body
        assert_no_leak(body, sent=["canary"])
