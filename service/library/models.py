"""Names, bounds and wire shapes of the markdown library (the EBARS frontend's ``lib/api.ts`` types)."""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel, Field

from service.errors import UnsupportedMediaType, ValidationFailed
from service.rag.models import Chunking
from service.sessions.models import ModelName

SUFFIX = ".md"
MAX_NAME_CHARS = 200  # as the table's CHECK; room left for a "_N" collision suffix within it
_FORBIDDEN = frozenset('/\\:*?"<>|')


def clean_filename(raw: str | None) -> str:
    """The name an upload is stored under, or a 4xx: the client's name must already be a plain file name.

    Refused rather than rewritten when it could address anything but one file (separators, traversal, control
    characters), so what is stored is exactly what the client sees in the listing."""
    name = unicodedata.normalize("NFC", (raw or "").strip())
    details = {"filename": name[:MAX_NAME_CHARS]}
    if not name:
        raise ValidationFailed("the file has no name", details=details)
    if not name.lower().endswith(SUFFIX):
        raise UnsupportedMediaType("only .md files are accepted", details=details)
    if any(ch in _FORBIDDEN or not ch.isprintable() for ch in name):
        raise ValidationFailed("the file name may not contain path separators or control characters", details=details)
    if name.startswith(".") or ".." in name:
        raise ValidationFailed("the file name may not start with '.' or contain '..'", details=details)
    if len(name) > MAX_NAME_CHARS:
        raise ValidationFailed(f"the file name is longer than {MAX_NAME_CHARS} characters", details=details)
    if len(name) == len(SUFFIX):
        raise ValidationFailed("the file name is only the suffix", details=details)
    return name[: -len(SUFFIX)] + SUFFIX  # a ".MD" upload is listed as ".md"


def candidate(name: str, n: int) -> str:
    """``name`` for n == 0, else ``stem_n.md``, the stem shortened so the result stays within the bound."""
    if n == 0:
        return name
    tail = f"_{n}{SUFFIX}"
    return name[: -len(SUFFIX)][: MAX_NAME_CHARS - len(tail)] + tail


class UploadMarkdown(BaseModel):
    """The multipart body: one ``.md`` file part named ``file``."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


class DeleteAllQuery(BaseModel):
    model_config = {"extra": "forbid"}
    delete_all: bool = False


class MarkdownUploaded(BaseModel):
    success: bool
    message: str
    markdown_filename: str


class MarkdownList(BaseModel):
    markdown_files: list[str]
    count: int


class MarkdownContent(BaseModel):
    filename: str
    content: str


class MarkdownDeleted(BaseModel):
    deleted: bool
    filename: str


class MarkdownDeletedAll(BaseModel):
    deleted: bool
    count: int


class BatchForm(Chunking):
    """The multipart fields of ``process-and-store-batch`` (the frontend's ``addMarkdownDocumentsToSession``).

    ``chunk_strategy`` is forwarded as sent (the RAG service owns chunking; the frontend sends "lightweight");
    the LLM post-processing fields are accepted and recorded with the job."""

    session_id: str = Field(min_length=1, max_length=128)
    markdown_files: str = Field(min_length=1, max_length=65_536, description="a JSON list of library file names")
    chunk_strategy: str = Field(default="lightweight", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    embedding_model: ModelName | None = None
    use_llm_post_processing: bool = False
    llm_model_name: ModelName | None = None


class BatchStarted(BaseModel):
    success: bool
    job_id: str
    total_files: int
    message: str


class JobFileResult(BaseModel):
    filename: str
    chunks_processed: int
    success: bool


class JobFileError(BaseModel):
    filename: str
    error: str


class Job(BaseModel):
    job_id: str
    session_id: str
    status: Literal["queued", "running", "completed", "completed_with_errors", "failed"]
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    total_files: int
    processed_successfully: int
    errors_count: int
    current_file: str | None
    total_chunks: int
    results: list[JobFileResult]
    errors: list[JobFileError]


class JobStatus(BaseModel):
    success: bool
    job: Job
