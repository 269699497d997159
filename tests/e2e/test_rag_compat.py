"""The EBARS web frontend against the gateway: its exact RAG request bodies, every answer field it reads.

The bodies below are the frontend's, written down as test data (repository ``EngindalgaMaku/ebars``); each
names the file and the code that builds it. Only the bearer token is added. The gateway runs in-process against
the real reference downstream, whose ``GET /_control`` -> ``queries`` shows what reached the RAG service.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from support.servers import ServerThread, auth

pytestmark = pytest.mark.engines

DOC = """# Fotosentez

Photosynthesis converts light energy into chemical energy stored in glucose.

Chlorophyll in the chloroplasts absorbs mostly blue and red light.
"""

# frontend/app/sessions/[sessionId]/page.tsx (commit 0f5029e), the "RAG Ayarlarını Kaydet" button's onClick:
# `settingsToSave` (fixed top_k/min_score/max_context_chars, the session's use_rerank, then each selected
# model/provider), sent by saveSessionRagSettings() in frontend/lib/api.ts (PATCH /sessions/{id}/rag-settings).
FRONTEND_SAVE_SETTINGS: dict[str, Any] = {
    "top_k": 5,
    "use_rerank": False,
    "min_score": 0.5,
    "max_context_chars": 8000,
    "use_reranker_service": True,
    "model": "llama-3.1-8b-instant",
    "provider": "groq",
    "embedding_model": "nomic-embed-text",
    "embedding_provider": "ollama",
    "reranker_type": "bge-reranker-v2-m3",
}
# What page.tsx reads back from the PATCH answer's `rag_settings` (after "await saveSessionRagSettings(...)").
FRONTEND_READS_SETTINGS = (
    "provider",
    "model",
    "embedding_provider",
    "embedding_model",
    "use_reranker_service",
    "reranker_type",
)


def frontend_query(session_id: str, query: str) -> dict[str, Any]:
    """frontend/hooks/useStudentChat.ts (commit 3518989), sendMessage(): the "classic RAG payload" for ragQuery()
    (frontend/lib/api.ts, POST /rag/query), with a session whose rag_settings hold model and embedding_model,
    after one exchange (conversation_history built from the last messages)."""
    return {
        "session_id": session_id,
        "query": query,
        "top_k": 5,
        "use_rerank": False,
        "min_score": 0.5,
        "max_context_chars": 8000,
        "use_direct_llm": False,
        "max_tokens": 2048,
        "conversation_history": [
            {"role": "user", "content": "Fotosentez nedir?"},
            {"role": "assistant", "content": "Işık enerjisinin kimyasal enerjiye dönüşümü."},
        ],
        "model": "llama-3.1-8b-instant",
        "embedding_model": "nomic-embed-text",
    }


# test_quality_parameters.py (repository root, the EBARS quality-parameter client), test_cases[*]["params"],
# merged into its POST /api/rag/query payload with top_k 5, use_rerank true, min_score 0.1, max_context_chars 8000,
# max_tokens 1024.
EBARS_PARAMS: list[dict[str, Any]] = [
    {
        "aciklayici_dil": "basit",
        "cumle_uzunlugu": "kısa",
        "ornek_kullanimi": "çok",
        "benzetmeler": "çok",
        "use_ebars_personalization": True,
    },
    {
        "aciklayici_dil": "karmaşık",
        "cumle_uzunlugu": "uzun",
        "ornek_kullanimi": "az",
        "benzetmeler": "az",
        "use_ebars_personalization": True,
    },
    {
        "aciklayici_dil": "orta",
        "cumle_uzunlugu": "orta",
        "ornek_kullanimi": "orta",
        "benzetmeler": "orta",
        "use_ebars_personalization": False,
    },
]
STYLE_KEYS = ("aciklayici_dil", "cumle_uzunlugu", "ornek_kullanimi", "benzetmeler", "use_ebars_personalization")


# -- helpers -------------------------------------------------------------------------------------------------------
async def new_session(client: httpx.AsyncClient, **extra: Any) -> str:
    r = await client.post("/sessions", json={"name": "Biyoloji", **extra}, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


async def upload(client: httpx.AsyncClient, sid: str, **fields: str) -> None:
    data = {"session_id": sid, "chunk_size": "200", "chunk_overlap": "20", "chunk_strategy": "paragraph", **fields}
    files = [("files", ("fotosentez.md", DOC.encode(), "text/markdown"))]
    r = await client.post("/api/documents/process-and-store", data=data, files=files, headers=auth("teacher"))
    assert r.status_code == 200, r.text


async def stored(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.get(f"/sessions/{sid}/rag-settings", headers=auth("teacher"))
    assert r.status_code == 200, r.text
    settings: dict[str, Any] = r.json()["rag_settings"]
    return settings


async def session(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    r = await client.get(f"/sessions/{sid}?include=events", headers=auth("admin"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def arrived(devstack: ServerThread, sid: str) -> list[dict[str, Any]]:
    """The ``/query`` requests of this session that reached the reference RAG service, oldest first."""
    async with httpx.AsyncClient(base_url=devstack.url) as c:
        queries: list[dict[str, Any]] = (await c.get("/_control")).json()["queries"]
    return [q for q in queries if q["session_id"] == sid]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- point 4: rag-settings ----------------------------------------------------------------------------------------
async def test_frontend_saves_rag_settings(client: httpx.AsyncClient, devstack: ServerThread) -> None:
    sid = await new_session(client)
    r = await client.patch(f"/sessions/{sid}/rag-settings", json=FRONTEND_SAVE_SETTINGS, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    answer = r.json()
    # saveSessionRagSettings(): Promise<{ success: boolean; session_id: string; rag_settings: any }>
    assert answer["success"] is True and answer["session_id"] == sid
    assert answer["rag_settings"] == FRONTEND_SAVE_SETTINGS
    for key in FRONTEND_READS_SETTINGS:
        assert answer["rag_settings"][key] == FRONTEND_SAVE_SETTINGS[key]
    assert answer["effective"]["provider"] == "groq" and answer["effective"]["min_score_threshold"] is None
    # the page reloads the session and reads session.rag_settings
    assert (await session(client, sid))["rag_settings"] == FRONTEND_SAVE_SETTINGS

    # a student's query carries the session-only settings to the RAG service
    await upload(client, sid)
    r = await client.post("/rag/query", json=frontend_query(sid, "chlorophyll light"), headers=auth("student"))
    assert r.status_code == 200, r.text
    (reached,) = await arrived(devstack, sid)
    for key, value in FRONTEND_SAVE_SETTINGS.items():
        assert reached[key] == value, key
    assert reached["use_direct_llm"] is False and reached["min_score_threshold"] is None

    # as the old gateway: turning the reranker service off also drops the reranker type
    r = await client.patch(
        f"/sessions/{sid}/rag-settings", json={"use_reranker_service": False}, headers=auth("teacher")
    )
    assert r.status_code == 200, r.text
    assert "reranker_type" not in r.json()["rag_settings"] and r.json()["rag_settings"]["use_reranker_service"] is False
    r = await client.patch(
        f"/sessions/{sid}/rag-settings",
        json={"use_reranker_service": False, "reranker_type": "ms-marco", "min_score_threshold": 0.4},
        headers=auth("teacher"),
    )
    assert r.json()["rag_settings"]["reranker_type"] == "ms-marco"  # sent explicitly: kept
    assert r.json()["rag_settings"]["min_score_threshold"] == 0.4


async def test_upload_and_reprocess_record_the_embedding_model(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    await upload(client, sid, embedding_model="mxbai-embed-large")
    assert await stored(client, sid) == {"embedding_model": "mxbai-embed-large"}
    await upload(client, sid, embedding_model="other-embed")  # one is stored now: kept
    assert await stored(client, sid) == {"embedding_model": "mxbai-embed-large"}

    r = await client.patch(f"/sessions/{sid}/rag-settings", json={"embedding_model": None}, headers=auth("teacher"))
    assert r.json()["rag_settings"] == {}
    # frontend/lib/api.ts reprocessSessionDocuments(): {embedding_model, source_files, chunk_size, chunk_overlap};
    # source_files is not ours (undefined there, so JSON.stringify leaves it out)
    body = {"embedding_model": "re-embed", "chunk_size": 1000, "chunk_overlap": 200}
    r = await client.post(f"/sessions/{sid}/reprocess", json=body, headers=auth("teacher"))
    assert r.status_code == 200, r.text
    assert await stored(client, sid) == {"embedding_model": "re-embed"}


BAD_SETTINGS = [
    ("provider", "x" * 51),
    ("provider", ""),
    ("provider", "gr oq"),
    ("provider", 5),
    ("embedding_provider", "o" * 51),
    ("embedding_provider", ["ollama"]),
    ("use_reranker_service", "sometimes"),
    ("use_reranker_service", {"on": True}),
    ("reranker_type", "r" * 101),
    ("reranker_type", "bge reranker"),
    ("reranker_type", 1),
    ("min_score_threshold", 1.5),
    ("min_score_threshold", -0.1),
    ("min_score_threshold", "high"),
    ("use_direct_llm", "maybe"),
    ("use_direct_llm", [False]),
    ("embedding_model", "e" * 101),
    ("embedding_model", 3),
]


@pytest.mark.parametrize(("field", "value"), BAD_SETTINGS)
async def test_bad_rag_settings_are_422_and_nothing_is_stored(
    client: httpx.AsyncClient, field: str, value: Any
) -> None:
    sid = await new_session(client, rag_settings={"top_k": 3})
    body = {**FRONTEND_SAVE_SETTINGS, field: value}  # one bad field spoils the whole patch
    r = await client.patch(f"/sessions/{sid}/rag-settings", json=body, headers=auth("teacher"))
    assert r.status_code == 422, r.text
    assert field in r.text
    assert await stored(client, sid) == {"top_k": 3}
    assert not [e for e in (await session(client, sid))["events"] if e["event_type"] == "RAG_SETTINGS_UPDATED"]
    # and at creation
    r = await client.post("/sessions", json={"name": "x", "rag_settings": {field: value}}, headers=auth("teacher"))
    assert r.status_code == 422, r.text


# -- point 5: rag query ----------------------------------------------------------------------------------------------
async def test_frontend_query_gets_every_field_it_reads(client: httpx.AsyncClient, devstack: ServerThread) -> None:
    sid = await new_session(client)
    await upload(client, sid)
    body = frontend_query(sid, "What does chlorophyll absorb?")
    r = await client.post("/rag/query", json=body, headers=auth("student"))
    assert r.status_code == 200, r.text
    answer = r.json()
    # ragQuery(): Promise<{answer: string; sources: RAGSource[]; processing_time_ms?: number; suggestions?: string[]}>
    assert isinstance(answer["answer"], str) and "chlorophyll" in answer["answer"].lower()
    assert answer["sources"]
    for source in answer["sources"]:  # RAGSource: {content: string; score: number; metadata?: {filename?, ...}}
        assert isinstance(source["content"], str) and source["content"]
        assert source["chunk_text"] == source["content"]  # kept for our earlier clients
        assert is_number(source["score"]) and 0 < source["score"] <= 1
        assert source["metadata"]["filename"] == "fotosentez.md"
    assert any("Chlorophyll" in s["content"] for s in answer["sources"])
    assert is_int(answer["processing_time_ms"]) and answer["processing_time_ms"] >= 0
    assert answer["suggestions"] == ["What else does fotosentez.md say about this?"]
    # our own fields are still there
    assert answer["session_id"] == sid and answer["chain_type"] == "stuff" and answer["latency_ms"] >= 0
    assert answer["settings_used"]["embedding_model"] == "nomic-embed-text"

    (reached,) = await arrived(devstack, sid)
    for key in ("top_k", "use_rerank", "min_score", "max_context_chars", "use_direct_llm", "max_tokens", "model"):
        assert reached[key] == body[key], key
    assert reached["embedding_model"] == "nomic-embed-text"
    assert all(reached[k] is None for k in STYLE_KEYS)  # not sent: null

    # nothing matches: no sources and an empty suggestion list, never a missing one
    r = await client.post("/rag/query", json=frontend_query(sid, "quantum chromodynamics"), headers=auth("student"))
    assert r.status_code == 200, r.text
    assert r.json()["sources"] == [] and r.json()["suggestions"] == []
    assert is_int(r.json()["processing_time_ms"])


@pytest.mark.parametrize("params", EBARS_PARAMS, ids=["basit", "karmasik", "kontrol"])
async def test_ebars_answer_style_reaches_the_rag_service(
    client: httpx.AsyncClient, devstack: ServerThread, params: dict[str, Any]
) -> None:
    sid = await new_session(client)
    await upload(client, sid)
    body = {
        "session_id": sid,
        "query": "Fotosentez nedir? chlorophyll",
        "top_k": 5,
        "use_rerank": True,
        "min_score": 0.1,
        "max_context_chars": 8000,
        "max_tokens": 1024,
        **params,
    }
    r = await client.post("/api/rag/query", json=body, headers=auth("student"))
    assert r.status_code == 200, r.text
    assert is_int(r.json()["processing_time_ms"])
    (reached,) = await arrived(devstack, sid)
    assert {k: reached[k] for k in STYLE_KEYS} == params


async def test_query_overrides_use_direct_llm_and_embedding_model(
    client: httpx.AsyncClient, devstack: ServerThread
) -> None:
    sid = await new_session(client, rag_settings={"use_direct_llm": True, "embedding_model": "stored-embed"})
    ask = {"session_id": sid, "query": "chlorophyll"}
    for extra in ({}, {"use_direct_llm": False, "embedding_model": "query-embed"}, {"use_direct_llm": None}):
        r = await client.post("/rag/query", json={**ask, **extra}, headers=auth("student"))
        assert r.status_code == 200, r.text
    # an old client's explicit null history (Optional in the old RAGQueryRequest) is an empty one
    r = await client.post("/rag/query", json={**ask, "conversation_history": None}, headers=auth("student"))
    assert r.status_code == 200, r.text
    first, second, third, _ = await arrived(devstack, sid)
    assert (first["use_direct_llm"], first["embedding_model"]) == (True, "stored-embed")
    assert (second["use_direct_llm"], second["embedding_model"]) == (False, "query-embed")
    assert (third["use_direct_llm"], third["embedding_model"]) == (True, "stored-embed")  # null: not an override


BAD_QUERY_FIELDS = [
    ("use_direct_llm", "maybe"),
    ("use_direct_llm", [True]),
    ("embedding_model", "e" * 101),
    ("embedding_model", ""),
    ("embedding_model", 7),
    *((k, "x" * 33) for k in STYLE_KEYS[:4]),
    *((k, "") for k in STYLE_KEYS[:4]),
    *((k, 3) for k in STYLE_KEYS[:4]),
    ("use_ebars_personalization", "evet"),
    ("use_ebars_personalization", {"on": True}),
    # session-only settings are not query fields
    ("provider", "groq"),
    ("reranker_type", "ms-marco"),
    ("min_score_threshold", 0.4),
]


@pytest.mark.parametrize(("field", "value"), BAD_QUERY_FIELDS)
async def test_bad_query_fields_are_422_and_nothing_happens(
    client: httpx.AsyncClient, devstack: ServerThread, field: str, value: Any
) -> None:
    sid = await new_session(client)
    body = {**frontend_query(sid, "chlorophyll"), field: value}
    r = await client.post("/rag/query", json=body, headers=auth("student"))
    assert r.status_code == 422, r.text
    assert field in r.text
    assert await arrived(devstack, sid) == []
    found = await session(client, sid)
    assert found["query_count"] == 0
    assert not [e for e in found["events"] if e["event_type"] == "RAG_QUERY"]


async def test_openapi_describes_the_compat_fields(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    request = schemas["RagQueryRequest"]["properties"]
    for key in ("use_direct_llm", "embedding_model", *STYLE_KEYS):
        assert key in request, key
    answer = schemas["RagQueryResponse"]
    assert {"processing_time_ms", "suggestions"} <= set(answer["required"])
    assert answer["properties"]["processing_time_ms"]["type"] == "integer"
    assert answer["properties"]["suggestions"] == {
        **answer["properties"]["suggestions"],
        "type": "array",
        "items": {"type": "string"},
    }
    source = schemas["Source"]
    assert {"content", "score"} <= set(source["required"])
    patch = schemas["RagSettingsPatch"]["properties"]
    for key in ("provider", "embedding_provider", "use_reranker_service", "reranker_type", "min_score_threshold"):
        assert key in patch, key
    assert "success" in schemas["RagSettingsSaved"]["properties"]
