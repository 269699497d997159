"""Hostile input, table-driven: each input gets a clear 4xx (JSON error envelope, no stack trace, no SQL) and
leaves the database exactly as it was (full dump of sessions + session_events before and after).

Categories (the ``id`` prefix): size, nest, utf8, nul, sql, cursor, unknown, limit, ctype, method, auth.
SQL metacharacters in *filters* are data, not errors: they must match nothing (200, empty page) rather than
widen the query. Raw-socket cases (malformed framing) are at the end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from security_kit import Gateway, Seeded, assert_error, assert_no_leak, create_session, dump_db, security_settings, seed

from service.app import all_endpoints, create_app
from service.sessions.cursor import encode_cursor
from support.servers import ServerThread, auth

pytestmark = pytest.mark.engines

SECRET = "security-suite-cursor-secret"
LIMITS = {
    "max_body_bytes": 8192,
    "max_upload_bytes": 2048,
    "max_upload_files": 2,
    "max_metadata_bytes": 4096,
    "max_event_data_bytes": 1024,
}
UPLOAD = "/api/documents/process-and-store"
SQL = [
    "' OR 1=1 --",
    '"; DROP TABLE sessions; --',
    "%",
    "_",
    "se%",
    "s_ed",
    "' UNION SELECT session_id FROM sessions --",
    "\\",
    "*",
    "1; DELETE FROM session_events",
]


@pytest.fixture(scope="module")
def hostile_gw(
    devstack: ServerThread, tmp_path_factory: pytest.TempPathFactory, module_engine_overrides: dict[str, Any]
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("hostile-gw")
    settings = security_settings(tmp, devstack.url, cursor_secret=SECRET, **LIMITS, **module_engine_overrides)
    server = ServerThread(create_app(settings)).start()
    yield Gateway(server, settings)
    server.stop()


@pytest.fixture(scope="module")
def seeded(hostile_gw: Gateway) -> Seeded:
    with httpx.Client(base_url=hostile_gw.url, timeout=30) as client:
        return seed(client, documents=True)


@pytest.fixture(scope="module")
def client(hostile_gw: Gateway) -> Iterator[httpx.Client]:
    """One client per gateway: making one loads the CA bundle (~50 ms), and the gateway sets no cookies."""
    with httpx.Client(base_url=hostile_gw.url, timeout=30) as c:
        yield c


@dataclass(frozen=True)
class Hostile:
    id: str
    method: str
    path: str  # {active} {ended} {other} are replaced by seeded session ids
    expect: int | tuple[int, ...]
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    role: str = "teacher"
    chunked: bool = False


def _deep(levels: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


def _signed(payload: bytes) -> str:
    """A cursor with a valid signature around any payload (as if the secret had leaked)."""
    body = base64.urlsafe_b64encode(payload).rstrip(b"=")
    return f"{body.decode()}.{hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()[:24]}"


def _file(name: str, data: bytes, ctype: str = "text/plain") -> tuple[str, tuple[str, bytes, str]]:
    return ("files", (name, data, ctype))


def _upload(expect: int, case_id: str, *, data: dict[str, str] | None = None, files: Any = None, **kw: Any) -> Hostile:
    return Hostile(
        case_id,
        "POST",
        UPLOAD,
        expect,
        data={"session_id": "{active}", **(data or {})},
        files=files if files is not None else [_file("a.txt", b"hello world")],
        **kw,
    )


J = {"content-type": "application/json"}
# (method, path, a body that is valid for the route) for every route taking a session id in its path
PATH_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/sessions/{sid}", None),
    ("PATCH", "/sessions/{sid}", {"name": "x"}),
    ("DELETE", "/sessions/{sid}", None),
    ("POST", "/sessions/{sid}/events", {"event_type": "CLICK"}),
    ("GET", "/sessions/{sid}/events", None),
    ("POST", "/sessions/{sid}/end", {"end_state": 1}),
    ("POST", "/sessions/{sid}/generate-questions", {"count": 1}),
    ("POST", "/sessions/{sid}/reprocess", {}),
    ("GET", "/sessions/{sid}/rag-settings", None),
    ("PATCH", "/sessions/{sid}/rag-settings", {"top_k": 3}),
]
BODY_ROUTES: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/sessions", {"name": "x"}, "teacher"),
    ("PATCH", "/sessions/{active}", {"name": "x"}, "teacher"),
    ("POST", "/sessions/{active}/events", {"event_type": "CLICK"}, "teacher"),
    ("POST", "/sessions/{active}/end", {"end_state": 1}, "teacher"),
    ("POST", "/rag/query", {"session_id": "{active}", "query": "light"}, "teacher"),
    ("POST", "/sessions/{active}/generate-questions", {"count": 1}, "teacher"),
    ("POST", "/sessions/{active}/reprocess", {"chunk_size": 500, "chunk_overlap": 50}, "teacher"),
    ("PATCH", "/sessions/{active}/rag-settings", {"top_k": 3}, "teacher"),
    ("POST", "/admin/cleanup", {"older_than_days": 36500}, "admin"),
]


def _cases() -> list[Hostile]:
    big = {"name": "x", "metadata": {"pad": "x" * 9000}}
    cases = [
        # -- size ------------------------------------------------------------------------------------------
        Hostile("size-body-over-limit", "POST", "/sessions", 413, json=big),
        Hostile("size-body-chunked-over-limit", "POST", "/sessions", 413, json=big, chunked=True),
        Hostile("size-metadata", "POST", "/sessions", 413, json={"name": "x", "metadata": {"pad": "x" * 5000}}),
        Hostile(
            "size-metadata-keys",
            "POST",
            "/sessions",
            413,
            json={"name": "x", "metadata": {f"k{i}": 0 for i in range(700)}},
        ),
        Hostile("size-metadata-patch", "PATCH", "/sessions/{active}", 413, json={"metadata": {"pad": "x" * 5000}}),
        Hostile(
            "size-event-data",
            "POST",
            "/sessions/{active}/events",
            413,
            json={"event_type": "X", "event_data": {"pad": "x" * 2000}},
        ),
        Hostile("size-name", "POST", "/sessions", 422, json={"name": "x" * 201}),
        Hostile("size-category", "POST", "/sessions", 422, json={"name": "x", "category": "x" * 101}),
        Hostile("size-description", "POST", "/sessions", 422, json={"name": "x", "description": "x" * 2001}),
        Hostile("size-event-type", "POST", "/sessions/{active}/events", 422, json={"event_type": "X" * 65}),
        Hostile("size-rag-query-text", "POST", "/rag/query", 422, json={"session_id": "{active}", "query": "q" * 4001}),
        Hostile(
            "size-rag-history",
            "POST",
            "/rag/query",
            422,
            json={
                "session_id": "{active}",
                "query": "q",
                "conversation_history": [{"role": "user", "content": "c"}] * 51,
            },
        ),
        Hostile("size-body-session-id", "POST", "/rag/query", 422, json={"session_id": "x" * 129, "query": "q"}),
        Hostile("size-cursor", "GET", "/sessions", 422, params={"cursor": "x" * 513}),
        Hostile("size-path-id", "GET", "/sessions/" + "a" * 3000, 404),
        _upload(413, "size-upload-file", files=[_file("a.txt", b"x" * 3000)]),
        _upload(413, "size-upload-count", files=[_file(f"{i}.txt", b"x") for i in range(3)]),
        _upload(413, "size-upload-total", files=[_file("a.txt", b"x" * 80_000)]),
        # -- nesting and numbers ---------------------------------------------------------------------------
        Hostile("nest-metadata-17", "POST", "/sessions", 422, json={"name": "x", "metadata": _deep(17)}),
        Hostile(
            "nest-metadata-3000",
            "POST",
            "/sessions",
            422,
            content=b'{"name":"x","metadata":{"a":' + b"[" * 3000 + b"]" * 3000 + b"}}",
            headers=J,
        ),
        Hostile(
            "nest-event-data-17",
            "POST",
            "/sessions/{active}/events",
            422,
            json={"event_type": "X", "event_data": _deep(17)},
        ),
        Hostile("nest-patch-metadata-17", "PATCH", "/sessions/{active}", 422, json={"metadata": _deep(17)}),
        Hostile("nest-top-level-array", "POST", "/sessions", 422, json=[{"name": "x"}]),
        Hostile("nest-top-level-null", "POST", "/sessions", 422, content=b"null", headers=J),
        Hostile("nest-top-level-string", "POST", "/sessions", 422, content=b'"name"', headers=J),
        Hostile("number-huge-int", "POST", "/sessions", 422, json={"name": "x", "start_state": 10**30}),
        Hostile("number-1e400", "POST", "/sessions", 422, content=b'{"name":"x","start_state":1e400}', headers=J),
        Hostile("number-nan", "POST", "/sessions", 422, content=b'{"name":"x","metadata":{"a":NaN}}', headers=J),
        Hostile(
            "number-infinity",
            "POST",
            "/sessions/{active}/events",
            422,
            content=b'{"event_type":"X","event_data":{"a":-Infinity}}',
            headers=J,
        ),
        # -- invalid UTF-8 ---------------------------------------------------------------------------------
        Hostile("utf8-body", "POST", "/sessions", 400, content=b'{"name":"\xff\xfe"}', headers=J),
        Hostile("utf8-body-utf16", "POST", "/sessions", 400, content='{"name":"x"}'.encode("utf-16"), headers=J),
        Hostile("utf8-lone-surrogate", "POST", "/sessions", 400, content=b'{"name":"a\\ud800"}', headers=J),
        Hostile("utf8-query", "GET", "/sessions?category=%FF%FE", 400),
        Hostile("utf8-query-events", "GET", "/sessions/{active}/events?cursor=%C3%28", 400),
        Hostile("utf8-path", "GET", "/sessions/%FF%FE", 404),
        _upload(422, "utf8-upload-file", files=[_file("a.txt", b"\xff\xfe\xfd")]),
        # -- NUL -------------------------------------------------------------------------------------------
        Hostile("nul-json-name", "POST", "/sessions", 422, json={"name": "a\x00b"}),
        Hostile("nul-json-metadata-key", "POST", "/sessions", 422, json={"name": "x", "metadata": {"a\x00": 1}}),
        Hostile("nul-json-metadata-value", "PATCH", "/sessions/{active}", 422, json={"metadata": {"a": ["\x00"]}}),
        Hostile("nul-json-event-type", "POST", "/sessions/{active}/events", 422, json={"event_type": "X\x00"}),
        Hostile("nul-json-rag-query", "POST", "/rag/query", 422, json={"session_id": "{active}", "query": "light\x00"}),
        Hostile("nul-json-session-id", "POST", "/rag/query", 422, json={"session_id": "{active}\x00", "query": "q"}),
        Hostile("nul-raw-byte-in-json", "POST", "/sessions", 400, content=b'{"name":"a\x00b"}', headers=J),
        Hostile("nul-query-category", "GET", "/sessions", 422, params={"category": "a\x00b"}),
        Hostile("nul-query-user-id", "GET", "/sessions", 422, params={"user_id": "u-teacher\x00"}, role="admin"),
        Hostile("nul-query-cursor", "GET", "/sessions/{active}/events", 422, params={"cursor": "\x00"}),
        Hostile("nul-path", "GET", "/sessions/a%00b", 404),
        Hostile("nul-path-events", "POST", "/sessions/{active}%00/events", 404, json={"event_type": "X"}),
        _upload(422, "nul-upload-file", files=[_file("a.txt", b"a\x00b")]),
        _upload(422, "nul-upload-field", data={"embedding_model": "m\x00"}),
        _upload(422, "nul-upload-session-id", data={"session_id": "{active}\x00"}),
        Hostile("nul-library-escaped", "GET", "/documents/markdown/notes%5Cu0000.md", 404),
        # -- forged and tampered cursors --------------------------------------------------------------------
        Hostile("cursor-junk", "GET", "/sessions", 400, params={"cursor": "abc"}),
        Hostile("cursor-empty", "GET", "/sessions", 400, params={"cursor": ""}),
        Hostile("cursor-dot", "GET", "/sessions", 400, params={"cursor": "."}),
        Hostile("cursor-non-ascii", "GET", "/sessions", 400, params={"cursor": "é.é"}),
        Hostile("cursor-bad-base64", "GET", "/sessions", 400, params={"cursor": "!!!.0123456789abcdef01234567"}),
        Hostile(
            "cursor-other-secret", "GET", "/sessions", 400, params={"cursor": encode_cursor([2**40, "x"], "other")}
        ),
        Hostile("cursor-events-on-sessions", "GET", "/sessions", 400, params={"cursor": encode_cursor([5], SECRET)}),
        Hostile(
            "cursor-sessions-on-events",
            "GET",
            "/sessions/{active}/events",
            400,
            params={"cursor": encode_cursor([1, "x"], SECRET)},
        ),
        Hostile("cursor-signed-bool", "GET", "/sessions", 400, params={"cursor": encode_cursor([True, "x"], SECRET)}),
        Hostile(
            "cursor-signed-string-int", "GET", "/sessions", 400, params={"cursor": encode_cursor(["1", "x"], SECRET)}
        ),
        Hostile("cursor-signed-float", "GET", "/sessions", 400, params={"cursor": encode_cursor([1.5, "x"], SECRET)}),
        Hostile(
            "cursor-signed-huge-int", "GET", "/sessions", 400, params={"cursor": encode_cursor([10**30, "x"], SECRET)}
        ),
        Hostile(
            "cursor-signed-huge-event-id",
            "GET",
            "/sessions/{active}/events",
            400,
            params={"cursor": encode_cursor([2**63], SECRET)},
        ),
        Hostile("cursor-signed-object", "GET", "/sessions", 400, params={"cursor": _signed(b'{"a":1}')}),
        Hostile("cursor-signed-not-json", "GET", "/sessions", 400, params={"cursor": _signed(b"\xff\x00garbage")}),
        # -- unknown fields --------------------------------------------------------------------------------
        *[
            Hostile(f"unknown-body-field-{method}-{path}", method, path, 422, json={**body, "zzz": 1}, role=role)
            for method, path, body, role in BODY_ROUTES
        ],
        Hostile(
            "unknown-nested-rag-settings", "POST", "/sessions", 422, json={"name": "x", "rag_settings": {"zzz": 1}}
        ),
        Hostile(
            "unknown-nested-history-turn",
            "POST",
            "/rag/query",
            422,
            json={
                "session_id": "{active}",
                "query": "q",
                "conversation_history": [{"role": "user", "content": "c", "zzz": 1}],
            },
        ),
        Hostile("unknown-query-list", "GET", "/sessions", 422, params={"zzz": "1"}),
        Hostile("unknown-query-get", "GET", "/sessions/{active}", 422, params={"zzz": "1"}),
        Hostile("unknown-query-events", "GET", "/sessions/{active}/events", 422, params={"zzz": "1"}),
        Hostile("unknown-query-duplicate", "GET", "/sessions?limit=1&limit=2", 422),
        Hostile(
            "unknown-reserved-metadata-key",
            "POST",
            "/sessions",
            422,
            json={"name": "x", "metadata": {"counters": {"query_count": 99}}},
        ),
        Hostile(
            "unknown-service-event-type", "POST", "/sessions/{active}/events", 422, json={"event_type": "SESSION_ENDED"}
        ),
        _upload(422, "unknown-form-field", data={"zzz": "1"}),
        _upload(422, "unknown-file-part-name", files=[("other", ("a.txt", b"hello", "text/plain"))]),
        # -- negative, huge and mistyped numbers -------------------------------------------------------------
        *[
            Hostile(f"limit-sessions-{v!r}", "GET", "/sessions", 422, params={"limit": v})
            for v in ("-1", "0", "10001", str(10**30), "1e3", "abc", "", "0x10")
        ],
        *[
            Hostile(f"limit-events-{v!r}", "GET", "/sessions/{active}/events", 422, params={"limit": v})
            for v in ("-1", "0", "10001", str(10**30), "NaN")
        ],
        *[
            Hostile(f"limit-time-filter-{k}", "GET", "/sessions", 422, params={k: v})
            for k, v in (
                ("started_after", "-1"),
                ("started_before", str(10**30)),
                ("ended_after", "x"),
                ("ended_before", "1.5"),
            )
        ],
        *[
            Hostile(f"limit-count-{v!r}", "POST", "/sessions/{active}/generate-questions", 422, json={"count": v})
            for v in (0, 21, -1, 10**30, "5", True, 2.5, None)
        ],
        Hostile("limit-top-k-0", "POST", "/rag/query", 422, json={"session_id": "{active}", "query": "q", "top_k": 0}),
        Hostile(
            "limit-top-k-51", "POST", "/rag/query", 422, json={"session_id": "{active}", "query": "q", "top_k": 51}
        ),
        Hostile(
            "limit-min-score",
            "POST",
            "/rag/query",
            422,
            json={"session_id": "{active}", "query": "q", "min_score": 1.5},
        ),
        Hostile(
            "limit-min-score-bool",
            "POST",
            "/rag/query",
            422,
            json={"session_id": "{active}", "query": "q", "min_score": False},
        ),
        Hostile(
            "limit-max-tokens",
            "POST",
            "/rag/query",
            422,
            json={"session_id": "{active}", "query": "q", "max_tokens": 8193},
        ),
        Hostile(
            "limit-chain-type",
            "POST",
            "/rag/query",
            422,
            json={"session_id": "{active}", "query": "q", "chain_type": "x" * 49},
        ),
        Hostile("limit-start-state", "POST", "/sessions", 422, json={"name": "x", "start_state": 9}),
        Hostile("limit-start-state-string", "POST", "/sessions", 422, json={"name": "x", "start_state": "3"}),
        Hostile("limit-end-state", "POST", "/sessions/{active}/end", 422, json={"end_state": -1}),
        Hostile("limit-event-state", "POST", "/sessions/{active}/events", 422, json={"state": 9}),
        Hostile(
            "limit-reprocess-overlap",
            "POST",
            "/sessions/{active}/reprocess",
            422,
            json={"chunk_size": 100, "chunk_overlap": 100},
        ),
        Hostile("limit-cleanup-negative", "POST", "/admin/cleanup", 422, json={"keep_newest": -1}, role="admin"),
        _upload(422, "limit-upload-chunk-size", data={"chunk_size": str(10**30)}),
        _upload(422, "limit-upload-overlap", data={"chunk_size": "100", "chunk_overlap": "100"}),
        _upload(422, "limit-upload-strategy", data={"chunk_strategy": "'; DROP TABLE x; --"}),
        # -- wrong content types ---------------------------------------------------------------------------
        *[
            Hostile(
                f"ctype-json-route-{ctype}",
                "POST",
                "/sessions",
                415,
                content=b'{"name":"x"}',
                headers={"content-type": ctype},
            )
            for ctype in (
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=B",
                "application/xml",
                "application/jsonx",
            )
        ],
        Hostile("ctype-upload-json", "POST", UPLOAD, 415, json={"session_id": "{active}"}),
        Hostile("ctype-upload-text", "POST", UPLOAD, 415, content=b"hello", headers={"content-type": "text/plain"}),
        _upload(415, "ctype-upload-png", files=[_file("a.png", b"\x89PNG\r\n", "image/png")]),
        _upload(
            415, "ctype-upload-octet-stream-no-suffix", files=[_file("a.bin", b"hello", "application/octet-stream")]
        ),
        Hostile(
            "ctype-upload-no-boundary",
            "POST",
            UPLOAD,
            400,
            content=b"--B\r\n",
            headers={"content-type": "multipart/form-data"},
        ),
        Hostile(
            "ctype-upload-garbage",
            "POST",
            UPLOAD,
            (400, 422),
            content=b"--B\r\ngarbage",
            headers={"content-type": "multipart/form-data; boundary=B"},
        ),
        # -- methods and credentials -----------------------------------------------------------------------
        Hostile("method-put-sessions", "PUT", "/sessions", 405, json={"name": "x"}),
        Hostile("method-delete-list", "DELETE", "/sessions", 405),
        Hostile("method-post-profile", "POST", "/profile", 405),
        Hostile("auth-missing", "GET", "/sessions", 401, role="anon"),
        Hostile("auth-basic", "GET", "/sessions", 401, headers={"authorization": "Basic dXNlcjpwYXNz"}, role="anon"),
        Hostile("auth-bearer-no-token", "GET", "/sessions", 401, headers={"authorization": "Bearer"}, role="anon"),
        Hostile(
            "auth-unknown-token", "GET", "/sessions", 401, headers={"authorization": "Bearer not-a-token"}, role="anon"
        ),
        Hostile(
            "auth-huge-token", "GET", "/sessions", 401, headers={"authorization": "Bearer " + "t" * 5000}, role="anon"
        ),
        Hostile(
            "auth-sql-token", "GET", "/sessions", 401, headers={"authorization": "Bearer ' OR 1=1 --"}, role="anon"
        ),
        Hostile("auth-control-char", "GET", "/sessions", 401, headers={"authorization": "Bearer a\tb"}, role="anon"),
    ]
    # -- SQL metacharacters in every path and body session id, and in the typed filters ----------------------
    for i, payload in enumerate(SQL):
        for method, path, body in PATH_ROUTES:
            cases.append(
                Hostile(
                    f"sql-path-{i}-{method}-{path}",
                    method,
                    path.replace("{sid}", quote(payload, safe="")),
                    404,
                    json=body,
                )
            )
        cases.append(
            Hostile(f"sql-body-session-id-{i}", "POST", "/rag/query", 404, json={"session_id": payload, "query": "q"})
        )
        cases.append(_upload(404, f"sql-upload-session-id-{i}", data={"session_id": payload}))
        cases.append(Hostile(f"sql-filter-status-{i}", "GET", "/sessions", 422, params={"status": payload}))
        cases.append(Hostile(f"sql-filter-limit-{i}", "GET", "/sessions", 422, params={"limit": payload}))
        cases.append(
            Hostile(f"sql-filter-started-after-{i}", "GET", "/sessions", 422, params={"started_after": payload})
        )
        cases.append(Hostile(f"sql-filter-include-{i}", "GET", "/sessions/{active}", 422, params={"include": payload}))
        cases.append(Hostile(f"sql-filter-cursor-{i}", "GET", "/sessions", 400, params={"cursor": payload}))
        cases.append(Hostile(f"sql-filter-user-id-teacher-{i}", "GET", "/sessions", 403, params={"user_id": payload}))
        cases.append(
            Hostile(f"sql-event-type-{i}", "POST", "/sessions/{active}/events", 422, json={"event_type": payload})
        )
    return cases


CASES = _cases()


def _fill(value: Any, seeded: Seeded) -> Any:
    if isinstance(value, str):
        return value.replace("{active}", seeded.t1_active).replace("{ended}", seeded.t1_ended)
    if isinstance(value, dict):
        return {k: _fill(v, seeded) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, seeded) for v in value]
    return value


def _sent(case: Hostile, seeded: Seeded) -> list[str]:
    out: list[str] = [*SQL, seeded.t1_active]
    for value in (case.json, case.params, case.data):
        if isinstance(value, dict):
            out += [str(v) for v in _fill(value, seeded).values()]
            if isinstance(case.json, dict):
                out += [str(v) for v in case.json.get("metadata", {}) or {}]
    return out


def send(client: httpx.Client, case: Hostile, seeded: Seeded) -> httpx.Response:
    headers = {**({} if case.role == "anon" else auth(case.role)), **case.headers}
    kwargs: dict[str, Any] = {"headers": headers, "params": _fill(case.params, seeded)}
    if case.json is not None:
        body = json.dumps(_fill(case.json, seeded)).encode()
        kwargs["content"] = (body[i : i + 1000] for i in range(0, len(body), 1000)) if case.chunked else body
        headers.setdefault("content-type", "application/json")
    elif case.content is not None:
        kwargs["content"] = case.content
    if case.files is not None or case.data is not None:
        kwargs["data"] = _fill(case.data, seeded)
        kwargs["files"] = case.files
    return client.request(case.method, _fill(case.path, seeded), **kwargs)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_cleanly(
    case: Hostile, client: httpx.Client, seeded: Seeded, hostile_gw: Gateway
) -> None:
    before = dump_db(hostile_gw.db_path)
    resp = send(client, case, seeded)
    assert_error(resp, case.expect, sent=_sent(case, seeded))
    assert dump_db(hostile_gw.db_path) == before, f"{case.id} changed the database"


# Every route with a path parameter, with a valid body: a NUL in the parameter names no row (no stored key holds
# one: every write refuses them), so the answer is the one an unknown key gets. PostgreSQL's text cannot even hold
# a NUL: the engine must answer without sending it (asyncpg's CharacterNotInRepertoireError would be a 500).
NUL_PATHS = [
    ("GET", "/sessions/{active}%00", None),
    ("PATCH", "/sessions/{active}%00", {"name": "renamed"}),
    ("POST", "/sessions/{active}%00/events", {"event_type": "X"}),
    ("GET", "/sessions/{active}%00/events", None),
    ("POST", "/sessions/{active}%00/end", {"end_state": 1}),
    ("PATCH", "/sessions/{active}%00/status", {"status": "inactive"}),
    ("DELETE", "/sessions/{active}%00", None),
    ("POST", "/sessions/{active}%00/generate-questions", {}),
    ("POST", "/sessions/{active}%00/reprocess", {}),
    ("GET", "/sessions/{active}%00/chunks", None),
    ("GET", "/sessions/{active}%00/rag-settings", None),
    ("PATCH", "/sessions/{active}%00/rag-settings", {"top_k": 3}),
    ("GET", "/documents/markdown/notes%00.md", None),
    ("DELETE", "/documents/markdown/notes%00.md", None),
    ("GET", "/documents/process-and-store-batch/status/job%00", None),
]


def test_every_route_with_a_path_parameter_covers_nul() -> None:
    routes = {(ep.method, ep.path) for ep in all_endpoints() if "{" in ep.path and not ep.path.startswith("/api/")}
    covered = {(method, re.sub(r"\{active\}%00|notes%00\.md|job%00", "{}", path)) for method, path, _ in NUL_PATHS}
    assert covered == {(method, re.sub(r"\{\w+\}", "{}", path)) for method, path in routes}


@pytest.mark.parametrize(("method", "path", "body"), NUL_PATHS, ids=[f"{m} {p}" for m, p, _ in NUL_PATHS])
def test_nul_in_a_path_parameter_is_an_unknown_key(
    method: str, path: str, body: Any, client: httpx.Client, seeded: Seeded, hostile_gw: Gateway
) -> None:
    before = dump_db(hostile_gw.db_path)
    unknown = client.request(method, _fill(path.replace("%00", "x"), seeded), json=body, headers=auth("teacher"))
    resp = client.request(method, _fill(path, seeded), json=body, headers=auth("teacher"))
    assert unknown.status_code == 404, unknown.text  # the lookup itself is reached: the body is valid
    assert_error(resp, 404)
    assert resp.json()["error"]["code"] == unknown.json()["error"]["code"]
    assert dump_db(hostile_gw.db_path) == before


def test_nul_escaped_in_batch_file_names_is_an_unknown_file(
    client: httpx.Client, seeded: Seeded, hostile_gw: Gateway
) -> None:
    """A JSON-escaped NUL inside the batch's ``markdown_files`` names no library file (as an unknown name does)."""
    before = dump_db(hostile_gw.db_path)
    answers = []
    for names in ('["notesx.md"]', '["notes\\u0000.md"]'):
        fields = {"session_id": seeded.t1_active, "markdown_files": names}
        resp = client.post(
            "/documents/process-and-store-batch",
            files=[(k, (None, v.encode())) for k, v in fields.items()],
            headers=auth("teacher"),
        )
        answers.append(assert_error(resp, (404, 422))["error"]["code"])
    assert answers[0] == answers[1]
    assert dump_db(hostile_gw.db_path) == before


