"""Declarative endpoints: one description drives validation, the Starlette route and the OpenAPI entry."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.auth import Principal
from service.errors import BadRequest, Unauthorized, UnsupportedMediaType, ValidationFailed
from service.state import AppContext

B = TypeVar("B", bound=BaseModel)
Q = TypeVar("Q", bound=BaseModel)


@dataclass(slots=True)
class Call(Generic[B, Q]):
    request: Request
    ctx: AppContext
    principal: Principal
    body: B
    query: Q
    path: dict[str, str]


Handler = Callable[[Call[Any, Any]], Awaitable[Any]]


class Empty(BaseModel):
    model_config = {"extra": "forbid"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    auth: bool = True
    errors: tuple[int, ...] = ()
    multipart: bool = False
    raw_response: str | None = None  # media type of a non-JSON response (e.g. /metrics)
    extra_openapi: dict[str, Any] = field(default_factory=dict)


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    # No 'input' echo: the offending value may be huge or sensitive.
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)]


def parse_query(model: type[Q], request: Request) -> Q:
    raw_query: bytes = request.scope.get("query_string", b"")
    if b"%" in raw_query:
        try:  # Starlette decodes with errors="replace": refuse bytes that are not UTF-8 instead of guessing
            parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest("query string is not valid UTF-8") from None
    params = request.query_params
    for key in params:
        if len(params.getlist(key)) > 1:
            raise ValidationFailed("query parameter given more than once", details=[{"loc": ["query", key]}])
        if "\x00" in params[key]:
            raise ValidationFailed("NUL characters are not accepted", details=[{"loc": ["query", key]}])
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise ValidationFailed("invalid query parameters", details=validation_details(exc)) from None


# A JSON ``\u0000`` escape that is not itself escaped (an even run of backslashes before it).
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


async def parse_json_body(model: type[B], request: Request) -> B:
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    if raw and ctype.split(";")[0].strip().lower() not in ("application/json", ""):
        raise UnsupportedMediaType("send the body as application/json", details={"content_type": ctype[:100]})
    if _ESCAPED_NUL.search(raw):
        raise ValidationFailed("NUL characters (\\u0000) are not accepted in the body")
    try:
        # strict: a JSON value must have the documented type (no "5" for 5, no false for 0.0)
        return model.model_validate_json(raw or b"{}", strict=True)
    except ValidationError as exc:
        details = validation_details(exc)
        if len(details) == 1 and "recursion limit" in details[0]["msg"]:
            # well-formed JSON nested past the parser's limit: a bound on the content, not a syntax error
            raise ValidationFailed("request body is nested too deeply", details=details) from None
        if any(d["type"] in ("json_invalid", "json_type") for d in details) and len(details) == 1:
            raise BadRequest("malformed JSON body", details=details) from None
        raise ValidationFailed("invalid request body", details=details) from None


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(content, status_code=status, headers=headers)


def _authorization(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None and not (header.isascii() and header.isprintable()):
        # it is forwarded to the auth service: a non-ASCII (latin-1 decoded) value could not even be encoded
        raise Unauthorized("Authorization must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    return header


def to_route(ep: Endpoint, path: str) -> Route:
    async def endpoint(request: Request) -> Response:
        ctx = cast(AppContext, request.state.ctx)
        principal = await ctx.auth.resolve(_authorization(request)) if ep.auth else _ANONYMOUS
        query = parse_query(ep.query, request) if ep.query else Empty()
        body = await parse_json_body(ep.body, request) if ep.body and not ep.multipart else Empty()
        call: Call[Any, Any] = Call(request, ctx, principal, body, query, dict(request.path_params))
        result = await ep.handler(call)
        if isinstance(result, Response):
            return result
        return json_response(result, ep.status)

    endpoint.__name__ = ep.handler.__name__
    return Route(path, endpoint, methods=[ep.method])


_ANONYMOUS = Principal(id="", role="student", username="", profile={})


def routes_for(endpoints: Sequence[Endpoint]) -> list[Route]:
    """Every endpoint at its path and at its ``/api`` twin."""
    routes: list[Route] = []
    for ep in endpoints:
        routes.append(to_route(ep, ep.path))
        twin = ep.path.removeprefix("/api") if ep.path.startswith("/api/") else "/api" + ep.path
        routes.append(to_route(ep, twin))
    return routes
