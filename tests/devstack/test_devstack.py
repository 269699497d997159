"""Tests of the reference downstream (devstack): contracts, chunking, scoring and every fault mode."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from devstack import DevstackSettings, create_app
from devstack.questions import extract_context, requested_count
from devstack.text import chunk_fixed, chunk_paragraph, chunk_sentence, terms

BIO = (
    "Photosynthesis is the process by which green plants turn sunlight into chemical energy.\n\n"
    "The mitochondria is the powerhouse of the cell. Cells need energy to divide.\n\n"
    "DNA stores genetic information. Proteins are built from amino acids."
)


def make_client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://devstack")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(create_app(DevstackSettings())) as c:
        yield c


async def store(client: httpx.AsyncClient, session_id: str, text: str, **options: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "text": text,
        "metadata": {"session_id": session_id, "filename": options.pop("filename", "doc.txt")},
        "chunk_size": 1000,
        "chunk_overlap": 0,
        "chunk_strategy": "paragraph",
        "embedding_model": "test-embed",
    }
    body.update(options)
    return await client.post("/process-and-store", json=body)


async def chunk_texts(client: httpx.AsyncClient, session_id: str) -> list[str]:
    response = await client.get(f"/sessions/{session_id}/chunks")
    assert response.status_code == 200
    return [c["chunk_text"] for c in response.json()["chunks"]]


async def query(client: httpx.AsyncClient, session_id: str, text: str, **options: Any) -> dict[str, Any]:
    response = await client.post("/query", json={"session_id": session_id, "query": text, **options})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def control(client: httpx.AsyncClient, **knobs: Any) -> dict[str, Any]:
    response = await client.post("/_control", json=knobs)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# --------------------------------------------------------------------------------------------- auth


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("token", "user_id", "role"),
    [
        ("dev-admin-token", "u-admin", "admin"),
        ("dev-teacher-token", "u-teacher", "teacher"),
        ("dev-teacher2-token", "u-teacher2", "teacher"),
        ("dev-student-token", "u-student", "student"),
        ("dev:student:load_user-0042", "load_user-0042", "student"),
        ("dev:teacher:T1", "T1", "teacher"),
        ("dev:admin:" + "a" * 64, "a" * 64, "admin"),
    ],
)
async def test_users_me_tokens(client: httpx.AsyncClient, token: str, user_id: str, role: str) -> None:
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    user = response.json()
    assert user["id"] == user_id
    assert user["role_name"] == role
    assert set(user) == {
        "id",
        "username",
        "email",
        "first_name",
        "last_name",
        "role_id",
        "role_name",
        "is_active",
        "created_at",
        "updated_at",
        "last_login",
    }
    assert "@" in user["email"] and user["first_name"] and user["last_name"] and user["username"]
    assert isinstance(user["role_id"], int) and user["is_active"] is True


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic dev-admin-token",
        "Bearer nope",
        "Bearer dev:root:u1",
        "Bearer dev:student:bad/id",
        "Bearer dev:student:" + "a" * 65,
        "Bearer dev:student:",
    ],
)
async def test_users_me_rejects_bad_tokens(client: httpx.AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await client.get("/users/me", headers=headers)
    assert response.status_code == 401
    assert isinstance(response.json()["detail"], str)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    response = await client.get("/users/me", headers={"Authorization": "bearer dev-teacher-token"})
    assert response.json()["id"] == "u-teacher"


async def test_profile_changes_are_real_and_reset_restores_them(client: httpx.AsyncClient) -> None:
    teacher = {"Authorization": "Bearer dev-teacher-token"}
    changed = await client.put("/users/me", json={"first_name": "Ada", "email": "ada@example.org"}, headers=teacher)
    assert changed.status_code == 200, changed.text
    assert changed.json()["first_name"] == "Ada" and changed.json()["email"] == "ada@example.org"
    assert changed.json()["updated_at"] > changed.json()["created_at"]
    # one record per user id, whichever token names it; role and activation are not self-service
    same_user = {"Authorization": "Bearer dev:teacher:u-teacher"}
    assert (await client.get("/users/me", headers=same_user)).json()["first_name"] == "Ada"
    r = await client.put("/users/me", json={"role_name": "admin", "is_active": False}, headers=teacher)
    assert r.status_code == 200 and r.json()["role_name"] == "teacher" and r.json()["is_active"] is True
    await client.get("/users/me", headers={"Authorization": "Bearer dev-student-token"})
    taken = await client.put("/users/me", json={"username": "student"}, headers=teacher)
    assert taken.status_code == 400 and taken.json() == {"detail": "Username already taken"}
    assert (await client.put("/users/me", json={"email": "no-at-sign"}, headers=teacher)).status_code == 422
    assert (await client.put("/users/me", json={"first_name": "x"})).status_code == 401

    wrong = await client.put(
        "/users/me/password", json={"old_password": "nope", "new_password": "secret1"}, headers=teacher
    )
    assert wrong.status_code == 400 and wrong.json() == {"detail": "Incorrect current password"}
    body = {"old_password": "dev-password", "new_password": "secret1"}
    ok = await client.put("/users/me/password", json=body, headers=teacher)
    assert ok.status_code == 200 and ok.json()["success"] is True
    assert (await client.put("/users/me/password", json=body, headers=teacher)).status_code == 400  # now changed
    again = {"old_password": "secret1", "new_password": "secret2"}
    assert (await client.put("/users/me/password", json=again, headers=teacher)).status_code == 200
    short = {"old_password": "secret2", "new_password": "five5"}
    assert (await client.put("/users/me/password", json=short, headers=teacher)).status_code == 422

    assert (await client.post("/_control/reset")).status_code == 200
    assert (await client.get("/users/me", headers=teacher)).json()["first_name"] == "Dev"
    assert (await client.put("/users/me/password", json=body, headers=teacher)).status_code == 200


async def test_unknown_route_and_method_answer_json(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    wrong = await client.post("/users/me")
    assert wrong.status_code == 405 and "detail" in wrong.json()


# --------------------------------------------------------------------------------------------- chunking


def test_fixed_chunking_windows_with_overlap() -> None:
    text = "0123456789" * 3
    assert list(chunk_fixed(text, 10, 5)) == [text[0:10], text[5:15], text[10:20], text[15:25], text[20:30]]
    assert list(chunk_fixed(text, 10, 0)) == [text[0:10], text[10:20], text[20:30]]
    assert list(chunk_fixed("short", 10, 2)) == ["short"]


def test_paragraph_chunking_splits_blank_lines_and_oversized_paragraphs() -> None:
    text = "First para.\n\n  \nSecond para\nstill second.\n\n" + "x" * 25
    assert list(chunk_paragraph(text, 30, 0)) == ["First para.", "Second para\nstill second.", "x" * 25]
    assert list(chunk_paragraph(text, 20, 5)) == [
        "First para.",
        "Second para\nstill se",
        "ll second.",
        "x" * 20,
        "x" * 10,
    ]


def test_sentence_chunking_packs_whole_sentences_with_overlap() -> None:
    text = "One is here. Two is here. Three is here. Four is here."
    assert list(chunk_sentence(text, 30, 0)) == ["One is here. Two is here.", "Three is here. Four is here."]
    assert list(chunk_sentence(text, 30, 14)) == [
        "One is here. Two is here.",
        "Two is here. Three is here.",
        "Three is here. Four is here.",
    ]
    assert list(chunk_sentence("Tiny. " + "y" * 25 + ".", 12, 0)) == ["Tiny.", "y" * 12, "y" * 12, "y."]


def test_terms_drop_stopwords_and_fold_plurals() -> None:
    assert terms("The Cells are in the cell walls, it is Photosynthesis!") == ["cell", "cell", "wall", "photosynthesis"]


# --------------------------------------------------------------------------------------------- RAG store


async def test_process_and_store_then_list_chunks_with_metadata(client: httpx.AsyncClient) -> None:
    response = await store(client, "s1", BIO, filename="bio.txt", extra_ignored=None)
    assert response.status_code == 200
    assert response.json()["success"] is True
    assert response.json()["chunks_processed"] == 3
    assert response.json()["collection_name"] == "session_s1"
    chunks = (await client.get("/sessions/s1/chunks")).json()["chunks"]
    assert [c["metadata"]["chunk_index"] for c in chunks] == [0, 1, 2]
    assert all(c["metadata"]["session_id"] == "s1" for c in chunks)
    assert all(c["metadata"]["filename"] == "bio.txt" for c in chunks)
    assert chunks[1]["chunk_text"].startswith("The mitochondria")


async def test_extra_document_metadata_is_kept(client: httpx.AsyncClient) -> None:
    body = {"text": "Alpha beta.", "metadata": {"session_id": "s", "filename": "f.md", "user_id": "u-teacher"}}
    assert (await client.post("/process-and-store", json=body)).status_code == 200
    chunks = (await client.get("/sessions/s/chunks")).json()["chunks"]
    assert chunks[0]["metadata"]["user_id"] == "u-teacher"
    assert chunks[0]["metadata"]["embedding_model"] == "devstack-embed"


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (
            "fixed",
            [BIO[0:60], BIO[50:110], BIO[100:160], BIO[150:210], BIO[200:260].strip()],
        ),
        (
            "paragraph",
            [
                "Photosynthesis is the process by which green plants turn sun",
                "s turn sunlight into chemical energy.",
                "The mitochondria is the powerhouse of the cell. Cells need e",
                "lls need energy to divide.",
                "DNA stores genetic information. Proteins are built from amin",
                "from amino acids.",
            ],
        ),
        (  # what the EBARS frontend's library ingestion sends: chunked like "paragraph"
            "lightweight",
            [
                "Photosynthesis is the process by which green plants turn sun",
                "s turn sunlight into chemical energy.",
                "The mitochondria is the powerhouse of the cell. Cells need e",
                "lls need energy to divide.",
                "DNA stores genetic information. Proteins are built from amin",
                "from amino acids.",
            ],
        ),
        (
            "sentence",
            [
                "Photosynthesis is the process by which green plants turn sun",
                "s turn sunlight into chemical energy.",
                "The mitochondria is the powerhouse of the cell.",
                "Cells need energy to divide. DNA stores genetic information.",
                "Proteins are built from amino acids.",
            ],
        ),
    ],
)
async def test_chunk_strategies_over_http(client: httpx.AsyncClient, strategy: str, expected: list[str]) -> None:
    response = await store(client, "s", BIO, chunk_strategy=strategy, chunk_size=60, chunk_overlap=10)
    assert response.status_code == 200
    assert response.json()["chunks_processed"] == len(expected)
    assert await chunk_texts(client, "s") == expected


async def test_unknown_strategy_and_bad_inputs_are_422(client: httpx.AsyncClient) -> None:
    bad_strategy = await store(client, "s", BIO, chunk_strategy="semantic chunks!")
    assert bad_strategy.status_code == 422
    assert bad_strategy.json()["detail"][0]["loc"] == ["chunk_strategy"]
    overlap = await store(client, "s", BIO, chunk_size=100, chunk_overlap=100)
    assert overlap.status_code == 422
    assert "chunk_overlap" in json.dumps(overlap.json())
    assert (await store(client, "s", "")).status_code == 422
    no_session = await client.post("/process-and-store", json={"text": "x", "metadata": {"filename": "f"}})
    assert no_session.status_code == 422
    not_json = await client.post("/process-and-store", content=b"{not json")
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"
    assert (await store(client, "s", BIO, chunk_size="big")).status_code == 422
    assert await chunk_texts(client, "s") == []


async def test_size_limits() -> None:
    settings = DevstackSettings(max_document_chars=100, max_chunks_per_collection=3, max_body_bytes=4096)
    async with make_client(create_app(settings)) as c:
        assert (await store(c, "s", "x" * 101)).status_code == 413
        too_many = await store(c, "s", "a\n\nb\n\nc\n\nd")
        assert too_many.status_code == 413 and "chunks" in too_many.json()["detail"]
        assert (await store(c, "s", "a\n\nb")).status_code == 200
        assert (await store(c, "s", "c\n\nd")).status_code == 413
        assert await chunk_texts(c, "s") == ["a", "b"]
        huge = await c.post("/query", content=b'{"query": "' + b"q" * 5000 + b'"}')
        assert huge.status_code == 413


async def test_large_document_is_chunked_off_loop(client: httpx.AsyncClient) -> None:
    text = ("lorem ipsum dolor sit amet " * 10_000)[:250_000]
    response = await store(client, "big", text, chunk_strategy="fixed", chunk_size=10_000, chunk_overlap=0)
    assert response.json()["chunks_processed"] == 25


async def test_custom_collection_and_session_isolation(client: httpx.AsyncClient) -> None:
    await store(client, "a", "Shared apples grow on trees.", collection_name="course")
    await store(client, "b", "Shared apples are red fruit.", collection_name="course")
    assert await chunk_texts(client, "a") == ["Shared apples grow on trees."]
    result = await query(client, "a", "apples", collection_name="course")
    assert [s["metadata"]["session_id"] for s in result["sources"]] == ["a"]
    default = await query(client, "a", "apples")  # default collection session_a is empty
    assert default["sources"] == []
    deleted = await client.delete("/sessions/a/collection")
    assert deleted.json() == {"success": True, "deleted": 1}
    assert await chunk_texts(client, "b") == ["Shared apples are red fruit."]


async def test_chunks_of_unknown_session_is_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/sessions/unknown/chunks")
    assert response.status_code == 200 and response.json() == {"chunks": [], "total_count": 0}


async def test_delete_collection(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO)
    await store(client, "s", "Another document.\n\nWith two paragraphs.")
    response = await client.delete("/sessions/s/collection")
    assert response.status_code == 200
    assert response.json() == {"success": True, "deleted": 5}
    assert await chunk_texts(client, "s") == []
    assert (await client.delete("/sessions/s/collection")).json() == {"success": True, "deleted": 0}
    assert (await query(client, "s", "mitochondria"))["answer"] == "No relevant context found."
    reprocess = await client.post("/sessions/s/reprocess", json={"chunk_size": 100, "chunk_overlap": 0})
    assert reprocess.json()["chunks_processed"] == 0


async def test_reprocess_rechunks_stored_documents(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO, chunk_strategy="fixed", chunk_size=1000, chunk_overlap=0)
    await store(client, "other", BIO)
    assert len(await chunk_texts(client, "s")) == 1
    response = await client.post(
        "/sessions/s/reprocess", json={"chunk_size": 50, "chunk_overlap": 10, "embedding_model": "e2"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["documents"] == 1
    chunks = (await client.get("/sessions/s/chunks")).json()["chunks"]
    assert body["chunks_processed"] == len(chunks) == len(list(chunk_fixed(BIO, 50, 10)))
    assert {c["metadata"]["embedding_model"] for c in chunks} == {"e2"}
    assert len(await chunk_texts(client, "other")) == 3  # untouched
    strategy = await client.post("/sessions/s/reprocess", json={"chunk_strategy": "paragraph"})
    assert strategy.json()["chunks_processed"] == 6  # keeps size 50 / overlap 10 from the last run
    bad = await client.post("/sessions/s/reprocess", json={"chunk_size": 20, "chunk_overlap": 20})
    assert bad.status_code == 422
    assert (await client.post("/sessions/s/reprocess", json={"chunk_size": 5})).status_code == 422
    assert (await client.post("/sessions/nobody/reprocess", json={})).json()["chunks_processed"] == 0


# --------------------------------------------------------------------------------------------- RAG query


async def test_query_scores_rank_and_normalise(client: httpx.AsyncClient) -> None:
    await store(
        client,
        "s",
        "Enzymes speed up chemical reactions in the cell.\n\n"
        "Enzymes are proteins.\n\n"
        "The weather today is sunny.\n\n"
        "Chemical reactions release energy.",
    )
    result = await query(client, "s", "How do enzymes speed up chemical reactions?", top_k=10)
    scores = [s["score"] for s in result["sources"]]
    texts = [s["chunk_text"] for s in result["sources"]]
    assert texts[0] == "Enzymes speed up chemical reactions in the cell."
    assert scores[0] == 1.0
    assert scores == sorted(scores, reverse=True)
    assert all(0 < score <= 1 for score in scores)
    assert "The weather today is sunny." not in texts
    assert len(texts) == 3
    assert result["answer"].startswith("Based on the provided context: Enzymes speed up")
    assert result["chain_type"] == "stuff"


async def test_query_rare_terms_weigh_more(client: httpx.AsyncClient) -> None:
    await store(client, "s", "cell alpha\n\ncell beta\n\ncell gamma\n\nribosome delta")
    result = await query(client, "s", "cell ribosome", top_k=10)
    assert result["sources"][0]["chunk_text"] == "ribosome delta"
    assert result["sources"][0]["score"] > result["sources"][1]["score"]


async def test_query_top_k_min_score_and_context_budget(client: httpx.AsyncClient) -> None:
    paragraphs = [f"topic alpha note {i} " + "filler words " * 20 for i in range(8)]
    paragraphs.append("alpha omega together")
    await store(client, "s", "\n\n".join(paragraphs))
    limited = await query(client, "s", "alpha omega", top_k=3, max_context_chars=40, chain_type="map_reduce")
    assert len(limited["sources"]) == 3
    assert limited["sources"][0]["chunk_text"] == "alpha omega together"
    assert len(limited["answer"]) <= len("Based on the provided context: ") + 40
    assert limited["chain_type"] == "map_reduce"
    strict = await query(client, "s", "alpha omega", top_k=10, min_score=0.99)
    assert [s["chunk_text"] for s in strict["sources"]] == ["alpha omega together"]


async def test_query_rerank_prefers_focused_chunks(client: httpx.AsyncClient) -> None:
    await store(client, "s", "osmosis membrane " + "padding text " * 30 + "\n\nosmosis membrane transport")
    plain = await query(client, "s", "osmosis membrane")
    assert plain["sources"][0]["chunk_text"].startswith("osmosis membrane padding")
    assert plain["sources"][0]["score"] == plain["sources"][1]["score"] == 1.0
    reranked = await query(client, "s", "osmosis membrane", use_rerank=True)
    assert reranked["sources"][0]["chunk_text"] == "osmosis membrane transport"
    assert reranked["sources"][0]["score"] > reranked["sources"][1]["score"]


async def test_query_without_matches(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO)
    for text in ("quantum chromodynamics", "what is the"):
        result = await query(client, "s", text)
        assert result == {
            "answer": "No relevant context found.",
            "sources": [],
            "chain_type": "stuff",
            "suggestions": [],
        }
    assert (await query(client, "nobody", "energy"))["sources"] == []


OLD_PLATFORM_OPTIONS: dict[str, Any] = {
    "provider": "groq",
    "embedding_model": "nomic-embed-text",
    "embedding_provider": "ollama",
    "use_reranker_service": True,
    "reranker_type": "bge-reranker-v2-m3",
    "min_score_threshold": 0.3,
    "use_direct_llm": False,
    "aciklayici_dil": "basit",
    "cumle_uzunlugu": "kısa",
    "ornek_kullanimi": "çok",
    "benzetmeler": "az",
    "use_ebars_personalization": True,
}


async def test_query_sources_carry_content_and_suggestions(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO, filename="bio.md")
    await store(client, "s", "Energy drives every cell.", filename="cells.md")
    result = await query(client, "s", "cell energy", top_k=10)
    assert [s["content"] for s in result["sources"]] == [s["chunk_text"] for s in result["sources"]]
    assert result["sources"][0]["content"].startswith(("The mitochondria", "Energy drives"))
    files = list(dict.fromkeys(s["metadata"]["filename"] for s in result["sources"]))
    assert result["suggestions"] == [f"What else does {name} say about this?" for name in files]


async def test_query_accepts_and_records_the_old_platform_options(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO)
    await control(client, reset_counts=True)
    result = await query(client, "s", "cell energy " + "x" * 300, top_k=10, **OLD_PLATFORM_OPTIONS)
    assert result["sources"] and all(s["score"] >= 0.3 for s in result["sources"])
    (recorded,) = (await client.get("/_control")).json()["queries"]
    assert recorded == {
        "session_id": "s",
        "query": ("cell energy " + "x" * 300)[:200],
        "top_k": 10,
        "use_rerank": False,
        "min_score": 0.0,
        "max_context_chars": 4000,
        "model": None,
        "chain_type": "stuff",
        "max_tokens": 512,
        **OLD_PLATFORM_OPTIONS,
    }
    # unsent: recorded as null; a threshold above every score leaves no source
    none = await query(client, "s", "cell energy photosynthesis", min_score_threshold=1.0)
    assert none["sources"] == [] and none["suggestions"] == []
    last = (await client.get("/_control")).json()["queries"][-1]
    assert last["provider"] is None and last["aciklayici_dil"] is None and last["min_score_threshold"] == 1.0
    assert "conversation_history" not in last
    await control(client, reset_counts=True)
    assert (await client.get("/_control")).json()["queries"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_score_threshold", 1.5),
        ("use_direct_llm", "sometimes"),
        ("aciklayici_dil", "x" * 65),
        ("provider", ""),
        ("use_ebars_personalization", [True]),
    ],
)
async def test_query_rejects_bad_old_platform_options(client: httpx.AsyncClient, field: str, value: Any) -> None:
    await control(client, reset_counts=True)
    response = await client.post("/query", json={"session_id": "s", "query": "energy", field: value})
    assert response.status_code == 422
    assert (await client.get("/_control")).json()["queries"] == []


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"query": "   "}, "query"),
        ({"top_k": 0}, "top_k"),
        ({"min_score": 1.5}, "min_score"),
        ({"max_context_chars": 0}, "max_context_chars"),
        ({"chain_type": "drop table"}, "chain_type"),
        ({"conversation_history": "nope"}, "conversation_history"),
        ({"session_id": ""}, "session_id"),
        ({"use_rerank": "maybe"}, "use_rerank"),
    ],
)
async def test_query_validation(client: httpx.AsyncClient, patch: dict[str, Any], field: str) -> None:
    body = {"session_id": "s", "query": "energy", **patch}
    response = await client.post("/query", json=body)
    assert response.status_code == 422
    assert field in [part for error in response.json()["detail"] for part in error["loc"]]


async def test_query_accepts_full_gateway_body(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO)
    body = {
        "session_id": "s",
        "collection_name": "session_s",
        "query": "What is the powerhouse of the cell?",
        "top_k": 2,
        "use_rerank": True,
        "min_score": 0.1,
        "max_context_chars": 2000,
        "model": "llama3",
        "chain_type": "stuff",
        "max_tokens": 256,
        "conversation_history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    }
    response = await client.post("/query", json=body)
    assert response.status_code == 200
    assert "powerhouse" in response.json()["sources"][0]["chunk_text"]


# --------------------------------------------------------------------------------------------- questions


def parse_numbered(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    return [line.split(". ", 1)[1] for line in lines if line[:1].isdigit() and ". " in line]


async def generate(client: httpx.AsyncClient, prompt: str, **options: Any) -> dict[str, Any]:
    response = await client.post("/models/generate", json={"prompt": prompt, **options})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_generate_honours_requested_count_and_looks_like_llm_output(client: httpx.AsyncClient) -> None:
    prompt = f"You are a tutor. Generate 4 questions about the context below.\nContext: {BIO}\nQuestions:"
    result = await generate(client, prompt, model="llama3", temperature=0.0, max_tokens=2000)
    assert result["model_used"] == "llama3"
    lines = result["response"].splitlines()
    assert not lines[0][:1].isdigit() and "4 questions" in lines[0]
    questions = parse_numbered(result["response"])
    assert len(questions) == 4
    assert [line.split(".")[0] for line in lines if line[:1].isdigit()] == ["1", "2", "3", "4"]
    assert "What is the mitochondria?" in questions
    assert all("generate" not in q.lower() for q in questions)
    assert not lines[-1][:1].isdigit()


async def test_generate_is_deterministic_per_prompt_and_temperature(client: httpx.AsyncClient) -> None:
    prompt = f"Generate 6 questions.\nContext: {BIO}"
    first = await generate(client, prompt, temperature=0.7)
    again = await generate(client, prompt, temperature=0.7)
    assert first == again
    assert len(parse_numbered(first["response"])) == 6
    assert first["model_used"] == "devstack-llm"


@pytest.mark.parametrize(
    ("prompt", "count"),
    [
        ("Please generate five multiple-choice questions on: cells and energy.", 5),
        ("Create 12 short questions. Context: atoms bond into molecules.", 12),
        ("Generate 500 questions. Context: atoms.", 50),
        ("Context: atoms bond into molecules.", 5),
        ("Generate 0 questions. Context: x", 1),
    ],
)
async def test_generate_count(client: httpx.AsyncClient, prompt: str, count: int) -> None:
    assert requested_count(prompt) == count
    questions = parse_numbered((await generate(client, prompt, max_tokens=10_000))["response"])
    assert len(questions) == count
    assert len({q.lower() for q in questions}) == count


async def test_generate_truncates_at_max_tokens(client: httpx.AsyncClient) -> None:
    result = await generate(client, f"Generate 10 questions. Context: {BIO}", max_tokens=30)
    assert len(result["response"]) == 120
    assert len(parse_numbered(result["response"])) < 10


def test_extract_context_skips_instructions() -> None:
    prompt = "You are a teacher.\nGenerate 3 questions.\nCells divide by mitosis.\nFormat: numbered list"
    assert extract_context(prompt).strip() == "Cells divide by mitosis."
    marked = "Instructions: be nice\nContext:\nAtoms bond.\nQuestions:\n"
    assert extract_context(marked).strip() == "Atoms bond."


@pytest.mark.parametrize(
    "body",
    [{"prompt": ""}, {"prompt": "x", "temperature": 5}, {"prompt": "x", "max_tokens": 0}, {"model": "m"}],
)
async def test_generate_validation(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    response = await client.post("/models/generate", json=body)
    assert response.status_code == 422 and isinstance(response.json()["detail"], list)


# --------------------------------------------------------------------------------------------- settings


def test_settings_from_env() -> None:
    settings = DevstackSettings.from_env(
        {
            "DEVSTACK_HOST": "0.0.0.0",
            "DEVSTACK_PORT": "9000",
            "DEVSTACK_LATENCY_MS": "25",
            "DEVSTACK_ERROR_RATE": "0.25",
            "DEVSTACK_SEED": "42",
            "DEVSTACK_FAULT": "status_503",
            "DEVSTACK_FAULT_PATHS": "/query, /models",
        }
    )
    assert (settings.host, settings.port, settings.latency_ms, settings.error_rate) == ("0.0.0.0", 9000, 25, 0.25)
    assert (settings.seed, settings.fault, settings.fault_paths) == (42, "status_503", ("/query", "/models"))
    defaults = DevstackSettings.from_env({})
    assert (defaults.host, defaults.port, defaults.latency_ms, defaults.error_rate) == ("127.0.0.1", 8100, 0, 0)
    for bad in ({"DEVSTACK_ERROR_RATE": "2"}, {"DEVSTACK_PORT": "x"}, {"DEVSTACK_FAULT": "explode"}):
        with pytest.raises(ValueError):
            DevstackSettings.from_env(bad)


# --------------------------------------------------------------------------------------------- faults


async def test_env_latency_applies_to_all_but_health() -> None:
    async with make_client(create_app(DevstackSettings(latency_ms=150))) as c:
        started = time.perf_counter()
        await c.get("/users/me", headers={"Authorization": "Bearer dev-admin-token"})
        assert time.perf_counter() - started >= 0.15
        started = time.perf_counter()
        assert (await c.get("/health")).status_code == 200
        assert time.perf_counter() - started < 0.15


async def test_latency_query_override(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    assert (await client.get("/health?latency_ms=80")).status_code == 200
    assert time.perf_counter() - started >= 0.08


async def test_error_rate_is_seeded_and_spares_health() -> None:
    async def statuses(seed: int) -> list[int]:
        async with make_client(create_app(DevstackSettings(error_rate=0.5, seed=seed))) as c:
            assert [(await c.get("/health")).status_code for _ in range(5)] == [200] * 5
            return [(await c.get("/sessions/x/chunks")).status_code for _ in range(40)]

    first, second = await statuses(7), await statuses(7)
    assert first == second
    assert set(first) == {200, 500}


async def test_error_rate_one_and_query_overrides(client: httpx.AsyncClient) -> None:
    failed = await client.get("/sessions/x/chunks?error_rate=1")
    assert failed.status_code == 500 and failed.json() == {"detail": "injected fault: error500"}
    assert (await client.get("/sessions/x/chunks?error_rate=0")).status_code == 200
    for bad in ("latency_ms=abc", "error_rate=3", "latency_ms=-1", "fault=explode", "fault=status_200"):
        response = await client.get(f"/sessions/x/chunks?{bad}")
        assert response.status_code == 422 and "detail" in response.json()


async def test_query_override_beats_runtime_knobs(client: httpx.AsyncClient) -> None:
    await control(client, fault="error500")
    assert (await client.get("/sessions/x/chunks")).status_code == 500
    assert (await client.get("/sessions/x/chunks?fault=none")).status_code == 200
    assert (await client.get("/sessions/x/chunks?fault=status_418")).status_code == 418


@pytest.mark.parametrize("code", [429, 503, 400, 502])
async def test_status_faults(client: httpx.AsyncClient, code: int) -> None:
    await control(client, fault=f"status_{code}")
    response = await client.post("/query", json={"session_id": "s", "query": "q"})
    assert response.status_code == code
    assert response.json() == {"detail": f"injected fault: status_{code}"}
    assert ("retry-after" in response.headers) == (code in (429, 503))


async def test_error500_fault_spares_health_and_control(client: httpx.AsyncClient) -> None:
    await control(client, fault="error500")
    assert (await client.get("/users/me")).status_code == 500
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/_control")).status_code == 200


async def test_invalid_json_fault(client: httpx.AsyncClient) -> None:
    await control(client, fault="invalid_json")
    response = await client.post("/models/generate", json={"prompt": "x"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_fault_paths_restrict_faults(client: httpx.AsyncClient) -> None:
    state = await control(client, fault="error500", latency_ms=0, fault_paths=["/query"])
    assert state["fault_paths"] == ["/query"]
    assert (await client.post("/query", json={"session_id": "s", "query": "q"})).status_code == 500
    assert (await client.get("/users/me", headers={"Authorization": "Bearer dev-admin-token"})).status_code == 200
    assert (await client.get("/health")).status_code == 200
    await control(client, fault_paths=["/sessions/*/reprocess"])
    assert (await client.post("/sessions/a/reprocess", json={})).status_code == 500
    assert (await client.get("/sessions/a/chunks")).status_code == 200
    await control(client, fault_paths=["/sessions"])
    assert (await client.get("/sessions/a/chunks")).status_code == 500
    await control(client, fault_paths=["/"])
    assert (await client.get("/health")).status_code == 200  # "/" does not name health
    await control(client, fault_paths=["/health"])
    assert (await client.get("/health")).status_code == 500
    await control(client, fault_paths=None)
    assert (await client.get("/users/me")).status_code == 500
    assert (await client.get("/health")).status_code == 200


async def test_hang_fault_is_cancel_safe(client: httpx.AsyncClient) -> None:
    await control(client, fault="hang", fault_paths=["/query"])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post("/query", json={"session_id": "s", "query": "q"}), 0.2)
    state = (await client.get("/_control")).json()
    assert state["inflight"] == 0
    assert state["counts"]["/query"] == 1


async def test_hang_elapses_with_504(client: httpx.AsyncClient) -> None:
    await control(client, hang_seconds=0.1)
    started = time.perf_counter()
    response = await client.get("/users/me?fault=hang")
    assert response.status_code == 504
    assert time.perf_counter() - started >= 0.1


async def test_slow_body_fault_trickles_a_valid_body() -> None:
    app = create_app(DevstackSettings(fault="slow_body", slow_body_chunk_bytes=10, slow_body_delay_ms=20))
    async with make_client(app) as client:
        started = time.perf_counter()
        response = await client.get("/users/me", headers={"Authorization": "Bearer dev-student-token"})
        elapsed = time.perf_counter() - started
    assert response.json()["id"] == "u-student"
    pieces = -(-len(response.content) // 10)
    assert elapsed >= (pieces - 1) * 0.02
    messages = await raw_asgi(app, "/users/me", [(b"authorization", b"Bearer dev-student-token")])
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert len(bodies) == pieces + 1
    assert all(len(m["body"]) <= 10 for m in bodies) and not bodies[-1]["more_body"]


async def raw_asgi(app: Starlette, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> list[dict[str, Any]]:
    """Drive the app with raw ASGI messages and return what it sent."""
    sent: list[dict[str, Any]] = []
    path_only, _, query_string = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query_string.encode(),
        "headers": headers or [],
        "server": ("devstack", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    return sent


async def test_disconnect_fault_promises_more_than_it_sends() -> None:
    app = create_app(DevstackSettings(fault="disconnect", fault_paths=("/query",)))
    assert len(await raw_asgi(app, "/health?fault=disconnect")) == 2
    messages = await raw_asgi(app, "/query")
    start, body = messages
    assert start["type"] == "http.response.start" and start["status"] == 200
    declared = int(dict(start["headers"])[b"content-length"])
    assert body["more_body"] is True and len(body["body"]) < declared


async def test_fault_from_settings_and_reset() -> None:
    app = create_app(DevstackSettings(fault="status_503", fault_paths=("/query",), seed=3))
    async with make_client(app) as c:
        assert (await c.post("/query", json={})).status_code == 503
        await control(c, fault="none", latency_ms=5, error_rate=0.5)
        reset = await c.post("/_control/reset")
        assert reset.status_code == 200
        state = reset.json()
        assert (state["fault"], state["fault_paths"], state["latency_ms"], state["error_rate"]) == (
            "status_503",
            ["/query"],
            0,
            0,
        )
        assert state["counts"] == {} and state["total"] == 0 and state["seed"] == 3


async def test_control_validation(client: httpx.AsyncClient) -> None:
    for body in (
        {"fault": "explode"},
        {"fault": "status_200"},
        {"error_rate": 1.5},
        {"latency_ms": -1},
        {"fault_paths": ["query"]},
        {"typo_knob": 1},
    ):
        response = await client.post("/_control", json=body)
        assert response.status_code == 422, body
        assert "detail" in response.json()
    assert (await client.post("/_control/reset", json={"nope": True})).status_code == 422
    state = (await client.get("/_control")).json()
    assert state["fault"] == "none" and state["error_rate"] == 0


async def test_counts_recent_request_ids_and_reset_counts(client: httpx.AsyncClient) -> None:
    headers = {"Authorization": "Bearer dev:student:u1", "X-Request-ID": "req-123"}
    responses = await asyncio.gather(*(client.get("/users/me", headers=headers) for _ in range(5)))
    assert all(r.headers["x-request-id"] == "req-123" for r in responses)
    await client.get("/health")
    await client.get("/_control")
    state = (await client.get("/_control")).json()
    assert state["counts"] == {"/users/me": 5, "/health": 1}
    assert state["total"] == 6
    assert state["recent"][0] == {"method": "GET", "path": "/users/me", "request_id": "req-123"}
    assert state["recent"][-1]["request_id"] is None
    cleared = await control(client, reset_counts=True)
    assert cleared["counts"] == {} and cleared["total"] == 0


async def test_reset_can_clear_data(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO)
    kept = await client.post("/_control/reset", json={})
    assert kept.json()["cleared_chunks"] == 0 and len(await chunk_texts(client, "s")) == 3
    cleared = await client.post("/_control/reset", json={"clear_data": True})
    assert cleared.json()["cleared_chunks"] == 3
    assert await chunk_texts(client, "s") == []


async def test_many_concurrent_clients(client: httpx.AsyncClient) -> None:
    await store(client, "s", BIO)

    async def one(i: int) -> int:
        auth = await client.get("/users/me", headers={"Authorization": f"Bearer dev:student:u{i}"})
        assert auth.json()["id"] == f"u{i}"
        result = await query(client, "s", "energy of the cell")
        return len(result["sources"])

    assert set(await asyncio.gather(*(one(i) for i in range(300)))) == {2}
    assert (await client.get("/_control")).json()["counts"]["/users/me"] == 300


# --------------------------------------------------------------------------------------------- real server


@pytest.fixture
async def live() -> AsyncIterator[str]:
    app = create_app(DevstackSettings(hang_seconds=30))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="critical",
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_live_server_disconnect_and_hang(live: str) -> None:
    async with httpx.AsyncClient(base_url=live, timeout=httpx.Timeout(0.5)) as c:
        assert (await c.get("/health")).json() == {"status": "ok"}
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post("/query?fault=disconnect", json={"session_id": "s", "query": "q"})
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/users/me?fault=hang")
        for _ in range(150):  # the hung handler notices the client went away
            if (await c.get("/_control")).json()["inflight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await c.get("/_control")).json()["inflight"] == 0
        slow = await c.get("/health?fault=slow_body")
        assert slow.json() == {"status": "ok"}
        assert (await c.get("/_control")).json()["counts"]["/users/me"] == 1


async def test_chunk_listing_is_bounded(client: httpx.AsyncClient) -> None:
    await store(client, "lim", BIO, chunk_strategy="paragraph", chunk_size=60, chunk_overlap=10)
    whole = (await client.get("/sessions/lim/chunks")).json()
    assert whole["total_count"] == len(whole["chunks"]) >= 2
    one = (await client.get("/sessions/lim/chunks", params={"limit": 1})).json()
    assert one == {"chunks": whole["chunks"][:1], "total_count": whole["total_count"]}
    for bad in ("0", "10001", "x", "-1"):
        assert (await client.get("/sessions/lim/chunks", params={"limit": bad})).status_code == 422


async def test_reprocess_source_files_only_changes_those(client: httpx.AsyncClient) -> None:
    await store(client, "sub", BIO, filename="a.md")
    await store(client, "sub", BIO, filename="b.md")
    response = await client.post("/sessions/sub/reprocess", json={"embedding_model": "e3", "source_files": ["b.md"]})
    assert response.status_code == 200
    body = response.json()
    chunks = (await client.get("/sessions/sub/chunks")).json()["chunks"]
    models = {c["metadata"]["filename"]: c["metadata"]["embedding_model"] for c in chunks}
    assert models == {"a.md": "test-embed", "b.md": "e3"}
    assert body["files"] == ["b.md"] and body["documents"] == 1
    assert body["chunks_processed"] == len([c for c in chunks if c["metadata"]["filename"] == "b.md"])
    assert body["total_chunks"] == len(chunks)
    nothing = (await client.post("/sessions/sub/reprocess", json={"source_files": ["zzz.md"]})).json()
    assert nothing["files"] == [] and nothing["chunks_processed"] == 0 and nothing["total_chunks"] == len(chunks)
