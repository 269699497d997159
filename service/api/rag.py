"""RAG gateway routes (SPEC 3): query, questions, documents, rag-settings, downstream health."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from service.api.endpoint import OWN_SESSION, PUBLIC, SEE_SESSION, Call, Endpoint, validation_details
from service.api.text_files import decode_text
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from service.rag.models import (
    GenerateQuestionsRequest,
    GenerateQuestionsResponse,
    ProcessForm,
    ProcessResponse,
    ProcessUpload,
    RagQueryRequest,
    RagQueryResponse,
    RagSettingsOut,
    RagSettingsPatch,
    RagSettingsSaved,
    ReprocessRequest,
    ReprocessResponse,
    ServicesHealth,
    SessionChunksResponse,
)
from service.rag.operations import Rag

TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown", "text/md"})
TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".text")


def rag(call: Call[Any, Any]) -> Rag:
    return Rag(call.ctx.settings, call.ctx.storage, call.ctx.downstream)


def authorization(call: Call[Any, Any]) -> str | None:
    return call.request.headers.get("authorization")


async def rag_query(call: Call[RagQueryRequest, Any]) -> dict[str, Any]:
    return await rag(call).query(call.principal, call.body, authorization(call))


async def generate_questions(call: Call[GenerateQuestionsRequest, Any]) -> dict[str, Any]:
    return await rag(call).generate_questions(call.principal, call.path["session_id"], call.body, authorization(call))


async def reprocess(call: Call[ReprocessRequest, Any]) -> dict[str, Any]:
    return await rag(call).reprocess(call.principal, call.path["session_id"], call.body, authorization(call))


async def session_chunks(call: Call[Any, Any]) -> dict[str, Any]:
    return await rag(call).chunks(call.principal, call.path["session_id"], authorization(call))


async def get_rag_settings(call: Call[Any, Any]) -> dict[str, Any]:
    return await rag(call).rag_settings(call.principal, call.path["session_id"])


async def patch_rag_settings(call: Call[RagSettingsPatch, Any]) -> dict[str, Any]:
    patch = {k: getattr(call.body, k) for k in call.body.model_fields_set}
    if not patch:
        raise ValidationFailed("send at least one setting")
    return await rag(call).patch_rag_settings(call.principal, call.path["session_id"], patch)


async def services_health(call: Call[Any, Any]) -> Response:
    result = await rag(call).services_health()
    return JSONResponse(result, status_code=200 if result["status"] == "ok" else 503)


async def process_and_store(call: Call[Any, Any]) -> dict[str, Any]:
    settings = call.ctx.settings
    request = call.request
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("send documents as multipart/form-data")
    try:
        async with request.form(max_files=settings.max_upload_files, max_fields=20, max_part_size=65_536) as form:
            fields = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
            uploads = [v for k, v in form.multi_items() if isinstance(v, UploadFile)]
            if any(k != "files" for k, v in form.multi_items() if isinstance(v, UploadFile)):
                raise ValidationFailed("file parts must be named 'files'")
            if any("\x00" in str(v) for v in fields.values()):
                raise ValidationFailed("NUL characters are not accepted in form fields")
            raw_names = fields.pop("markdown_files", None)
            try:
                parsed = ProcessForm.model_validate(fields)
            except ValidationError as exc:
                raise ValidationFailed("invalid form fields", details=validation_details(exc)) from None
            if uploads and raw_names is not None:
                raise ValidationFailed("send either 'files' or 'markdown_files', not both")
            if raw_names is not None:
                names = _library_names(str(raw_names), settings.max_upload_files)
                return await rag(call).process_documents(
                    call.principal, parsed, [], authorization(call), library_names=names
                )
            if not uploads:
                raise ValidationFailed("send one or more files in the 'files' field, or 'markdown_files'")
            files = [await _read_text(upload, settings.max_upload_bytes) for upload in uploads]
    except HTTPException as exc:  # raised by Starlette's multipart parser
        if "Too many files" in str(exc.detail):
            raise PayloadTooLarge(str(exc.detail), details={"max_files": settings.max_upload_files}) from None
        if "Part exceeded maximum size" in str(exc.detail) or "Too many fields" in str(exc.detail):
            raise PayloadTooLarge(str(exc.detail)) from None
        raise BadRequest(f"malformed multipart body: {exc.detail}") from None
    return await rag(call).process_documents(call.principal, parsed, files, authorization(call))


def _library_names(raw: str, limit: int) -> list[str]:
    """The old client's ``markdown_files``: a JSON list of 1..``limit`` distinct non-empty names."""
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and 0 < len(n) <= 255 for n in names):
        raise ValidationFailed("markdown_files must be a JSON list of library file names")
    if len(names) > limit:
        raise PayloadTooLarge(f"at most {limit} files per request", details={"max_files": limit})
    if len(set(names)) != len(names):
        raise ValidationFailed("markdown_files names a file twice")
    return names


