"""The markdown library routes the EBARS frontend calls (``frontend/lib/api.ts``): upload, list, read, delete."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from service.api.endpoint import STAFF, Call, Endpoint
from service.api.text_files import decode_text
from service.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from service.library import store
from service.library.models import (
    DeleteAllQuery,
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
    stored = await store.add(call.ctx.db, call.principal, name, text, len(data), max_files=max_files)
    return {"success": True, "message": f"{stored} uploaded", "markdown_filename": stored}


async def list_markdown(call: Call[Any, Any]) -> dict[str, Any]:
    files = await store.names(call.ctx.db, call.principal)
    return {"markdown_files": files, "count": len(files)}


async def get_markdown(call: Call[Any, Any]) -> dict[str, Any]:
    filename = call.path["filename"]
    return {"filename": filename, "content": await store.content(call.ctx.db, call.principal, filename)}


async def delete_markdown(call: Call[Any, Any]) -> dict[str, Any]:
    filename = call.path["filename"]
    await store.delete(call.ctx.db, call.principal, filename)
    return {"deleted": True, "filename": filename}


async def delete_all_markdown(call: Call[DeleteAllQuery, DeleteAllQuery]) -> dict[str, Any]:
    if not call.query.delete_all:
        raise ValidationFailed("send delete_all=true to delete every file of your library")
    return {"deleted": True, "count": await store.delete_all(call.ctx.db, call.principal)}


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
]
