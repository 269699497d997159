"""The markdown library routes the EBARS frontend calls (``frontend/lib/api.ts``): upload, list, read, delete."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from service.api.endpoint import OWN_SESSION, STAFF, Call, Endpoint, validation_details
from service.api.text_files import decode_text
from service.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from service.library import jobs
from service.library.models import (
    BatchForm,
    BatchStarted,
    DeleteAllQuery,
    JobStatus,
    MarkdownContent,
    MarkdownDeleted,
    MarkdownDeletedAll,
    MarkdownList,
    MarkdownUploaded,
    UploadMarkdown,
    clean_filename,
)

UPLOAD_PATH = "/documents/upload-markdown"
_TEXT_TYPES = frozenset({"text/markdown", "text/x-markdown", "text/plain", "text/md", "application/octet-stream", ""})


async def upload_markdown(call: Call[Any, Any]) -> dict[str, Any]:
    limit = call.ctx.settings.max_upload_bytes
    request = call.request
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("send the file as multipart/form-data")
    try:
        async with request.form(max_files=1, max_fields=0, max_part_size=1024) as form:
            parts = form.multi_items()
            uploads = [v for k, v in parts if k == "file" and isinstance(v, UploadFile)]
            if len(parts) != 1 or len(uploads) != 1:
                raise ValidationFailed("send exactly one file part named 'file'")
            upload = uploads[0]
            name = clean_filename(upload.filename)
            ctype = (upload.content_type or "").split(";")[0].strip().lower()
            if ctype not in _TEXT_TYPES:
                raise UnsupportedMediaType("only markdown text is accepted", details={"content_type": ctype[:100]})
            data = await upload.read(limit + 1)
    except HTTPException as exc:  # Starlette's multipart parser
        if "Too many" in str(exc.detail) or "exceeded maximum size" in str(exc.detail):
            raise ValidationFailed("send exactly one file part named 'file'") from None
        raise BadRequest(f"malformed multipart body: {exc.detail}") from None
    text = decode_text(name, data, limit)
    max_files = call.ctx.settings.library_max_files
    stored = await call.ctx.storage.library.add(call.principal, name, text, len(data), max_files=max_files)
    return {"success": True, "message": f"{stored} uploaded", "markdown_filename": stored}


async def list_markdown(call: Call[Any, Any]) -> dict[str, Any]:
    files = await call.ctx.storage.library.names(call.principal)
    return {"markdown_files": files, "count": len(files)}


async def get_markdown(call: Call[Any, Any]) -> dict[str, Any]:
    filename = call.path["filename"]
    return {"filename": filename, "content": await call.ctx.storage.library.content(call.principal, filename)}


async def delete_markdown(call: Call[Any, Any]) -> dict[str, Any]:
    filename = call.path["filename"]
    await call.ctx.storage.library.delete(call.principal, filename)
    return {"deleted": True, "filename": filename}


async def delete_all_markdown(call: Call[DeleteAllQuery, DeleteAllQuery]) -> dict[str, Any]:
    if not call.query.delete_all:
        raise ValidationFailed("send delete_all=true to delete every file of your library")
    return {"deleted": True, "count": await call.ctx.storage.library.delete_all(call.principal)}


async def process_and_store_batch(call: Call[Any, Any]) -> dict[str, Any]:
    """Validate everything (session, names, bounds), queue the job and answer at once; the runner ingests."""
    settings = call.ctx.settings
    request = call.request
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("send the form as multipart/form-data")
    try:
        async with request.form(max_files=0, max_fields=20, max_part_size=65_536) as form:
            items = form.multi_items()
            if any(isinstance(v, UploadFile) for _, v in items):
                raise ValidationFailed("send library file names in 'markdown_files', not files")
            fields = {k: str(v) for k, v in items}
    except HTTPException as exc:
        raise BadRequest(f"malformed multipart body: {exc.detail}") from None
    if any("\x00" in v for v in fields.values()):
        raise ValidationFailed("NUL characters are not accepted in form fields")
    try:
        parsed = BatchForm.model_validate(fields)
    except ValidationError as exc:
        raise ValidationFailed("invalid form fields", details=validation_details(exc)) from None
    # the session first: someone else's (or a missing) session is a 404 whatever else is wrong
    await call.ctx.storage.rag.session_for_change(call.principal, parsed.session_id, open_only=True)
    try:
        names = json.loads(parsed.markdown_files)
    except ValueError:
        raise ValidationFailed("markdown_files must be a JSON list of file names") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValidationFailed("markdown_files must be a non-empty JSON list of file names")
    if len(names) > settings.max_upload_files:
        raise ValidationFailed(
            f"at most {settings.max_upload_files} files per job", details={"max_files": settings.max_upload_files}
        )
    if len(set(names)) != len(names):
        raise ValidationFailed("markdown_files names a file more than once")
    files = await call.ctx.storage.library.resolve(call.principal, names)
    params = parsed.model_dump(include={"chunk_size", "chunk_overlap", "chunk_strategy", "embedding_model"})
    params_extra = parsed.model_dump(include={"use_llm_post_processing", "llm_model_name"})
    job_id = await call.ctx.storage.jobs.create(call.principal, parsed.session_id, files, params, params_extra)
    runner = call.ctx.jobs
    if runner is not None:
        runner.wake.set()
    return {
        "success": True,
        "job_id": job_id,
        "total_files": len(files),
        "message": f"{len(files)} files queued for processing",
    }


async def batch_status(call: Call[Any, Any]) -> dict[str, Any]:
    return {"success": True, "job": await jobs.status(call.ctx.storage, call.principal, call.path["job_id"])}


TAG = "library"
ENDPOINTS = [
    Endpoint(
        "POST",
        UPLOAD_PATH,
        upload_markdown,
        "Add a .md file to the caller's library (a taken name gets _1, _2, ...)",
        TAG,
        STAFF,
        body=UploadMarkdown,
        response=MarkdownUploaded,
        multipart=True,
        errors=(409, 413, 415, 422),
    ),
    Endpoint(
        "GET", "/documents/list-markdown", list_markdown, "Names in the library", TAG, STAFF, response=MarkdownList
    ),
    Endpoint(
        "GET",
        "/documents/markdown/{filename}",
        get_markdown,
        "One library file's content",
        TAG,
        STAFF,
        response=MarkdownContent,
        errors=(404,),
    ),
    Endpoint(
        "DELETE",
        "/documents/markdown/{filename}",
        delete_markdown,
        "Delete one library file",
        TAG,
        STAFF,
        response=MarkdownDeleted,
        errors=(404,),
    ),
    Endpoint(
        "DELETE",
        "/documents/markdown",
        delete_all_markdown,
        "Delete every file the caller lists (delete_all=true)",
        TAG,
        STAFF,
        query=DeleteAllQuery,
        response=MarkdownDeletedAll,
        errors=(422,),
    ),
    Endpoint(
        "POST",
        "/documents/process-and-store-batch",
        process_and_store_batch,
        "Queue a durable job ingesting library files into a session",
        TAG,
        OWN_SESSION,
        body=BatchForm,
        response=BatchStarted,
        multipart=True,
        errors=(409, 413, 415, 422),
    ),
    Endpoint(
        "GET",
        "/documents/process-and-store-batch/status/{job_id}",
        batch_status,
        "An ingestion job's progress (its creator and admins)",
        TAG,
        STAFF,
        response=JobStatus,
        errors=(404,),
    ),
]
