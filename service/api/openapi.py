"""OpenAPI 3.1 built from the same pydantic types that validate requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import __version__
from service.api.endpoint import Endpoint

REF = "#/components/schemas/{model}"
UPLOAD_TYPES = "text/plain, text/markdown"  # the file parts a document upload accepts
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
        },
        "detail": {"type": "string", "description": "error.message again, for clients of FastAPI-style APIs"},
    },
}
REASONS = {
    400: "Bad request",
    401: "Missing or invalid token",
    403: "Forbidden for this role",
    404: "Not found (or not yours to see)",
    408: "Request body not received in time",
    409: "Conflict with the session's state",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation error",
    429: "Too many requests",
    501: "Not done by this database engine (a PostgreSQL backup is pg_dump's)",
    502: "Downstream gave a bad answer",
    503: "Unavailable or overloaded",
    504: "Downstream timed out",
}


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def build_openapi(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    models: set[type[BaseModel]] = set()
    for ep in endpoints:
        for m in (ep.body, ep.response):
            if m is not None:
                models.add(m)
    keyed = [(m, "validation" if any(ep.body is m for ep in endpoints) else "serialization") for m in models]
    _, defs = models_json_schema(
        sorted(keyed, key=lambda mk: mk[0].__name__),  # type: ignore[arg-type]
        ref_template=REF,
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        for path in (ep.path, ep.path.removeprefix("/api") if ep.path.startswith("/api/") else "/api" + ep.path):
            paths.setdefault(path, {})[ep.method.lower()] = _operation(ep, path)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Session & RAG gateway", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Resolved by the auth service to a user and a role (admin, teacher or student); "
                    "a token with any other role is refused with 403 everywhere.",
                }
            },
        },
    }


def access_sentence(ep: Endpoint) -> str:
    """The endpoint's access declaration in words, for the operation's description."""
    roles = ep.access.roles
    if roles is None:
        return "Public: no token needed."
    who = "any role" if ep.access.every_role() else ", ".join(sorted(roles))
    rule = ep.access.session
    if rule is None:
        return f"Roles: {who}."
    if rule == "see":
        need = "be able to see the session (admin: any; teacher: their own; student: an ACTIVE one)"
        hidden = "A session they may not see"
    else:
        need = "own the session (admin: any)"
        hidden = "A session they do not own"
    if ep.session_in_path:
        when = "even to an invalid request"
    else:
        when = "once the body is valid: the session is named in the body (the role is checked before it is read)"
    return f"Roles: {who}; the caller must {need}. {hidden} answers 404 like a missing one, {when}."


def _operation(ep: Endpoint, path: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": ep.summary,
        "description": access_sentence(ep),
        "tags": [ep.tag],
        "operationId": f"{ep.handler.__name__}{'_api' if path.startswith('/api') else ''}",
    }
    authenticated = ep.access.authenticated
    if ep.access.roles is not None:
        op["x-roles"] = sorted(ep.access.roles)
    if ep.access.session is not None:
        op["x-session-access"] = ep.access.session
    params: list[dict[str, Any]] = [
        {"name": seg[1:-1], "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}}
        for seg in path.split("/")
        if seg.startswith("{")
    ]
    if ep.query is not None:
        params.extend(_query_params(ep.query))
    if params:
        op["parameters"] = params
    if authenticated:
        op["security"] = [{"bearer": []}]
    if ep.body is not None:
        media = "multipart/form-data" if ep.multipart else "application/json"
        content: dict[str, Any] = {"schema": {"$ref": REF.format(model=ep.body.__name__)}}
        if ep.multipart and "files" in ep.body.model_fields:
            content["encoding"] = {"files": {"contentType": UPLOAD_TYPES}}
        op["requestBody"] = {"required": True, "content": {media: content}}
    responses: dict[str, Any] = {}
    if ep.raw_response is not None:
        responses[str(ep.status)] = {"description": "OK", "content": {ep.raw_response: {"schema": {"type": "string"}}}}
    else:
        ok_schema = {"$ref": REF.format(model=ep.response.__name__)} if ep.response else {}
        responses[str(ep.status)] = {"description": "OK", "content": {"application/json": {"schema": ok_schema}}}
    if ep.response_headers:
        responses[str(ep.status)]["headers"] = {
            name: {"description": text, "required": False, "schema": {"type": "string"}}
            for name, text in ep.response_headers.items()
        }
    statuses = set(ep.errors)
    if authenticated:
        statuses |= {401, 503}
        if not ep.access.every_role():
            statuses.add(403)
    if ep.access.session is not None:
        statuses.add(404)
    if ep.body is not None:
        statuses |= {400, 408, 413, 415, 422}
    if ep.query is not None:
        statuses |= {400, 422}
    for status in sorted(statuses):
        schema: dict[str, Any] = {"$ref": REF.format(model="Error")}
        if status == 503 and not authenticated and ep.response is not None:
            # An unauthenticated probe (/health/ready, /health/services) answers 503 with its own body.
            schema = {"anyOf": [{"$ref": REF.format(model=ep.response.__name__)}, schema]}
        responses[str(status)] = {
            "description": REASONS.get(status, "Error"),
            "content": {"application/json": {"schema": schema}},
        }
    op["responses"] = responses
    op.update(ep.extra_openapi)
    return op
