"""Which RAG setting wins: a value the request sent, else the session's stored one, else the service default."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.rag.models import Chunking, ProcessForm, RagQueryRequest, ReprocessRequest
from service.rag.precedence import QUERY_KEYS, effective, service_defaults
from service.sessions.models import QueryKnobs, RagSettings
from service.settings import Settings

DEFAULTS = service_defaults(Settings())
STORED = {"top_k": 2, "use_rerank": True, "model": "session-model", "embedding_model": "session-embed"}


def _used(body: dict[str, Any], stored: dict[str, Any] | None = None) -> dict[str, Any]:
    request = RagQueryRequest.model_validate({"session_id": "s", "query": "q", **body})
    return effective(request.model_dump(), request.model_fields_set, STORED if stored is None else stored, DEFAULTS)


def test_service_defaults_follow_settings() -> None:
    custom = Settings().replace(
        rag_default_top_k=9,
        rag_default_use_rerank=True,
        rag_default_min_score=0.25,
        rag_default_max_context_chars=1234,
        rag_default_model="m",
        rag_default_chain_type="refine",
        rag_default_embedding_model="e",
        rag_default_use_direct_llm=True,
        rag_default_use_reranker_service=True,
    )
    assert service_defaults(custom) == {
        "top_k": 9,
        "use_rerank": True,
        "min_score": 0.25,
        "max_context_chars": 1234,
        "model": "m",
        "chain_type": "refine",
        "embedding_model": "e",
        "use_direct_llm": True,
        # no service-wide choice: null, the RAG service picks
        "provider": None,
        "embedding_provider": None,
        "use_reranker_service": True,
        "reranker_type": None,
        "min_score_threshold": None,
    }
    # a default for every setting a session may store; a query overrides exactly its knobs
    assert set(service_defaults(custom)) == set(RagSettings.model_fields)
    assert set(QUERY_KEYS) == set(QueryKnobs.model_fields)


def test_nothing_sent_uses_stored_then_defaults() -> None:
    used = _used({})
    assert used == {**DEFAULTS, **STORED}


def test_sent_values_win_and_unsent_do_not_override_stored() -> None:
    used = _used({"top_k": 7, "min_score": 0.5})
    assert used["top_k"] == 7
    assert used["min_score"] == 0.5
    # not sent: the stored ones survive although the request model has defaults for every field
    assert used["use_rerank"] is True
    assert used["model"] == "session-model"
    assert used["chain_type"] == DEFAULTS["chain_type"]


def test_old_platform_knobs_follow_the_same_rules() -> None:
    stored = {**STORED, "use_direct_llm": True, "provider": "groq", "min_score_threshold": 0.4}
    # a query may override embedding_model and use_direct_llm, even with False
    used = _used({"embedding_model": "query-embed", "use_direct_llm": False}, stored)
    assert (used["embedding_model"], used["use_direct_llm"]) == ("query-embed", False)
    # session-only settings come from the session, else the defaults
    assert (used["provider"], used["min_score_threshold"]) == ("groq", 0.4)
    assert used["reranker_type"] is None and used["use_reranker_service"] is False
    assert _used({}, stored)["use_direct_llm"] is True
    # the session-only ones are not query fields at all: a query naming them is a 422
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        RagQueryRequest.model_validate({"session_id": "s", "query": "q", "provider": "groq"})


def test_falsy_sent_values_still_win() -> None:
    used = _used({"use_rerank": False, "min_score": 0.0})
    assert used["use_rerank"] is False
    assert used["min_score"] == 0.0


def test_explicit_null_falls_back_to_stored() -> None:
    assert _used({"top_k": None, "model": None})["top_k"] == 2
    assert _used({"top_k": None, "model": None})["model"] == "session-model"


def test_stored_null_and_empty_session_fall_back_to_defaults() -> None:
    assert _used({}, {"top_k": None}) == DEFAULTS
    assert _used({}, {}) == DEFAULTS


def test_keys_outside_the_defaults_are_ignored() -> None:
    used = effective({"max_tokens": 5, "query": "q"}, {"max_tokens", "query"}, {"other": 1}, DEFAULTS)
    assert used == DEFAULTS


def test_a_value_present_but_not_marked_sent_is_ignored() -> None:
    # model_dump() carries every field; only model_fields_set says what the client sent.
    assert effective({"top_k": 50}, set(), {"top_k": 3}, DEFAULTS)["top_k"] == 3


_values = st.one_of(st.none(), st.integers(1, 50), st.text(min_size=1, max_size=5), st.booleans())
_maps = st.dictionaries(st.sampled_from(sorted(DEFAULTS)), _values)


@settings(database=None, max_examples=300)
@given(sent=_maps, extra_unsent=_maps, stored=_maps)
def test_precedence_property(sent: dict[str, Any], extra_unsent: dict[str, Any], stored: dict[str, Any]) -> None:
    body = {**extra_unsent, **sent}
    used = effective(body, set(sent), stored, DEFAULTS)
    assert set(used) == set(DEFAULTS)
    for key in DEFAULTS:
        if sent.get(key) is not None:
            assert used[key] == sent[key]
        elif stored.get(key) is not None:
            assert used[key] == stored[key]
        else:
            assert used[key] == DEFAULTS[key]


@pytest.mark.parametrize("model", [ReprocessRequest, ProcessForm])
def test_chunk_overlap_must_be_below_chunk_size(model: type[Chunking]) -> None:
    extra = {"session_id": "s1"} if model is ProcessForm else {}
    assert model.model_validate({"chunk_size": 100, "chunk_overlap": 99, **extra}).chunk_overlap == 99
    with pytest.raises(ValidationError, match="chunk_overlap must be smaller than chunk_size"):
        model.model_validate({"chunk_size": 100, "chunk_overlap": 100, **extra})