@pytest.mark.parametrize("payload", SQL)
def test_sql_metacharacters_in_text_filters_match_nothing(
    payload: str, client: httpx.Client, seeded: Seeded, hostile_gw: Gateway
) -> None:
    """category and user_id are compared for equality through bound parameters: no wildcard, no injection."""
    before = dump_db(hostile_gw.db_path)
    everything = client.get("/sessions", params={"limit": 500}, headers=auth("admin")).json()
    assert any(s["category"] == "seed" for s in everything)  # the filter has something it could wrongly match
    for params, role in (
        ({"category": payload}, "teacher"),
        ({"category": payload}, "admin"),
        ({"user_id": payload}, "admin"),
        ({"category": payload}, "student"),
    ):
        resp = client.get("/sessions", params=params, headers=auth(role))
        assert resp.status_code == 200, resp.text
        assert resp.json() == [], (params, role)
    assert dump_db(hostile_gw.db_path) == before


def test_sql_metacharacters_are_stored_as_data(client: httpx.Client) -> None:
    """Accepted values holding SQL and JSON-path syntax are stored verbatim and match only themselves."""
    odd = "' OR 1=1 --"
    sid = create_session(
        client,
        "teacher2",
        category=odd,
        description='"; DROP TABLE sessions; --',
        metadata={"$.counters": 1, "a'b": 'c"d', "x%_": ["'", '"']},
    )
    got = client.get(f"/sessions/{sid}", headers=auth("teacher2")).json()
    assert got["category"] == odd and got["description"] == '"; DROP TABLE sessions; --'
    assert got["metadata"] == {"$.counters": 1, "a'b": 'c"d', "x%_": ["'", '"']}
    assert got["query_count"] == 0
    page = client.get("/sessions", params={"category": odd}, headers=auth("admin")).json()
    assert [s["session_id"] for s in page] == [sid]
    patched = client.patch(
        f"/sessions/{sid}",
        json={"name": "n'); DELETE FROM sessions; --", "metadata": {"a'b": None}},
        headers=auth("teacher2"),
    )
    assert patched.status_code == 200 and patched.json()["name"] == "n'); DELETE FROM sessions; --"
    assert "a'b" not in patched.json()["metadata"]


