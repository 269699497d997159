"""Which RAG setting wins: a value the client actually sent, else the session's stored one, else the default.

"Sent" means present in the request body (pydantic's ``model_fields_set``), never a model default: the gateway
this replaces let non-null defaults silently override saved settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any

from service.settings import Settings

QUERY_KEYS = (
    "top_k",
    "use_rerank",
    "min_score",
    "max_context_chars",
    "model",
    "chain_type",
    "embedding_model",
    "use_direct_llm",
)


def service_defaults(settings: Settings) -> dict[str, Any]:
    return {
        "top_k": settings.rag_default_top_k,
        "use_rerank": settings.rag_default_use_rerank,
        "min_score": settings.rag_default_min_score,
        "max_context_chars": settings.rag_default_max_context_chars,
        "model": settings.rag_default_model,
        "chain_type": settings.rag_default_chain_type,
        "embedding_model": settings.rag_default_embedding_model,
        "use_direct_llm": settings.rag_default_use_direct_llm,
        # No service-wide choice for these: null lets the RAG service use its own.
        "provider": None,
        "embedding_provider": None,
        "use_reranker_service": settings.rag_default_use_reranker_service,
        "reranker_type": None,
        "min_score_threshold": None,
    }


def effective(
    sent: Mapping[str, Any], sent_keys: Set[str], stored: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in defaults:
        if key in sent_keys and sent.get(key) is not None:
            out[key] = sent[key]
        elif stored.get(key) is not None:
            out[key] = stored[key]
        else:
            out[key] = defaults[key]
    return out
