"""PATCH /sessions/{id}/rag-settings is a merge done in SQL (``json_patch``): checked here on a real file.

Sent keys replace, unsent keys stay, a null removes (and is a no-op for an absent key), nothing else in the
session's metadata moves, and concurrent PATCHes of different keys all survive.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.auth import Principal
from service.sessions.models import RagSettings, SessionCreate
from service.storage.sqlite import Database
from service.storage.sqlite.rag import SqliteRag
from service.storage.sqlite.sessions import SqliteSessions

TEACHER = Principal(id="u-teacher", role="teacher", username="teacher", profile={})
VALUES: dict[str, list[Any]] = {
    "top_k": [1, 7, 50],
    "use_rerank": [True, False],
    "min_score": [0.0, 0.25, 1.0],
    "max_context_chars": [100, 4000],
    "model": ["m1", "m2"],
    "chain_type": ["stuff", "refine"],
    "embedding_model": ["e1", "e2"],
    "use_direct_llm": [True, False],
    "provider": ["groq", "ollama"],
    "embedding_provider": ["ollama", "huggingface"],
    "use_reranker_service": [True, False],
    "reranker_type": ["bge-reranker-v2-m3", "ms-marco"],
    "min_score_threshold": [0.0, 0.4],
}
assert set(VALUES) == set(RagSettings.model_fields)  # every storable setting is exercised


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(str(tmp_path / "rag-settings.db"))
    await database.open()
    yield database
    await database.close()


async def new_session(db: Database, rag_settings: dict[str, Any]) -> str:
    body = SessionCreate(name="s", metadata={"k": 1}, rag_settings=RagSettings.model_validate(rag_settings))
    created = await SqliteSessions(db).create(TEACHER, body, max_metadata_bytes=65_536)
    return str(created["session_id"])


def stored_metadata(db: Database, session_id: str) -> dict[str, Any]:
    conn = sqlite3.connect(db.path)
    try:
        (text,) = conn.execute("SELECT metadata FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    finally:
        conn.close()
    meta: dict[str, Any] = json.loads(text)
    return meta


async def test_patches_merge_like_rfc7396_on_the_stored_settings(db: Database) -> None:
    rng = random.Random(7396)
    expected: dict[str, Any] = {"top_k": 3, "model": "m0"}
    sid = await new_session(db, expected)
    before = stored_metadata(db, sid)
    for _ in range(150):
        keys = rng.sample(sorted(VALUES), rng.randint(1, 3))
        patch = {k: None if rng.random() < 0.3 else rng.choice(VALUES[k]) for k in keys}
        got = await SqliteRag(db).patch_rag_settings(TEACHER, sid, patch)
        for key, value in patch.items():
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
        assert got == expected, patch
        assert None not in got.values()
    meta = stored_metadata(db, sid)
    assert meta["rag_settings"] == expected
    assert {k: v for k, v in meta.items() if k != "rag_settings"} == {
        k: v for k, v in before.items() if k != "rag_settings"
    }  # name, client metadata and counters untouched


async def test_concurrent_patches_of_different_keys_all_survive(db: Database) -> None:
    sid = await new_session(db, {"top_k": 3})
    patches = [{key: values[0]} for key, values in VALUES.items()]
    await asyncio.gather(*(SqliteRag(db).patch_rag_settings(TEACHER, sid, p) for p in patches))
    assert stored_metadata(db, sid)["rag_settings"] == {key: values[0] for key, values in VALUES.items()}


async def test_recording_an_action_stores_its_embedding_model_only_when_none_is(db: Database) -> None:
    sid = await new_session(db, {"top_k": 3})
    before = stored_metadata(db, sid)
    counters = await SqliteRag(db).record(
        sid, "DOCUMENTS_PROCESSED", {}, add={"document_count": 1}, embedding_model="first-embed"
    )
    assert counters["document_count"] == 1
    meta = stored_metadata(db, sid)
    assert meta["rag_settings"] == {"top_k": 3, "embedding_model": "first-embed"}
    await SqliteRag(db).record(sid, "DOCUMENTS_REPROCESSED", {}, assign={"total_chunks": 4}, embedding_model="second")
    meta = stored_metadata(db, sid)
    assert meta["rag_settings"] == {"top_k": 3, "embedding_model": "first-embed"}  # one was stored: kept
    assert meta["counters"]["total_chunks"] == 4 and meta["counters"]["document_count"] == 1
    assert {k: v for k, v in meta.items() if k not in ("rag_settings", "counters")} == {
        k: v for k, v in before.items() if k not in ("rag_settings", "counters")
    }
    # a session whose metadata has no rag_settings object at all (an imported legacy row) gets one
    conn = sqlite3.connect(db.path)
    try:
        conn.execute(
            "UPDATE sessions SET metadata = json_remove(metadata, '$.rag_settings') WHERE session_id = ?", (sid,)
        )
        conn.commit()
    finally:
        conn.close()
    await SqliteRag(db).record(sid, "DOCUMENTS_PROCESSED", {}, add={"document_count": 1}, embedding_model="legacy")
    assert stored_metadata(db, sid)["rag_settings"] == {"embedding_model": "legacy"}