def test_tampered_real_cursor_is_refused(client: httpx.Client, seeded: Seeded, hostile_gw: Gateway) -> None:
    cursor = client.get("/sessions", params={"limit": 1}, headers=auth("admin")).headers["x-next-cursor"]
    assert (
        cursor
        and client.get("/sessions", params={"limit": 1, "cursor": cursor}, headers=auth("admin")).status_code == 200
    )
    payload, _, sig = cursor.partition(".")
    forged = [
        ("payload-char", payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + sig),
        ("signature-char", payload + "." + sig[:-1] + ("0" if sig[-1] != "0" else "1")),
        ("signature-truncated", payload + "." + sig[:-2]),
        ("signature-missing", payload),
        ("signature-upper", payload + "." + sig.upper() if sig.upper() != sig else payload + ".X" + sig[1:]),
        ("payload-padding", payload + "==." + sig),
        ("swapped", sig + "." + payload),
        ("doubled", cursor + "." + sig),
    ]
    before = dump_db(hostile_gw.db_path)
    for name, bad in forged:
        resp = client.get("/sessions", params={"cursor": bad}, headers=auth("admin"))
        body = assert_error(resp, 400, sent=[bad])
        assert body["error"]["message"] == "invalid cursor", name
    events = client.get(f"/sessions/{seeded.t1_active}/events", params={"limit": 1}, headers=auth("teacher")).json()
    ev_cursor = events["next_cursor"]
    assert ev_cursor
    assert_error(client.get("/sessions", params={"cursor": ev_cursor}, headers=auth("admin")), 400)
    assert_error(
        client.get(f"/sessions/{seeded.t1_active}/events", params={"cursor": cursor}, headers=auth("teacher")), 400
    )
    assert dump_db(hostile_gw.db_path) == before


