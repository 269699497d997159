"""The EBARS web frontend's document calls against the gateway: library files into a session, its chunks,
reprocessing. The form and bodies are the frontend's (``frontend/lib/api.ts`` of github.com/EngindalgaMaku/ebars),
written down as test data; only the bearer token is added. The gateway runs in-process against the real
reference downstream.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sessions_kit import create, error_of

from support.servers import auth

pytestmark = pytest.mark.engines

BIO = "# Photosynthesis\n\nChlorophyll absorbs blue and red light.\n\nThe Calvin cycle fixes CO2 into sugar.\n"
CHEM = "# Atoms\n\nAn atom has a nucleus of protons and neutrons.\n"
UPLOAD = "/api/documents/process-and-store"


def add_markdown_form(
    session_id: str, filenames: list[str], embedding_model: str = "mxbai-embed-large"
) -> dict[str, str]:
    # api.ts addMarkdownDocumentsToSession(sessionId, filenames, embeddingModel): FormData with session_id,
    # markdown_files = JSON.stringify(filenames), chunk_strategy "semantic", chunk_size "1500", chunk_overlap "150",
    # embedding_model; POST `${getApiUrl()}/documents/process-and-store`.
    return {
        "session_id": session_id,
        "markdown_files": json.dumps(filenames),
        "chunk_strategy": "semantic",
        "chunk_size": "1500",
        "chunk_overlap": "150",
        "embedding_model": embedding_model,
    }


async def library_upload(client: httpx.AsyncClient, name: str, text: str, role: str = "teacher") -> None:
    r = await client.post(
        "/api/documents/upload-markdown",
        files={"file": (name, text.encode(), "text/markdown")},
        headers=auth(role),
    )
    assert r.status_code == 200, r.text
    assert r.json()["markdown_filename"] == name


async def session_row(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.get(f"/sessions/{sid}?include=events", headers=auth("teacher"))
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def form_body(fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body of plain fields, as a browser sends a FormData without files (httpx would
    send ``data=`` alone url-encoded)."""
    boundary = "ebarsFormBoundary7MA4YWxk"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


async def post_form(client: httpx.AsyncClient, fields: dict[str, str], role: str = "teacher") -> httpx.Response:
    body, ctype = form_body(fields)
    return await client.post(UPLOAD, content=body, headers={**auth(role), "Content-Type": ctype})


async def test_add_markdown_documents_to_session(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]
    await library_upload(client, "bio.md", BIO)
    await library_upload(client, "chem.md", CHEM)
    r = await post_form(client, add_markdown_form(sid, ["bio.md", "chem.md"]))
    assert r.status_code == 200, r.text
    body = r.json()
    # what addMarkdownDocumentsToSession's callers read: success, processed_count, total_chunks_added, message
    assert body["success"] is True
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["processed_count"], int) and body["processed_count"] == 2
    assert isinstance(body["total_chunks_added"], int) and body["total_chunks_added"] >= 2
    assert body["total_chunks_added"] == body["chunks_processed"]
    assert [f["filename"] for f in body["files"]] == ["bio.md", "chem.md"]
    row = await session_row(client, sid)
    assert row["document_count"] == 2 and row["total_chunks"] == body["total_chunks_added"]
    event = [e for e in row["events"] if e["event_type"] == "DOCUMENTS_PROCESSED"][-1]
    assert event["event_data"]["chunk_strategy"] == "semantic"  # forwarded as sent: the RAG service owns chunking
    assert event["event_data"]["embedding_model"] == "mxbai-embed-large"
    # the unprefixed path the old gateway served answers the same way
    r = await client.post(
        "/documents/process-and-store",
        content=form_body(add_markdown_form(sid, ["chem.md"]))[0],
        headers={**auth("teacher"), "Content-Type": form_body({})[1]},
    )
    assert r.status_code == 200 and r.json()["processed_count"] == 1


