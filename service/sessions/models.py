"""Request and response types: they validate input and generate the OpenAPI document."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, field_validator

from service.sessions.domain import (
    MAX_EVENT_TYPE_LEN,
    MAX_STATE,
    MIN_STATE,
    PAGE_SIZE_LIMIT,
    ApiOpenStatus,
    ApiStatus,
    EndStatus,
    OpenStatus,
    Status,
)

State = Annotated[int, Field(ge=MIN_STATE, le=MAX_STATE, description=f"client state code, {MIN_STATE}..{MAX_STATE}")]
EVENT_TYPE_RE = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$")
# Written by the service itself; clients cannot forge them.
SERVICE_EVENT_TYPES = frozenset(
    {
        "SESSION_STARTED",
        "STATE_CHANGED",
        "SESSION_ENDED",
        "RAG_QUERY",
        "QUESTIONS_GENERATED",
        "DOCUMENTS_PROCESSED",
        "DOCUMENTS_REPROCESSED",
        "RAG_SETTINGS_UPDATED",
        "METADATA_UPDATED",
        "STATUS_CHANGED",
    }
)
# Keys of the stored metadata object that the service owns; client metadata may not set them.
# Text fields rendered as "" when unset, list fields as [] (the old gateway's types), and the one flag.
TEXT_FIELDS = ("description", "grade_level", "subject_area")
LIST_FIELDS = ("learning_objectives", "tags")
RESERVED_METADATA_KEYS = frozenset(
    {"name", "category", "rag_settings", "counters", "is_public", *TEXT_FIELDS, *LIST_FIELDS}
)
COUNTERS = ("document_count", "total_chunks", "query_count", "questions_generated")
MAX_JSON_DEPTH = 16

ShortText = Annotated[str, Field(min_length=1, max_length=200)]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


# A status sent by a client, in either case (the API renders lower case, the database stores upper case).
AnyCase = BeforeValidator(_upper)
StatusIn = Annotated[Status, AnyCase]
EndStatusIn = Annotated[EndStatus, AnyCase]
OpenStatusIn = Annotated[OpenStatus, AnyCase]
Description = Annotated[str, Field(max_length=2000)]
GradeLevel = Annotated[str, Field(max_length=100)]
SubjectArea = Annotated[str, Field(max_length=200)]
# Lists of short labels (learning objectives, tags): bounded in count and item length, no empty items.
ListItem = Annotated[str, Field(min_length=1, max_length=500)]
TextList = Annotated[list[ListItem], Field(max_length=50)]


class Strict(BaseModel):
    """Base of the request models: an unknown field is a 422, never silently dropped; text is stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def json_depth(value: Any, depth: int = 0) -> int:
    if depth > MAX_JSON_DEPTH:
        return depth
    if isinstance(value, dict):
        return max((json_depth(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((json_depth(v, depth + 1) for v in value), default=depth + 1)
    return depth


def non_finite(value: Any) -> bool:
    """True when ``value`` holds NaN or +-Infinity: the parser accepts them, JSON (and SQLite) cannot store them."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    return False


def _check_json(value: dict[str, Any], what: str) -> dict[str, Any]:
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    if non_finite(value):
        raise ValueError(f"{what} holds NaN or Infinity, which JSON cannot represent")
    return value


def _check_client_metadata(value: dict[str, Any]) -> dict[str, Any]:
    reserved = RESERVED_METADATA_KEYS.intersection(value)
    if reserved:
        raise ValueError(f"keys {sorted(reserved)} are set through their own fields, not metadata")
    return _check_json(value, "metadata")


# The bounds of each RAG setting, shared by the stored settings and the query that may override them.
TopK = Annotated[int, Field(ge=1, le=50)]
MinScore = Annotated[float, Field(ge=0.0, le=1.0)]
MaxContextChars = Annotated[int, Field(ge=100, le=100_000)]
ModelName = Annotated[str, Field(min_length=1, max_length=100)]
ChainType = Annotated[str, Field(pattern=r"^[A-Za-z_]{1,32}$")]  # as the RAG service accepts
# The old platform's provider and reranker names ("groq", "ollama", "bge-reranker-v2-m3", ...): plain identifiers.
ProviderName = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,49}$", description="provider identifier, 1..50 chars")
]
RerankerType = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$", description="reranker identifier, 1..100 chars")
]


class QueryKnobs(Strict):
    """The RAG settings a query may override; each optional (absent = not set here)."""

    top_k: TopK | None = None
    use_rerank: bool | None = None
    min_score: MinScore | None = None
    max_context_chars: MaxContextChars | None = None
    model: ModelName | None = None
    chain_type: ChainType | None = None
    embedding_model: ModelName | None = None
    use_direct_llm: bool | None = Field(default=None, description="answer from the LLM alone, without retrieval")


class RagSettings(QueryKnobs):
    """Stored RAG defaults of a session; every field optional. The fields beyond ``QueryKnobs`` are the old
    platform's session-only settings: a query cannot override them, but they reach the RAG service with it."""

    provider: ProviderName | None = None
    embedding_provider: ProviderName | None = None
    use_reranker_service: bool | None = None
    reranker_type: RerankerType | None = None
    min_score_threshold: MinScore | None = Field(default=None, description="drop sources scoring below it")


class SessionCreate(Strict):
    """Our fields plus the old gateway's ``CreateSessionRequest`` ones, so its web client works unchanged."""

    name: ShortText
    category: str | None = Field(default=None, max_length=100)
    description: Description | None = None
    grade_level: GradeLevel | None = None
    subject_area: SubjectArea | None = None
    learning_objectives: TextList | None = None
    tags: TextList | None = None
    is_public: bool = False
    created_by: str | None = Field(
        default=None, max_length=200, description="accepted for the old client and ignored: the owner is the caller"
    )
    start_state: State = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    rag_settings: RagSettings | None = None

    _meta = field_validator("metadata")(_check_client_metadata)


class SessionPatch(Strict):
    """Only the fields sent change. ``metadata`` is an RFC 7396 merge patch: null removes a key."""

    name: ShortText | None = None
    category: str | None = Field(default=None, max_length=100)
    description: Description | None = None
    grade_level: GradeLevel | None = None
    subject_area: SubjectArea | None = None
    learning_objectives: TextList | None = None
    tags: TextList | None = None
    is_public: bool | None = None
    metadata: dict[str, Any] | None = None

    _meta = field_validator("metadata")(lambda v: None if v is None else _check_client_metadata(v))


class EventCreate(Strict):
    """A client event; ``state`` also records STATE_CHANGED from the last known state."""

    event_type: str | None = Field(
        default=None, min_length=1, max_length=MAX_EVENT_TYPE_LEN, pattern=EVENT_TYPE_RE.pattern
    )
    event_data: dict[str, Any] | None = None
    state: State | None = None

    @field_validator("event_type")
    @classmethod
    def _type(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not EVENT_TYPE_RE.match(v):
            raise ValueError("event_type must be UPPER_SNAKE_CASE")
        if v in SERVICE_EVENT_TYPES and v != "STATE_CHANGED":
            raise ValueError(f"{v} is written by the service itself")
        return v

    @field_validator("event_data")
    @classmethod
    def _data(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else _check_json(v, "event_data")


class SessionEnd(Strict):
    status: EndStatusIn = "COMPLETED"
    end_state: State


class StatusUpdate(Strict):
    """The old gateway's ``StatusUpdateRequest``: toggle an open session between active and inactive."""

    status: OpenStatusIn


# Unix ms up to the year 9999: larger values would overflow SQLite's 64-bit integers (a 500, not a 422).
MAX_TIME_MS = 253_402_300_799_999
TimeMs = Annotated[int | None, Field(default=None, ge=0, le=MAX_TIME_MS, description="Unix ms")]


# Accepted up to the absolute bound; the handler clamps to MAX_PAGE_SIZE, and the page's ``limit`` says what held.
PageLimit = Annotated[
    int,
    Field(
        ge=1,
        le=PAGE_SIZE_LIMIT,
        description="rows per page; larger values are clamped to the server's MAX_PAGE_SIZE (the page's `limit`)",
    ),
]


class ListQuery(Strict):
    status: StatusIn | None = None
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    category: str | None = Field(default=None, max_length=100)
    started_after: TimeMs = None
    started_before: TimeMs = None
    ended_after: TimeMs = None
    ended_before: TimeMs = None
    created_after: TimeMs = None
    created_before: TimeMs = None
    limit: PageLimit = 50
    cursor: str | None = Field(default=None, max_length=512)


class EventsQuery(Strict):
    limit: PageLimit = 100
    cursor: str | None = Field(default=None, max_length=512)


class GetQuery(Strict):
    include: Literal["events"] | None = None


# -- responses -------------------------------------------------------------------------------------------
class EventOut(BaseModel):
    id: int
    session_id: str
    event_type: str
    timestamp: str
    timestamp_ms: int
    event_data: dict[str, Any] | None


class SessionOut(BaseModel):
    """A session: the old gateway's ``SessionResponse`` fields (same names and types) beside ours.

    Each value appears once. ``created_by`` is the owner (``user_id``); ``last_accessed`` is ``updated_at``
    (every write, a RAG query or question generation included, moves it). ``user_rating``, ``backup_count`` and
    ``student_entry_count`` are not tracked by this service and are always 0.
    """

    session_id: str
    user_id: str
    created_by: str
    status: ApiStatus
    name: str | None
    category: str | None
    description: str
    grade_level: str
    subject_area: str
    learning_objectives: list[str]
    tags: list[str]
    is_public: bool
    start_state: int
    current_state: int
    end_state: int | None
    start_time: str
    start_time_ms: int
    end_time: str | None
    end_time_ms: int | None
    duration_ms: int | None
    metadata: dict[str, Any]
    rag_settings: dict[str, Any]
    document_count: int
    total_chunks: int
    query_count: int
    questions_generated: int
    student_entry_count: int
    user_rating: float
    backup_count: int
    created_at: str
    created_at_ms: int
    updated_at: str
    updated_at_ms: int
    last_accessed: str
    events: list[EventOut] | None = None
    events_truncated: bool | None = Field(
        default=None, description="with ?include=events: true when more than 1000 events exist (page them via /events)"
    )


class SessionList(RootModel[list[SessionOut]]):
    """A page of ``GET /sessions``: a bare JSON array, as the old gateway's ``List[SessionResponse]`` was; the
    next page is named by the ``Link`` and ``X-Next-Cursor`` headers, not by the body."""


class StatusChanged(BaseModel):
    """The old gateway's answer to a status change."""

    success: bool
    session_id: str
    new_status: ApiOpenStatus
    updated_session: SessionOut


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: str | None
    limit: int


class EventsAppended(BaseModel):
    events: list[EventOut]
    current_state: int


class Deleted(BaseModel):
    session_id: str
    deleted: bool
    events_deleted: int
    collection_deleted: bool | None = None


class DurationStats(BaseModel):
    count: int
    avg_ms: float | None
    p50_ms: int | None
    p95_ms: int | None


class Stats(BaseModel):
    total: int
    by_status: dict[str, int]
    durations: DurationStats
    events_by_type: dict[str, int]
