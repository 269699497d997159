"""Every RAG endpoint end to end against the real reference downstream (a real uvicorn server; the gateway
runs in-process).

The gateway's shared client runs over a recording transport wrapped around the real one, so each test can
check exactly what reached the downstream (settings precedence, request id) and, where a test needs it, make
single requests fail (partial upload failure).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.downstream import Downstream
from service.downstream.client import build_transport
from service.rag.precedence import QUERY_KEYS
from support.inprocess import AppGatewayFactory, InProcessServer
from support.servers import ServerThread, auth, gateway_settings
from support.session_view import counters_of

pytestmark = pytest.mark.engines

DOC = """# Photosynthesis

Photosynthesis converts light energy into chemical energy stored in glucose.

Chlorophyll in the chloroplasts absorbs mostly blue and red light.

The Calvin cycle fixes carbon dioxide into sugars using ATP and NADPH.
"""
NOTES = "Plants need water and carbon dioxide. Stomata open and close to let gases through the leaf surface."
DEFAULTS = {
    "top_k": 5,
    "use_rerank": False,
    "min_score": 0.0,
    "max_context_chars": 4000,
    "model": "default",
    "chain_type": "stuff",
    "embedding_model": "default",
    "use_direct_llm": False,
    "provider": None,
    "embedding_provider": None,
    "use_reranker_service": False,
    "reranker_type": None,
    "min_score_threshold": None,
}
COUNTERS_ZERO = {"document_count": 0, "total_chunks": 0, "query_count": 0, "questions_generated": 0}
Fail = Callable[[httpx.Request], httpx.Response | None]


class Recorder(httpx.AsyncBaseTransport):
    """Passes every request to the real transport, keeping a copy; ``fail`` may answer one instead."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[httpx.Request] = []
        self.fail: Fail | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if self.fail is not None:
            answer = self.fail(request)
            if answer is not None:
                return answer
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def sent(self, path: str) -> list[httpx.Request]:
        return [r for r in self.seen if r.url.path == path]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.sent(path)]


@dataclass
class Gateway:
    server: InProcessServer
    downstream: Downstream
    recorder: Recorder


@pytest.fixture
async def gw(make_app_gateway: AppGatewayFactory, tmp_path: Path, devstack: ServerThread) -> Gateway:
    settings = gateway_settings(tmp_path, devstack.url)
    # building a transport loads CA certificates from disk: off the loop, as the app's lifespan does
    recorder = Recorder(await asyncio.to_thread(build_transport, settings))
    downstream = Downstream(settings, transport=recorder)
    return Gateway(await make_app_gateway(downstream=downstream), downstream, recorder)


@pytest.fixture
def gateway(gw: Gateway) -> InProcessServer:
    """Overrides the shared fixture: ``client`` talks to the recorded gateway."""
    return gw.server


# -- helpers -------------------------------------------------------------------------------------------------------
async def new_session(client: httpx.AsyncClient, role: str = "teacher", **extra: Any) -> str:
    r = await client.post("/sessions", json={"name": "Biology", **extra}, headers=auth(role))
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


async def upload(
    client: httpx.AsyncClient,
    sid: str | None,
    *docs: tuple[str, str | bytes, str],
    role: str = "teacher",
    path: str = "/api/documents/process-and-store",
    **fields: str,
) -> httpx.Response:
    data = {"chunk_size": "200", "chunk_overlap": "20", "chunk_strategy": "paragraph", **fields}
    if sid is not None:
        data["session_id"] = sid
    files = [("files", (name, text.encode() if isinstance(text, str) else text, ctype)) for name, text, ctype in docs]
    return await client.post(path, data=data, files=files, headers=auth(role))