async def test_markdown_files_validation_writes_nothing(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]
    await library_upload(client, "bio.md", BIO)
    missing = await post_form(client, add_markdown_form(sid, ["bio.md", "nope.md", "gone.md"]))
    assert error_of(missing, 404)["details"]["missing"] == ["nope.md", "gone.md"]
    for bad in ("not json", "[]", '{"a": 1}', "[1]", '[""]', '["bio.md", "bio.md"]'):
        r = await post_form(client, {**add_markdown_form(sid, []), "markdown_files": bad})
        error_of(r, 422)
    bad_strategy = await post_form(client, {**add_markdown_form(sid, ["bio.md"]), "chunk_strategy": "a b"})
    error_of(bad_strategy, 422)
    too_long = await post_form(client, {**add_markdown_form(sid, ["bio.md"]), "chunk_strategy": "x" * 33})
    error_of(too_long, 422)
    neither = {k: v for k, v in add_markdown_form(sid, []).items() if k != "markdown_files"}
    error_of(await post_form(client, neither), 422)
    both = await client.post(
        UPLOAD,
        data=add_markdown_form(sid, ["bio.md"]),
        files=[("files", ("a.md", BIO.encode(), "text/markdown"))],
        headers=auth("teacher"),
    )
    error_of(both, 422)
    row = await session_row(client, sid)
    assert row["document_count"] == 0 and row["total_chunks"] == 0
    assert not [e for e in row["events"] if e["event_type"] == "DOCUMENTS_PROCESSED"]


async def test_markdown_files_access(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]
    await library_upload(client, "bio.md", BIO)
    # another teacher's session is a 404 like a missing one, before their library is looked at
    other = await post_form(client, add_markdown_form(sid, ["bio.md"]), role="teacher2")
    error_of(other, 404)
    # another teacher's library file is not yours: a 404 naming it, on your own session
    mine = (await create(client, role="teacher2"))["session_id"]
    r = await post_form(client, add_markdown_form(mine, ["bio.md"]), role="teacher2")
    assert error_of(r, 404)["details"]["missing"] == ["bio.md"]
    error_of(await post_form(client, add_markdown_form(sid, ["bio.md"]), role="student"), 403)
    # an admin may use any owner's file in any session
    assert (await post_form(client, add_markdown_form(sid, ["bio.md"]), role="admin")).status_code == 200


