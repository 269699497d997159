"""Request/response types of the RAG routes (validation and OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.sessions.models import ModelName, QueryKnobs, RagSettings, Strict


class Turn(Strict):
    role: Literal["user", "assistant", "system"]
    content: str = Field(max_length=20_000)


# The EBARS answer-style levels ("basit" | "orta" | "karmaşık", "kısa" | "orta" | "uzun", "az" | "orta" | "çok"):
# bounded, not enumerated, so the RAG service stays the judge of which levels it knows.
StyleLevel = Annotated[str, Field(min_length=1, max_length=32)]
STYLE_KEYS = ("aciklayici_dil", "cumle_uzunlugu", "ornek_kullanimi", "benzetmeler", "use_ebars_personalization")


class RagQueryRequest(QueryKnobs):
    session_id: str = Field(min_length=1, max_length=128)
    query: str = Field(min_length=1, max_length=4000)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    conversation_history: list[Turn] | None = Field(default_factory=list, max_length=50)
    # answer style (EBARS): not settings, forwarded to the RAG service as sent (null when absent)
    aciklayici_dil: StyleLevel | None = Field(default=None, description="explanatory language level")
    cumle_uzunlugu: StyleLevel | None = Field(default=None, description="sentence length")
    ornek_kullanimi: StyleLevel | None = Field(default=None, description="use of examples")
    benzetmeler: StyleLevel | None = Field(default=None, description="use of analogies")
    use_ebars_personalization: bool | None = None


class Source(BaseModel):
    content: str = Field(description="the source's text (what the web frontend shows)")
    chunk_text: str | None = Field(default=None, description="same text; kept for earlier clients")
    score: float = Field(description="relevance, 0.0 when the RAG service gives none")
    metadata: dict[str, Any] | None = None


class RagQueryResponse(BaseModel):
    session_id: str
    answer: str
    sources: list[Source]
    chain_type: str | None
    settings_used: dict[str, Any]
    latency_ms: float
    processing_time_ms: int = Field(description="the query's time in the gateway, whole ms (old gateway's field)")
    suggestions: list[str] = Field(description="follow-up questions from the RAG service; empty when it gives none")


class SessionChunk(BaseModel):
    """One chunk as the EBARS frontend's ``Chunk`` type (frontend/lib/api.ts) has it."""

    document_name: str = Field(description="the document's file name (the chunk metadata's filename)")
    chunk_index: int = Field(description="position within its document, from 0")
    chunk_text: str
    chunk_metadata: dict[str, Any] = Field(description="the RAG service's chunk metadata, as given")


class SessionChunksResponse(BaseModel):
    """The old gateway's shape (``SessionChunksResponse`` in api.ts): an object whose ``chunks`` the client reads."""

    session_id: str
    chunks: list[SessionChunk]
    total_count: int = Field(description="chunks the RAG service holds; more than len(chunks) when it was cut")


class GenerateQuestionsRequest(Strict):
    count: int = Field(default=5, ge=1, le=20)


class GenerateQuestionsResponse(BaseModel):
    session_id: str
    questions: list[str]
    count: int
    model_used: str | None
    context_chunks: int
    context_chars: int


ChunkStrategy = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class Chunking(Strict):
    """Chunking parameters, shared by uploads and reprocessing; the overlap must leave each chunk some new text."""

    chunk_size: int = Field(default=1000, ge=50, le=20_000)
    chunk_overlap: int = Field(default=200, ge=0, le=10_000)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Self:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self


DocumentName = Annotated[str, Field(min_length=1, max_length=255)]


class ReprocessRequest(Chunking):
    embedding_model: ModelName | None = None
    # api.ts reprocessSessionDocuments sends source_files (undefined, so absent, from the session page): the
    # documents to re-chunk, by name; absent means all of them.
    source_files: list[DocumentName] | None = Field(default=None, min_length=1, max_length=1000)


class ReprocessResponse(BaseModel):
    session_id: str
    success: bool
    message: str
    chunks_processed: int
    total_chunks: int
    successful_files: list[str] = Field(description="documents the RAG service re-chunked, by name")
    failed_files: list[str] = Field(description="documents asked for that the RAG service did not re-chunk")
    embedding_model: str = Field(description="the embedding model used")


class FileResult(BaseModel):
    filename: str
    success: bool
    chunks_processed: int = 0
    bytes: int = 0
    error: dict[str, Any] | None = None


class ProcessResponse(BaseModel):
    session_id: str
    success: bool = Field(description="true when at least one document was stored (old gateway's field)")
    message: str
    processed_count: int = Field(description="documents stored, as ``succeeded`` (old gateway's field)")
    total_chunks_added: int = Field(description="chunks stored by this request, as ``chunks_processed``")
    files: list[FileResult]
    succeeded: int
    failed: int
    chunks_processed: int
    document_count: int
    total_chunks: int


class ProcessForm(Chunking):
    """The multipart fields of a document upload (``files`` are the file parts)."""

    session_id: str = Field(min_length=1, max_length=128)
    # The RAG service owns chunking (the EBARS client sends "semantic", "lightweight", ...): bounded, forwarded.
    chunk_strategy: ChunkStrategy = "fixed"
    embedding_model: ModelName | None = None


class ProcessUpload(ProcessForm):
    """The multipart body as documented: the form fields plus either text/markdown ``files`` or
    ``markdown_files``, a JSON list of names in the caller's markdown library (the old client's form)."""

    files: list[bytes] | None = Field(
        default=None, min_length=1, json_schema_extra={"items": {"type": "string", "format": "binary"}}
    )
    markdown_files: str | None = Field(default=None, description='JSON list of library file names, e.g. ["a.md"]')


class RagSettingsPatch(RagSettings):
    """Fields sent are merged into the stored settings; a null removes the key."""


class RagSettingsOut(BaseModel):
    session_id: str
    rag_settings: dict[str, Any]
    effective: dict[str, Any]


class RagSettingsSaved(RagSettingsOut):
    """The PATCH answer; ``success`` as the old gateway answered (the web frontend reads it)."""

    success: Literal[True] = True


class ServiceHealth(BaseModel):
    status: Literal["ok", "error"]
    url: str
    latency_ms: float
    detail: Any = None


class ServicesHealth(BaseModel):
    status: Literal["ok", "degraded"]
    services: dict[str, ServiceHealth]


class Profile(BaseModel):
    """The auth service's user, passed through (the fields the EBARS profile page reads; others kept)."""

    model_config = ConfigDict(extra="allow")
    id: str | int
    username: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    role_name: str
    role_id: int | None = None
    is_active: bool | None = None
    created_at: str | None = None
    last_login: str | None = None


EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
ProfileText = Annotated[str, Field(max_length=100)]


class ProfileUpdate(Strict):
    """What the EBARS profile form sends (``updateProfile`` in frontend/lib/api.ts): any of the four fields."""

    username: Annotated[str, Field(min_length=1, max_length=100, pattern=r"\S")] | None = None
    email: Annotated[str, Field(max_length=254, pattern=EMAIL_PATTERN)] | None = None
    first_name: ProfileText | None = None
    last_name: ProfileText | None = None


class PasswordChange(BaseModel):
    """Passwords are sent exactly as typed: unknown fields are refused, but nothing is stripped."""

    model_config = ConfigDict(extra="forbid")
    old_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=6, max_length=256, description="at least 6 characters, as the form asks")


class PasswordChanged(BaseModel):
    model_config = ConfigDict(extra="allow")
    success: bool
    message: str | None = None
