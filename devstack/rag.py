"""RAG-service stand-in: ingestion, chunk listing, deletion and lexical ``/query`` (not product code)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from devstack.faults import Control
from devstack.settings import DevstackSettings
from devstack.store import Document, Hit, RagStore
from devstack.web import ApiError, path_id, read_model

Strategy = Literal["fixed", "paragraph", "sentence", "lightweight"]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Style = Annotated[str, StringConstraints(min_length=1, max_length=64)]
NO_CONTEXT = "No relevant context found."
MAX_SUGGESTIONS = 3
# The old platform's knobs and the EBARS answer-style fields: accepted and recorded (``GET /_control`` ->
# ``queries``) so tests can see what arrived; only min_score_threshold changes the answer.
RECORDED_OPTIONS = (
    "top_k",
    "use_rerank",
    "min_score",
    "max_context_chars",
    "model",
    "chain_type",
    "max_tokens",
    "provider",
    "embedding_model",
    "embedding_provider",
    "use_reranker_service",
    "reranker_type",
    "min_score_threshold",
    "use_direct_llm",
    "aciklayici_dil",
    "cumle_uzunlugu",
    "ornek_kullanimi",
    "benzetmeler",
    "use_ebars_personalization",
)


class DocMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    session_id: Name
    filename: Annotated[str, StringConstraints(max_length=1024)] = "document.txt"


class ProcessRequest(BaseModel):
    text: Annotated[str, StringConstraints(min_length=1)]
    metadata: DocMetadata
    collection_name: Name | None = None
    chunk_size: int = Field(default=1000, ge=10, le=100_000)
    chunk_overlap: int = Field(default=200, ge=0, le=100_000)
    chunk_strategy: Strategy = "fixed"
    embedding_model: Name = "devstack-embed"

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ProcessRequest:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self


class ReprocessRequest(BaseModel):
    chunk_size: int | None = Field(default=None, ge=10, le=100_000)
    chunk_overlap: int | None = Field(default=None, ge=0, le=100_000)
    chunk_strategy: Strategy | None = None
    embedding_model: Name | None = None


class QueryRequest(BaseModel):
    session_id: Name
    collection_name: Name | None = None
    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10_000)]
    top_k: int = Field(default=5, ge=1, le=100)
    use_rerank: bool = False
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    max_context_chars: int = Field(default=4000, ge=1, le=1_000_000)
    model: Name | None = None
    chain_type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_]{1,32}$")] = "stuff"
    max_tokens: int = Field(default=512, ge=1, le=65_536)
    conversation_history: list[dict[str, Any]] = Field(default_factory=list, max_length=200)
    provider: Name | None = None
    embedding_model: Name | None = None
    embedding_provider: Name | None = None
    use_reranker_service: bool | None = None
    reranker_type: Name | None = None
    min_score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    use_direct_llm: bool | None = None
    aciklayici_dil: Style | None = None
    cumle_uzunlugu: Style | None = None
    ornek_kullanimi: Style | None = None
    benzetmeler: Style | None = None
    use_ebars_personalization: bool | None = None


def default_collection(session_id: str) -> str:
    return f"session_{session_id}"


def compose_answer(hits: list[Hit], max_context_chars: int) -> str:
    """An answer quoting the best chunks, best first, within ``max_context_chars`` characters of context."""
    parts: list[str] = []
    budget = max_context_chars
    for hit in hits:
        text = " ".join(hit.chunk.text.split())
        if len(text) > budget:
            text = text[:budget].rsplit(" ", 1)[0] if " " in text[:budget] else text[:budget]
        if text:
            parts.append(text)
        budget -= len(text) + 1
        if budget <= 0:
            break
    if not parts:
        return NO_CONTEXT
    return "Based on the provided context: " + " ".join(parts)


def suggest(hits: list[Hit]) -> list[str]:
    """Deterministic follow-up questions, one per distinct source file of the hits (none without hits)."""
    names: list[str] = []
    for hit in hits:
        name = str(hit.chunk.metadata.get("filename") or "the documents")
        if name not in names:
            names.append(name)
    return [f"What else does {name} say about this?" for name in names[:MAX_SUGGESTIONS]]


class RagApi:
    def __init__(self, store: RagStore, settings: DevstackSettings, control: Control | None = None) -> None:
        self.store = store
        self.settings = settings
        self.control = control

    async def process_and_store(self, request: Request) -> Response:
        body = await read_model(request, ProcessRequest, self.settings.max_body_bytes)
        if len(body.text) > self.settings.max_document_chars:
            raise ApiError(413, f"text exceeds {self.settings.max_document_chars} characters")
        session_id = body.metadata.session_id
        extra = {k: v for k, v in body.metadata.model_dump().items() if k not in ("session_id", "filename")}
        doc = Document(
            doc_id=self.store.new_doc_id(),
            session_id=session_id,
            filename=body.metadata.filename,
            text=body.text,
            collection=body.collection_name or default_collection(session_id),
            strategy=body.chunk_strategy,
            chunk_size=body.chunk_size,
            chunk_overlap=body.chunk_overlap,
            embedding_model=body.embedding_model,
            metadata=extra,
        )
        count = await self.store.add_document(doc)
        return JSONResponse(
            {"success": True, "chunks_processed": count, "collection_name": doc.collection, "document_id": doc.doc_id}
        )

    async def reprocess(self, request: Request) -> Response:
        session_id = path_id(request)
        body = await read_model(request, ReprocessRequest, self.settings.max_body_bytes)
        documents, chunks = await self.store.reprocess(
            session_id,
            chunk_size=body.chunk_size,
            chunk_overlap=body.chunk_overlap,
            strategy=body.chunk_strategy,
            embedding_model=body.embedding_model,
        )
        return JSONResponse({"success": True, "chunks_processed": chunks, "documents": documents})

    async def chunks(self, request: Request) -> Response:
        session_id = path_id(request)
        chunks = self.store.session_chunks(session_id)
        return JSONResponse({"chunks": [{"chunk_text": c.text, "metadata": c.metadata} for c in chunks]})

    async def delete_collection(self, request: Request) -> Response:
        deleted = self.store.delete_session(path_id(request))
        return JSONResponse({"success": True, "deleted": deleted})

    async def query(self, request: Request) -> Response:
        body = await read_model(request, QueryRequest, self.settings.max_body_bytes)
        hits = self.store.query(
            body.session_id,
            body.collection_name or default_collection(body.session_id),
            body.query,
            top_k=body.top_k,
            min_score=body.min_score,
            use_rerank=body.use_rerank,
        )
        if body.min_score_threshold is not None:
            hits = [h for h in hits if h.score >= body.min_score_threshold]
        if self.control is not None:
            options = {k: getattr(body, k) for k in RECORDED_OPTIONS}
            self.control.record_query({"session_id": body.session_id, "query": body.query[:200], **options})
        return JSONResponse(
            {
                "answer": compose_answer(hits, body.max_context_chars),
                "sources": [
                    {
                        "content": h.chunk.text,
                        "chunk_text": h.chunk.text,
                        "score": h.score,
                        "metadata": h.chunk.metadata,
                    }
                    for h in hits
                ],
                "chain_type": body.chain_type,
                "suggestions": suggest(hits),
            }
        )