async def test_get_chunks_for_session(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]
    await library_upload(client, "bio.md", BIO)
    added = (await post_form(client, add_markdown_form(sid, ["bio.md"]))).json()
    # api.ts getChunksForSession(sessionId): GET `${getApiUrl()}/sessions/${sessionId}/chunks`, reads
    # `data.chunks` (an array of Chunk: document_name, chunk_index, chunk_text, chunk_metadata?); the response
    # type SessionChunksResponse also names total_count and session_id. So the answer is an object, not an array.
    r = await client.get(f"/api/sessions/{sid}/chunks", headers=auth("student"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["session_id"] == sid
    assert isinstance(body["chunks"], list) and len(body["chunks"]) == added["total_chunks_added"]
    assert isinstance(body["total_count"], int) and body["total_count"] == len(body["chunks"])
    for i, chunk in enumerate(body["chunks"]):
        assert chunk["document_name"] == "bio.md"
        assert isinstance(chunk["chunk_index"], int) and chunk["chunk_index"] == i
        assert isinstance(chunk["chunk_text"], str) and chunk["chunk_text"] in BIO
        assert isinstance(chunk["chunk_metadata"], dict) and chunk["chunk_metadata"]["session_id"] == sid
    assert "Chlorophyll absorbs blue and red light." in [c["chunk_text"] for c in body["chunks"]]
    # the unprefixed route is the same; a session with no documents has no chunks
    assert (await client.get(f"/sessions/{sid}/chunks", headers=auth("teacher"))).json() == body
    empty = (await create(client))["session_id"]
    r = await client.get(f"/sessions/{empty}/chunks", headers=auth("teacher"))
    assert r.json() == {"session_id": empty, "chunks": [], "total_count": 0}


async def test_chunks_access(client: httpx.AsyncClient) -> None:
    sid = (await create(client))["session_id"]
    error_of(await client.get(f"/sessions/{sid}/chunks", headers=auth("teacher2")), 404)
    error_of(await client.get("/sessions/nope/chunks", headers=auth("admin")), 404)
    error_of(await client.get(f"/sessions/{sid}/chunks"), 401)
    assert (await client.get(f"/sessions/{sid}/chunks", headers=auth("admin"))).status_code == 200
    # an inactive session is hidden from students, like a missing one
    r = await client.patch(f"/sessions/{sid}/status", json={"status": "inactive"}, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    error_of(await client.get(f"/sessions/{sid}/chunks", headers=auth("student")), 404)
    assert (await client.get(f"/sessions/{sid}/chunks", headers=auth("teacher"))).status_code == 200


def reprocess_body(embedding_model: str, source_files: list[str] | None = None) -> dict[str, Any]:
    # api.ts reprocessSessionDocuments(sessionId, embeddingModel, sourceFiles?, chunkSize = 1000, chunkOverlap = 200):
    # JSON.stringify({embedding_model, source_files: sourceFiles, chunk_size, chunk_overlap}); the session page
    # calls it with (sessionId, selectedEmbeddingModel), so source_files is undefined and JSON.stringify drops it.
    body: dict[str, Any] = {"embedding_model": embedding_model, "chunk_size": 1000, "chunk_overlap": 200}
    if source_files is not None:
        body["source_files"] = source_files
    return body


def assert_reprocess_answer(body: dict[str, Any]) -> None:
    # the fields the frontend's return type names: success, message, chunks_processed, successful_files,
    # failed_files?, embedding_model
    assert body["success"] is True
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["chunks_processed"], int) and body["chunks_processed"] >= 1
    assert isinstance(body["successful_files"], list) and all(isinstance(f, str) for f in body["successful_files"])
    assert isinstance(body["failed_files"], list) and all(isinstance(f, str) for f in body["failed_files"])
    assert isinstance(body["embedding_model"], str)


async def seeded_session(client: httpx.AsyncClient) -> str:
    sid: str = (await create(client))["session_id"]
    await library_upload(client, "bio.md", BIO)
    await library_upload(client, "chem.md", CHEM)
    r = await post_form(client, add_markdown_form(sid, ["bio.md", "chem.md"]))
    assert r.status_code == 200, r.text
    return sid


async def test_reprocess_session_documents(client: httpx.AsyncClient) -> None:
    sid = await seeded_session(client)
    # the session page's call: every document
    r = await client.post(
        f"/api/sessions/{sid}/reprocess", json=reprocess_body("nomic-embed-text"), headers=auth("teacher")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert_reprocess_answer(body)
    assert body["successful_files"] == ["bio.md", "chem.md"] and body["failed_files"] == []
    assert body["embedding_model"] == "nomic-embed-text"
    chunks = (await client.get(f"/sessions/{sid}/chunks", headers=auth("teacher"))).json()
    assert body["total_chunks"] == chunks["total_count"] == body["chunks_processed"]
    assert {c["chunk_metadata"]["embedding_model"] for c in chunks["chunks"]} == {"nomic-embed-text"}
    # a subset: only that document changes, the session's total stays right
    r = await client.post(
        f"/api/sessions/{sid}/reprocess", json=reprocess_body("e5-small", ["chem.md"]), headers=auth("teacher")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert_reprocess_answer(body)
    assert body["successful_files"] == ["chem.md"] and body["failed_files"] == []
    chunks = (await client.get(f"/sessions/{sid}/chunks", headers=auth("teacher"))).json()
    models = {c["document_name"]: c["chunk_metadata"]["embedding_model"] for c in chunks["chunks"]}
    assert models == {"bio.md": "nomic-embed-text", "chem.md": "e5-small"}
    row = await session_row(client, sid)
    assert row["total_chunks"] == chunks["total_count"] == body["total_chunks"]


async def test_reprocess_validation_changes_nothing(client: httpx.AsyncClient) -> None:
    sid = await seeded_session(client)
    before = (await client.get(f"/sessions/{sid}/chunks", headers=auth("teacher"))).json()
    url = f"/api/sessions/{sid}/reprocess"
    unknown = await client.post(url, json=reprocess_body("m", ["bio.md", "nope.md"]), headers=auth("teacher"))
    assert error_of(unknown, 422)["details"]["unknown"] == ["nope.md"]
    for bad in ([], [""], ["x" * 256], "bio.md", [1]):
        r = await client.post(url, json={**reprocess_body("m"), "source_files": bad}, headers=auth("teacher"))
        error_of(r, 422)
    error_of(await client.post(url, json=reprocess_body("m", ["bio.md"]), headers=auth("teacher2")), 404)
    error_of(await client.post(url, json=reprocess_body("m", ["bio.md"]), headers=auth("student")), 403)
    after = (await client.get(f"/sessions/{sid}/chunks", headers=auth("teacher"))).json()
    assert after == before
    row = await session_row(client, sid)
    assert not [e for e in row["events"] if e["event_type"] == "DOCUMENTS_REPROCESSED"]
