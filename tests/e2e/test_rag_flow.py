"""The RAG gateway end to end against the real reference downstream."""

from __future__ import annotations

import httpx
import pytest

from support.servers import auth
from support.session_view import counters_of

pytestmark = pytest.mark.engines

DOC = """# Photosynthesis

Photosynthesis converts light energy into chemical energy stored in glucose.

Chlorophyll in the chloroplasts absorbs mostly blue and red light.

The Calvin cycle fixes carbon dioxide into sugars using ATP and NADPH.
"""


async def _session(client: httpx.AsyncClient, **extra: object) -> str:
    r = await client.post("/sessions", json={"name": "Biology", **extra}, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


async def _upload(client: httpx.AsyncClient, sid: str, *docs: tuple[str, str, str]) -> httpx.Response:
    files = [("files", (name, text.encode(), ctype)) for name, text, ctype in docs]
    return await client.post(
        "/api/documents/process-and-store",
        data={"session_id": sid, "chunk_size": "200", "chunk_overlap": "20", "chunk_strategy": "paragraph"},
        files=files,
        headers=auth("teacher"),
    )


async def test_upload_query_generate_end(client: httpx.AsyncClient) -> None:
    sid = await _session(client)
    r = await _upload(client, sid, ("bio.md", DOC, "text/markdown"), ("notes.txt", "Plants need water.", "text/plain"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["succeeded"] == 2 and body["failed"] == 0
    assert body["document_count"] == 2 and body["total_chunks"] == body["chunks_processed"] > 0

    r = await client.post(
        "/rag/query", json={"session_id": sid, "query": "What does chlorophyll absorb?"}, headers=auth("student")
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["sources"], answer
    assert "chlorophyll" in answer["answer"].lower()

    r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 3}, headers=auth("student"))
    assert r.status_code == 200, r.text
    questions = r.json()["questions"]
    assert 1 <= len(questions) <= 3

    r = await client.get(f"/sessions/{sid}?include=events", headers=auth("teacher"))
    session = r.json()
    assert counters_of(session) == {
        "document_count": 2,
        "total_chunks": body["total_chunks"],
        "query_count": 1,
        "questions_generated": len(questions),
    }
    types = [e["event_type"] for e in session["events"]]
    assert types == ["SESSION_STARTED", "DOCUMENTS_PROCESSED", "RAG_QUERY", "QUESTIONS_GENERATED"]

    r = await client.post(f"/sessions/{sid}/end", json={"status": "COMPLETED", "end_state": 3}, headers=auth("teacher"))
    assert r.status_code == 200
    r = await client.post("/rag/query", json={"session_id": sid, "query": "x"}, headers=auth("teacher"))
    assert r.status_code == 409