def test_request_id_header_is_sanitised(client: httpx.Client) -> None:
    for bad in ("a b", "x" * 200, "<script>", "a;b"):
        resp = client.get("/health", headers={"X-Request-ID": bad})
        assert resp.status_code == 200 and resp.headers["x-request-id"] != bad
    assert client.get("/health", headers={"X-Request-ID": "ok-id.1:2"}).headers["x-request-id"] == "ok-id.1:2"


# -- malformed HTTP framing, on raw sockets ------------------------------------------------------------------------
RAW = [
    ("content-length-negative", b"POST /sessions HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    ("content-length-text", b"POST /sessions HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", 400),
    (
        "content-length-twice",
        b"POST /sessions HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\n{}",
        400,
    ),
    (
        "content-length-and-chunked",
        b"POST /sessions HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "declared-huge-body",
        b"POST /sessions HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer dev-teacher-token\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{}",
        413,
    ),
    (
        "nul-in-raw-path",
        b"GET /sessions/a\x00b HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer dev-teacher-token\r\n\r\n",
        400,
    ),
    (
        "non-utf8-raw-path",
        b"GET /sessions/a\xffb HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer dev-teacher-token\r\n\r\n",
        400,
    ),
    ("non-ascii-token", b"GET /sessions HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer \xff\xfe\r\n\r\n", 401),
    (
        "sql-in-raw-path",
        b"GET /sessions/'%20OR%201=1%20-- HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer dev-teacher-token\r\n\r\n",
        404,
    ),
]


@pytest.mark.parametrize(("name", "raw", "status"), RAW, ids=[r[0] for r in RAW])
def test_malformed_framing_is_refused(name: str, raw: bytes, status: int, hostile_gw: Gateway) -> None:
    before = dump_db(hostile_gw.db_path)
    with socket.create_connection(("127.0.0.1", hostile_gw.server.port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    assert_no_leak(data.decode("latin-1"), sent=["' OR 1=1 --"])
    assert dump_db(hostile_gw.db_path) == before