async def session(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.get(f"/sessions/{sid}?include=events", headers=auth("admin"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def events(client: httpx.AsyncClient, sid: str, event_type: str | None = None) -> list[dict[str, Any]]:
    found = (await session(client, sid))["events"]
    return [e for e in found if event_type is None or e["event_type"] == event_type]


async def query(client: httpx.AsyncClient, sid: str, role: str = "teacher", prefix: str = "", **body: Any) -> Any:
    return await client.post(
        prefix + "/rag/query",
        json={"session_id": sid, "query": "What does chlorophyll absorb?", **body},
        headers=auth(role),
    )


# -- the whole surface, at both paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "/api"])
async def test_every_endpoint_with_counters_and_events(client: httpx.AsyncClient, gw: Gateway, prefix: str) -> None:
    upload_path = "/api/documents/process-and-store" if prefix else "/documents/process-and-store"
    sid = await new_session(client)
    assert counters_of(await session(client, sid)) == COUNTERS_ZERO

    # upload: two files, counters and a DOCUMENTS_PROCESSED event with per-file results
    r = await upload(
        client, sid, ("bio.md", DOC, "text/markdown"), ("notes.txt", NOTES, "text/plain"), path=upload_path
    )
    assert r.status_code == 200, r.text
    up = r.json()
    assert up["succeeded"] == 2 and up["failed"] == 0
    assert [f["filename"] for f in up["files"]] == ["bio.md", "notes.txt"]
    assert all(f["success"] and f["chunks_processed"] > 0 and f["error"] is None for f in up["files"])
    assert up["files"][0]["bytes"] == len(DOC.encode())
    chunks = sum(f["chunks_processed"] for f in up["files"])
    assert up["chunks_processed"] == chunks and up["document_count"] == 2 and up["total_chunks"] == chunks
    s = await session(client, sid)
    assert counters_of(s) == {**COUNTERS_ZERO, "document_count": 2, "total_chunks": chunks}
    (processed,) = [e for e in s["events"] if e["event_type"] == "DOCUMENTS_PROCESSED"]
    data = processed["event_data"]
    assert [(f["filename"], f["success"], f["chunks_processed"]) for f in data["files"]] == [
        (f["filename"], True, f["chunks_processed"]) for f in up["files"]
    ]
    assert data["chunk_size"] == 200 and data["chunk_overlap"] == 20 and data["chunk_strategy"] == "paragraph"
    sent = gw.recorder.bodies("/process-and-store")
    assert {b["metadata"]["filename"] for b in sent} == {"bio.md", "notes.txt"}
    assert all(b["collection_name"] == f"session_{sid}" and b["metadata"]["session_id"] == sid for b in sent)

    # query
    r = await query(client, sid, prefix=prefix)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["session_id"] == sid and "chlorophyll" in answer["answer"].lower()
    assert answer["sources"] and all("chunk_text" in src for src in answer["sources"])
    assert answer["settings_used"] == DEFAULTS and answer["chain_type"] == "stuff" and answer["latency_ms"] >= 0
    s = await session(client, sid)
    assert s["query_count"] == 1
    (rag_query,) = [e for e in s["events"] if e["event_type"] == "RAG_QUERY"]
    assert rag_query["event_data"]["source_count"] == len(answer["sources"])
    assert rag_query["event_data"]["latency_ms"] >= 0
    assert rag_query["event_data"]["query"] == "What does chlorophyll absorb?"

    # questions
    r = await client.post(f"{prefix}/sessions/{sid}/generate-questions", json={"count": 3}, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    q = r.json()
    assert 1 <= q["count"] == len(q["questions"]) <= 3
    assert all(isinstance(x, str) and x.strip() for x in q["questions"])
    assert q["context_chunks"] == chunks and q["context_chars"] > 0 and q["model_used"]
    s = await session(client, sid)
    assert s["questions_generated"] == q["count"]
    (generated,) = [e for e in s["events"] if e["event_type"] == "QUESTIONS_GENERATED"]
    assert generated["event_data"]["requested"] == 3 and generated["event_data"]["returned"] == q["count"]
    (prompt,) = gw.recorder.bodies("/models/generate")
    assert "Chlorophyll" in prompt["prompt"] and prompt["max_tokens"] == 128 * 3

    # reprocess: total_chunks replaced, document_count kept
    r = await client.post(
        f"{prefix}/sessions/{sid}/reprocess", json={"chunk_size": 60, "chunk_overlap": 10}, headers=auth("teacher")
    )
    assert r.status_code == 200, r.text
    re_ = r.json()
    assert re_["success"] is True and re_["chunks_processed"] > chunks
    assert re_["total_chunks"] == re_["chunks_processed"]
    s = await session(client, sid)
    assert s["total_chunks"] == re_["chunks_processed"] and s["document_count"] == 2
    (reprocessed,) = [e for e in s["events"] if e["event_type"] == "DOCUMENTS_REPROCESSED"]
    assert reprocessed["event_data"]["chunk_size"] == 60
    assert reprocessed["event_data"]["chunks_processed"] == re_["chunks_processed"]
    assert gw.recorder.bodies(f"/sessions/{sid}/reprocess") == [
        {"chunk_size": 60, "chunk_overlap": 10, "embedding_model": "default"}
    ]

    # rag-settings
    r = await client.get(f"{prefix}/sessions/{sid}/rag-settings", headers=auth("teacher"))
    embed = {"embedding_model": "default"}  # recorded by the upload: the session had none
    assert r.status_code == 200 and r.json() == {"session_id": sid, "rag_settings": embed, "effective": DEFAULTS}
    r = await client.patch(f"{prefix}/sessions/{sid}/rag-settings", json={"top_k": 3}, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "success": True,
        "session_id": sid,
        "rag_settings": {**embed, "top_k": 3},
        "effective": {**DEFAULTS, "top_k": 3},
    }
    assert len(await events(client, sid, "RAG_SETTINGS_UPDATED")) == 1

    # profile and downstream health
    r = await client.get(f"{prefix}/profile", headers=auth("teacher"))
    assert r.status_code == 200 and r.json()["id"] == "u-teacher" and r.json()["role_name"] == "teacher"
    r = await client.get(f"{prefix}/health/services")
    assert r.status_code == 200 and r.json()["status"] == "ok"

    types = [e["event_type"] for e in await events(client, sid)]
    assert types == [
        "SESSION_STARTED",
        "DOCUMENTS_PROCESSED",
        "RAG_QUERY",
        "QUESTIONS_GENERATED",
        "DOCUMENTS_REPROCESSED",
        "RAG_SETTINGS_UPDATED",
    ]


# -- roles ------------------------------------------------------------------------------------------------------
async def test_roles(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    assert (await upload(client, sid, ("bio.md", DOC, "text/markdown"))).status_code == 200
    reprocess_body = {"chunk_size": 100, "chunk_overlap": 10}

    # student: query and questions on an ACTIVE session; read settings; nothing that changes the session
    assert (await query(client, sid, role="student")).status_code == 200
    r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 2}, headers=auth("student"))
    assert r.status_code == 200, r.text
    assert (await client.get(f"/sessions/{sid}/rag-settings", headers=auth("student"))).status_code == 200
    r = await upload(client, sid, ("x.md", DOC, "text/markdown"), role="student")
    assert r.status_code == 403, r.text
    r = await client.post(f"/sessions/{sid}/reprocess", json=reprocess_body, headers=auth("student"))
    assert r.status_code == 403
    r = await client.patch(f"/sessions/{sid}/rag-settings", json={"top_k": 2}, headers=auth("student"))
    assert r.status_code == 403
    assert (await client.get("/profile", headers=auth("student"))).json()["role_name"] == "student"

    # another teacher: the session does not exist for them
    assert (await query(client, sid, role="teacher2")).status_code == 404
    r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 2}, headers=auth("teacher2"))
    assert r.status_code == 404
    assert (await upload(client, sid, ("x.md", DOC, "text/markdown"), role="teacher2")).status_code == 404
    r = await client.post(f"/sessions/{sid}/reprocess", json=reprocess_body, headers=auth("teacher2"))
    assert r.status_code == 404
    assert (await client.get(f"/sessions/{sid}/rag-settings", headers=auth("teacher2"))).status_code == 404
    r = await client.patch(f"/sessions/{sid}/rag-settings", json={"top_k": 2}, headers=auth("teacher2"))
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"

    # admin: everything
    assert (await query(client, sid, role="admin")).status_code == 200
    assert (await upload(client, sid, ("n.txt", NOTES, "text/plain"), role="admin")).status_code == 200
    r = await client.post(f"/sessions/{sid}/reprocess", json=reprocess_body, headers=auth("admin"))
    assert r.status_code == 200
    r = await client.patch(f"/sessions/{sid}/rag-settings", json={"top_k": 2}, headers=auth("admin"))
    assert r.status_code == 200

    # no token, bad token
    assert (await client.post("/rag/query", json={"session_id": sid, "query": "x"})).status_code == 401
    r = await client.get("/profile", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401

    s = await session(client, sid)
    assert s["query_count"] == 2 and s["document_count"] == 2
    assert len([e for e in s["events"] if e["event_type"] == "RAG_QUERY"]) == 2

    # a student cannot see an ended session at all
    r = await client.post(f"/sessions/{sid}/end", json={"status": "COMPLETED", "end_state": 1}, headers=auth("teacher"))
    assert r.status_code == 200
    assert (await query(client, sid, role="student")).status_code == 404


async def test_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    assert (await query(client, "does-not-exist")).status_code == 404
    assert (await upload(client, "does-not-exist", ("a.md", DOC, "text/markdown"))).status_code == 404
    for role in ("teacher", "admin", "student"):
        r = await client.post("/sessions/nope/generate-questions", json={}, headers=auth(role))
        assert r.status_code == 404


# -- settings precedence ----------------------------------------------------------------------------------------
async def test_query_settings_precedence(client: httpx.AsyncClient, gw: Gateway) -> None:
    stored = {"top_k": 2, "use_rerank": True, "min_score": 0.05, "model": "session-model", "chain_type": "refine"}
    sid = await new_session(client, rag_settings=stored)
    assert (await upload(client, sid, ("bio.md", DOC, "text/markdown"), ("n.txt", NOTES, "text/plain"))).is_success

    async def check(body: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
        r = await query(client, sid, query="chlorophyll light carbon plants", **body)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        assert answer["settings_used"] == expected
        reached = gw.recorder.bodies("/query")[-1]
        assert {k: reached[k] for k in QUERY_KEYS} == {k: expected[k] for k in QUERY_KEYS}
        assert reached["session_id"] == sid and reached["collection_name"] == f"session_{sid}"
        assert answer["chain_type"] == expected["chain_type"]  # echoed by the downstream
        assert len(answer["sources"]) <= expected["top_k"]
        event = (await events(client, sid, "RAG_QUERY"))[-1]["event_data"]
        assert event["settings"] == expected and event["source_count"] == len(answer["sources"])
        return reached

    # nothing sent: the session's settings, else the defaults
    reached = await check({}, {**DEFAULTS, **stored})
    assert reached["max_tokens"] == 512 and reached["conversation_history"] == []
    # sent values win (falsy ones too); an explicit null and every field not sent keep the stored value
    reached = await check(
        {
            "top_k": 1,
            "use_rerank": False,
            "min_score": 0.0,
            "model": None,
            "max_tokens": 64,
            "conversation_history": [{"role": "user", "content": "hi"}],
        },
        {**DEFAULTS, **stored, "top_k": 1, "use_rerank": False, "min_score": 0.0},
    )
    assert reached["max_tokens"] == 64 and reached["conversation_history"] == [{"role": "user", "content": "hi"}]
    await check(
        {"chain_type": "map_reduce", "max_context_chars": 500},
        {**DEFAULTS, **stored, "chain_type": "map_reduce", "max_context_chars": 500},
    )
    # a min_score no chunk reaches: proves the value got to the downstream's retrieval
    r = await query(client, sid, min_score=1.0)
    assert r.json()["sources"] == [] and r.json()["settings_used"]["min_score"] == 1.0

    # PATCH: merge, null removes; the next query sees the result
    r = await client.patch(
        f"/sessions/{sid}/rag-settings", json={"top_k": 4, "chain_type": None}, headers=auth("teacher")
    )
    assert r.status_code == 200, r.text
    # the upload recorded the embedding model it used, the session having none
    new_stored = {
        "top_k": 4,
        "use_rerank": True,
        "min_score": 0.05,
        "model": "session-model",
        "embedding_model": "default",
    }
    assert r.json()["rag_settings"] == new_stored
    assert r.json()["effective"] == {**DEFAULTS, **new_stored}
    await check({}, {**DEFAULTS, **new_stored})
    assert (await session(client, sid))["query_count"] == 5


@pytest.fixture
async def custom_defaults(make_app_gateway: AppGatewayFactory) -> InProcessServer:
    return await make_app_gateway(rag_default_top_k=1, rag_default_chain_type="refine", rag_default_model="svc-model")


async def test_query_without_stored_settings_uses_service_defaults(custom_defaults: InProcessServer) -> None:
    async with custom_defaults.client(timeout=30) as client:
        sid = await new_session(client)
        assert (await upload(client, sid, ("bio.md", DOC, "text/markdown"))).is_success
        r = await query(client, sid)
        used = r.json()["settings_used"]
        assert used == {**DEFAULTS, "top_k": 1, "chain_type": "refine", "model": "svc-model"}
        assert len(r.json()["sources"]) == 1 and r.json()["chain_type"] == "refine"


async def test_embedding_model_precedence_for_upload_and_reprocess(client: httpx.AsyncClient, gw: Gateway) -> None:
    sid = await new_session(client, rag_settings={"embedding_model": "session-embed"})
    assert (await upload(client, sid, ("a.md", DOC, "text/markdown"))).is_success
    assert (await upload(client, sid, ("b.md", NOTES, "text/markdown"), embedding_model="form-embed")).is_success
    assert [b["embedding_model"] for b in gw.recorder.bodies("/process-and-store")] == ["session-embed", "form-embed"]
    r = await client.post(f"/sessions/{sid}/reprocess", json={}, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    r = await client.post(f"/sessions/{sid}/reprocess", json={"embedding_model": "re-embed"}, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    sent = gw.recorder.bodies(f"/sessions/{sid}/reprocess")
    assert [b["embedding_model"] for b in sent] == ["session-embed", "re-embed"]
    assert sent[0]["chunk_size"] == 1000 and sent[0]["chunk_overlap"] == 200
    (first, second) = await events(client, sid, "DOCUMENTS_PROCESSED")
    assert first["event_data"]["embedding_model"] == "session-embed"
    assert second["event_data"]["embedding_model"] == "form-embed"

    other = await new_session(client)
    assert (await upload(client, other, ("a.md", DOC, "text/markdown"))).is_success
    assert gw.recorder.bodies("/process-and-store")[-1]["embedding_model"] == "default"
    # the session had none: the one used is now stored; one already stored is kept
    assert (await session(client, other))["rag_settings"] == {"embedding_model": "default"}
    assert (await session(client, sid))["rag_settings"] == {"embedding_model": "session-embed"}


# -- rag-settings ------------------------------------------------------------------------------------------------
async def test_rag_settings_patch_merges_and_null_removes(client: httpx.AsyncClient) -> None:
    sid = await new_session(client, rag_settings={"top_k": 3, "model": "m1"})
    url = f"/api/sessions/{sid}/rag-settings"
    r = await client.get(url, headers=auth("teacher"))
    assert r.json()["rag_settings"] == {"top_k": 3, "model": "m1"}
    assert r.json()["effective"] == {**DEFAULTS, "top_k": 3, "model": "m1"}

    r = await client.patch(url, json={"use_rerank": False, "min_score": 0.2}, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    assert r.json()["rag_settings"] == {"top_k": 3, "model": "m1", "use_rerank": False, "min_score": 0.2}
    r = await client.patch(url, json={"model": None, "top_k": 7}, headers=auth("teacher"))
    assert r.json()["rag_settings"] == {"top_k": 7, "use_rerank": False, "min_score": 0.2}
    r = await client.patch(url, json={"embedding_model": None}, headers=auth("teacher"))  # absent key: no-op
    assert r.status_code == 200 and r.json()["rag_settings"] == {"top_k": 7, "use_rerank": False, "min_score": 0.2}
    assert (await client.get(url, headers=auth("teacher"))).json()["rag_settings"] == r.json()["rag_settings"]
    assert (await session(client, sid))["rag_settings"] == r.json()["rag_settings"]

    updates = await events(client, sid, "RAG_SETTINGS_UPDATED")
    assert [e["event_data"]["changes"] for e in updates] == [
        {"use_rerank": False, "min_score": 0.2},
        {"model": None, "top_k": 7},
        {"embedding_model": None},
    ]

    for bad in ({}, {"top_k": 0}, {"top_k": 51}, {"min_score": 2}, {"colour": "red"}, {"model": ""}):
        r = await client.patch(url, json=bad, headers=auth("teacher"))
        assert r.status_code == 422, (bad, r.text)
    r = await client.patch(url, content=b"{not json", headers={**auth("teacher"), "content-type": "application/json"})
    assert r.status_code == 400
    assert len(await events(client, sid, "RAG_SETTINGS_UPDATED")) == 3


# -- questions and reprocess details ---------------------------------------------------------------------------
async def test_generate_questions_bounds(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 3}, headers=auth("teacher"))
    assert r.status_code == 409  # nothing processed yet
    assert (await upload(client, sid, ("bio.md", DOC, "text/markdown"))).is_success
    for bad in ({"count": 0}, {"count": 21}, {"count": "x"}, {"number": 3}):
        r = await client.post(f"/sessions/{sid}/generate-questions", json=bad, headers=auth("teacher"))
        assert r.status_code == 422, bad
    r = await client.post(f"/sessions/{sid}/generate-questions", headers=auth("teacher"))  # default count
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["count"] <= 5
    r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 20}, headers=auth("teacher"))
    assert r.status_code == 200 and 1 <= r.json()["count"] <= 20
    total = sum(e["event_data"]["returned"] for e in await events(client, sid, "QUESTIONS_GENERATED"))
    assert (await session(client, sid))["questions_generated"] == total


async def test_reprocess_validation(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    for bad in ({"chunk_size": 100, "chunk_overlap": 100}, {"chunk_size": 10}, {"chunk_overlap": -1}, {"x": 1}):
        r = await client.post(f"/sessions/{sid}/reprocess", json=bad, headers=auth("teacher"))
        assert r.status_code == 422, bad
    assert await events(client, sid, "DOCUMENTS_REPROCESSED") == []


# -- non-ACTIVE sessions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["COMPLETED", "CANCELLED", "FAULTED"])
async def test_ended_session_refuses_rag_actions(client: httpx.AsyncClient, gw: Gateway, status: str) -> None:
    sid = await new_session(client)
    assert (await upload(client, sid, ("bio.md", DOC, "text/markdown"))).is_success
    r = await client.post(f"/sessions/{sid}/end", json={"status": status, "end_state": 2}, headers=auth("teacher"))
    assert r.status_code == 200
    before = await session(client, sid)
    calls = len(gw.recorder.seen)
    for role in ("teacher", "admin"):
        assert (await query(client, sid, role=role)).status_code == 409
        r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 2}, headers=auth(role))
        assert r.status_code == 409
        r = await upload(client, sid, ("n.txt", NOTES, "text/plain"), role=role)
        assert r.status_code == 409, r.text
        r = await client.post(f"/sessions/{sid}/reprocess", json={}, headers=auth(role))
        assert r.status_code == 409
        assert r.json()["error"]["details"]["status"] == status.lower()  # as the API renders it
    after = await session(client, sid)
    assert counters_of(after) == counters_of(before) and len(after["events"]) == len(before["events"])
    downstream_calls = [r.url.path for r in gw.recorder.seen[calls:]]
    assert all(path == "/users/me" for path in downstream_calls), downstream_calls


# -- upload limits ----------------------------------------------------------------------------------------------
@pytest.fixture
async def small_gateway(make_app_gateway: AppGatewayFactory) -> InProcessServer:
    return await make_app_gateway(max_upload_bytes=1000, max_upload_files=3)


@pytest.fixture
async def small(small_gateway: InProcessServer) -> AsyncIterator[httpx.AsyncClient]:
    async with small_gateway.client(timeout=30) as c:
        yield c


async def test_upload_limits(small: httpx.AsyncClient) -> None:
    sid = await new_session(small)
    ok = ("ok.md", "Chlorophyll absorbs light.", "text/markdown")

    r = await upload(small, sid, ok, ("big.txt", "x" * 1001, "text/plain"))
    assert r.status_code == 413, r.text
    assert r.json()["error"]["details"]["filename"] == "big.txt"
    assert (await upload(small, sid, ("edge.txt", "x" * 1000, "text/plain"))).status_code == 200  # exactly at

    r = await upload(small, sid, *[(f"f{n}.md", "Some text.", "text/markdown") for n in range(4)])
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"

    wrong = (("doc.pdf", "application/pdf"), ("img.png", "image/png"), ("x.bin", "application/octet-stream"))
    for name, ctype in wrong:
        r = await upload(small, sid, ok, (name, "text", ctype))
        assert r.status_code == 415, (name, r.text)
    r = await upload(small, sid, ("notes.md", "Plain words here.", "application/octet-stream"))
    assert r.status_code == 200, r.text  # octet-stream with a text suffix is accepted

    r = await upload(small, sid, ok, ("bad.txt", b"caf\xe9 \xff\xfe", "text/plain"))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]["filename"] == "bad.txt"
    assert (await upload(small, sid, ("nul.txt", b"a\x00b", "text/plain"))).status_code == 422
    assert (await upload(small, sid, ("empty.txt", b"  \n", "text/plain"))).status_code == 422

    r = await upload(small, None, ok)
    assert r.status_code == 422, r.text
    assert any(d["loc"] == ["session_id"] for d in r.json()["error"]["details"])
    r = await small.post("/api/documents/process-and-store", data={"session_id": sid}, headers=auth("teacher"))
    assert r.status_code in (415, 422)  # no parts at all: not even multipart
    r = await small.post(
        "/api/documents/process-and-store",
        data={"session_id": sid},
        files=[("other", ("a.md", b"text", "text/markdown"))],
        headers=auth("teacher"),
    )
    assert r.status_code == 422
    r = await small.post("/api/documents/process-and-store", json={"session_id": sid}, headers=auth("teacher"))
    assert r.status_code == 415
    r = await upload(small, sid, ok, chunk_size="100", chunk_overlap="100")
    assert r.status_code == 422
    r = await upload(small, sid, ok, chunk_strategy="semantic chunks!")
    assert r.status_code == 422

    s = await session(small, sid)
    assert s["document_count"] == 2  # only the two accepted uploads
    assert len([e for e in s["events"] if e["event_type"] == "DOCUMENTS_PROCESSED"]) == 2


# -- partial failure of an upload ---------------------------------------------------------------------------------
async def test_partial_upload_failure_counts_only_successes(client: httpx.AsyncClient, gw: Gateway) -> None:
    sid = await new_session(client)

    def fail(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != "/process-and-store":
            return None
        name = json.loads(request.content)["metadata"]["filename"]
        if name == "error.md":
            return httpx.Response(500, json={"detail": "boom"})
        if name == "garbled.md":
            return httpx.Response(200, content=b'{"success": tr', headers={"content-type": "application/json"})
        if name == "unconfirmed.md":
            return httpx.Response(200, json={"success": False, "chunks_processed": 0})
        if name == "unreachable.md":
            raise httpx.ConnectError("connection refused")
        return None

    gw.recorder.fail = fail
    names = ["ok.md", "error.md", "garbled.md", "unconfirmed.md", "unreachable.md", "ok2.txt"]
    r = await upload(client, sid, *[(n, DOC if n.startswith("ok") else NOTES, "text/markdown") for n in names])
    assert r.status_code == 200, r.text
    body = r.json()
    by_name = {f["filename"]: f for f in body["files"]}
    assert [f["filename"] for f in body["files"]] == names
    assert body["succeeded"] == 2 and body["failed"] == 4
    assert by_name["error.md"]["error"]["status"] == 502
    assert by_name["garbled.md"]["error"]["status"] == 502
    assert by_name["unconfirmed.md"]["error"]["status"] == 502
    assert by_name["unreachable.md"]["error"]["status"] == 503
    assert all(not by_name[n]["success"] and by_name[n]["chunks_processed"] == 0 for n in names[1:5])
    good = by_name["ok.md"]["chunks_processed"] + by_name["ok2.txt"]["chunks_processed"]
    assert good > 0 and body["chunks_processed"] == good
    assert body["document_count"] == 2 and body["total_chunks"] == good
    s = await session(client, sid)
    assert counters_of(s) == {**COUNTERS_ZERO, "document_count": 2, "total_chunks": good}
    (event,) = [e for e in s["events"] if e["event_type"] == "DOCUMENTS_PROCESSED"]
    assert [(f["filename"], f["success"]) for f in event["event_data"]["files"]] == [
        (n, n.startswith("ok")) for n in names
    ]
    # a connect failure is retried (the request never left), a sent POST is not
    attempts = [json.loads(x.content)["metadata"]["filename"] for x in gw.recorder.sent("/process-and-store")]
    assert attempts.count("unreachable.md") == 3 and attempts.count("error.md") == 1
    assert gw.downstream.pool_stats()["in_use"] == 0


async def test_upload_where_every_file_fails_changes_nothing(
    client: httpx.AsyncClient, devstack: ServerThread, reset_devstack: None
) -> None:
    sid = await new_session(client)
    async with httpx.AsyncClient(base_url=devstack.url) as control:
        r = await control.post("/_control", json={"fault": "error500", "fault_paths": ["/process-and-store"]})
        assert r.status_code == 200
    r = await upload(client, sid, ("a.md", DOC, "text/markdown"), ("b.md", NOTES, "text/markdown"))
    assert r.status_code == 502, r.text
    files = r.json()["error"]["details"]["files"]
    assert [(f["filename"], f["success"], f["error"]["status"]) for f in files] == [
        ("a.md", False, 502),
        ("b.md", False, 502),
    ]
    s = await session(client, sid)
    assert counters_of(s) == COUNTERS_ZERO
    assert [e["event_type"] for e in s["events"]] == ["SESSION_STARTED"]


# -- request id ------------------------------------------------------------------------------------------------------
async def test_request_id_generated_propagated_and_echoed(
    client: httpx.AsyncClient, gw: Gateway, devstack: ServerThread, reset_devstack: None
) -> None:
    sid = await new_session(client)
    assert (await upload(client, sid, ("bio.md", DOC, "text/markdown"))).is_success

    r = await client.post(
        "/rag/query",
        json={"session_id": sid, "query": "light"},
        headers={**auth("teacher"), "X-Request-ID": "rid-rag-e2e-1"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "rid-rag-e2e-1"
    assert gw.recorder.sent("/query")[-1].headers["x-request-id"] == "rid-rag-e2e-1"
    async with httpx.AsyncClient(base_url=devstack.url) as control:
        recent = (await control.get("/_control")).json()["recent"]
    assert {"method": "POST", "path": "/query", "request_id": "rid-rag-e2e-1"} in recent

    r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 2}, headers=auth("teacher"))
    generated = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    ids = {x.headers["x-request-id"] for x in gw.recorder.seen[-2:]}
    assert [x.url.path for x in gw.recorder.seen[-2:]] == [f"/sessions/{sid}/chunks", "/models/generate"]
    assert ids == {generated}

    r = await client.post(
        "/rag/query",
        json={"session_id": sid, "query": "light"},
        headers={**auth("teacher"), "X-Request-ID": "bad id with spaces"},
    )
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert gw.recorder.sent("/query")[-1].headers["x-request-id"] == r.headers["x-request-id"]

    # errors carry it too, and the first lookup of a token goes to the auth service with it
    r = await client.post(
        "/rag/query",
        json={"session_id": "nope", "query": "x"},
        headers={"Authorization": "Bearer dev:student:rid-user", "X-Request-ID": "rid-auth-1"},
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "rid-auth-1"
    assert gw.recorder.sent("/users/me")[-1].headers["x-request-id"] == "rid-auth-1"


# -- profile and downstream health -------------------------------------------------------------------------------
async def test_profile_every_role(client: httpx.AsyncClient) -> None:
    expected = {"admin": "u-admin", "teacher": "u-teacher", "teacher2": "u-teacher2", "student": "u-student"}
    for role, user_id in expected.items():
        for path in ("/profile", "/api/profile"):
            r = await client.get(path, headers=auth(role))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["id"] == user_id and body["email"].endswith("@devstack.local")
            assert body["role_name"] == ("teacher" if role == "teacher2" else role)
    assert (await client.get("/profile")).status_code == 401


async def test_services_health(client: httpx.AsyncClient, devstack: ServerThread, reset_devstack: None) -> None:
    r = await client.get("/health/services")
    assert r.status_code == 200
    body = r.json()
    assert set(body["services"]) == {"auth", "rag", "question"}
    for svc in body["services"].values():
        assert svc["status"] == "ok" and svc["url"] == devstack.url and svc["latency_ms"] >= 0

    async with httpx.AsyncClient(base_url=devstack.url) as control:
        await control.post("/_control", json={"fault": "error500", "fault_paths": ["/health"]})
    r = await client.get("/api/health/services")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert all(s["status"] == "error" and s["detail"]["status"] == 502 for s in body["services"].values())


async def test_malformed_rag_answers(client: httpx.AsyncClient, gw: Gateway) -> None:
    sid = await new_session(client)
    answers = iter(
        [
            {"answer": "Light.", "sources": [{"chunk_text": "a", "score": 0.5}, "junk", 3, None], "chain_type": "x"},
            {"answer": "No sources.", "sources": "not a list"},
            {"sources": []},
            ["not", "an", "object"],
        ]
    )

    def fake_query(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(200, json=next(answers)) if request.url.path == "/query" else None

    gw.recorder.fail = fake_query
    r = await query(client, sid)
    assert r.status_code == 200, r.text
    assert r.json()["sources"] == [{"content": "a", "chunk_text": "a", "score": 0.5, "metadata": None}]
    assert r.json()["chain_type"] == "x" and r.json()["suggestions"] == []
    r = await query(client, sid)
    assert r.status_code == 200 and r.json()["sources"] == [] and r.json()["chain_type"] == "stuff"
    assert (await query(client, sid)).status_code == 502  # no 'answer'
    assert (await query(client, sid)).status_code == 502  # not an object
    assert [e["event_data"]["source_count"] for e in await events(client, sid, "RAG_QUERY")] == [1, 0]
    assert (await session(client, sid))["query_count"] == 2


async def test_rag_answer_sources_and_suggestions_are_normalised(client: httpx.AsyncClient, gw: Gateway) -> None:
    sid = await new_session(client)
    answer = {
        "answer": "Light.",
        "sources": [
            {"content": "from content", "chunk_text": "ignored", "score": float("nan"), "metadata": "junk"},
            {"text": "from text", "score": True},
            {"chunk_text": "from chunk_text", "score": 2},
            {"score": 0.5},
        ],
        "suggestions": ["  Why?  ", 3, "", "   ", None, "x" * 600, *[f"q{i}" for i in range(20)]],
    }

    def fake_query(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != "/query":
            return None
        # NaN is not JSON, but Python's parser takes it: the gateway must not pass it on
        return httpx.Response(200, content=json.dumps(answer).encode(), headers={"content-type": "application/json"})

    gw.recorder.fail = fake_query
    r = await query(client, sid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sources"] == [
        {"content": "from content", "chunk_text": "from content", "score": 0.0, "metadata": None},
        {"content": "from text", "chunk_text": "from text", "score": 0.0, "metadata": None},
        {"content": "from chunk_text", "chunk_text": "from chunk_text", "score": 2.0, "metadata": None},
        {"content": "", "chunk_text": "", "score": 0.5, "metadata": None},
    ]
    assert body["suggestions"] == ["Why?", "x" * 500, *[f"q{i}" for i in range(8)]]
    assert isinstance(body["processing_time_ms"], int)