async def _read_text(upload: UploadFile, limit: int) -> tuple[str, str, int]:
    name = (upload.filename or "document.txt")[:255]
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype not in TEXT_TYPES and not (
        ctype in ("", "application/octet-stream") and name.lower().endswith(TEXT_SUFFIXES)
    ):
        raise UnsupportedMediaType(
            f"{name}: only text/plain and text/markdown files are accepted", details={"content_type": ctype}
        )
    if upload.size is not None and upload.size > limit:
        raise PayloadTooLarge(f"{name} is larger than {limit} bytes", details={"filename": name})
    data = await upload.read(limit + 1)
    return name, decode_text(name, data, limit), len(data)


SID = "/sessions/{session_id}"
TAG = "rag"
ENDPOINTS = [
    Endpoint(
        "POST",
        "/rag/query",
        rag_query,
        "Ask a question over the session's documents",
        TAG,
        SEE_SESSION,
        body=RagQueryRequest,
        response=RagQueryResponse,
        errors=(409, 502, 503, 504),
    ),
    Endpoint(
        "POST",
        SID + "/generate-questions",
        generate_questions,
        "Generate questions from the session's chunks",
        TAG,
        SEE_SESSION,
        body=GenerateQuestionsRequest,
        response=GenerateQuestionsResponse,
        errors=(409, 502, 503, 504),
    ),
    Endpoint(
        "POST",
        "/api/documents/process-and-store",
        process_and_store,
        "Upload text/markdown documents",
        TAG,
        OWN_SESSION,
        body=ProcessUpload,
        response=ProcessResponse,
        multipart=True,
        errors=(409, 413, 415, 422, 502, 503, 504),
    ),
    Endpoint(
        "POST",
        SID + "/reprocess",
        reprocess,
        "Re-chunk the session's documents",
        TAG,
        OWN_SESSION,
        body=ReprocessRequest,
        response=ReprocessResponse,
        errors=(409, 502, 503, 504),
    ),
    Endpoint(
        "GET",
        SID + "/chunks",
        session_chunks,
        "The session's chunks, from the RAG service (bounded)",
        TAG,
        SEE_SESSION,
        response=SessionChunksResponse,
        errors=(502, 503, 504),
    ),
    Endpoint(
        "GET",
        SID + "/rag-settings",
        get_rag_settings,
        "Stored RAG defaults of the session",
        TAG,
        SEE_SESSION,
        response=RagSettingsOut,
    ),
    Endpoint(
        "PATCH",
        SID + "/rag-settings",
        patch_rag_settings,
        "Merge RAG defaults (null removes a key)",
        TAG,
        OWN_SESSION,
        body=RagSettingsPatch,
        response=RagSettingsSaved,
    ),
    Endpoint(
        "GET",
        "/health/services",
        services_health,
        "Each downstream's /health, checked concurrently",
        "health",
        PUBLIC,
        response=ServicesHealth,
        errors=(503,),
    ),
]
