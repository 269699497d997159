"""Names, bounds and wire shapes of the markdown library (the EBARS frontend's ``lib/api.ts`` types)."""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel, Field

from service.errors import UnsupportedMediaType, ValidationFailed

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
