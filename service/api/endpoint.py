"""Declarative endpoints: one description drives access, validation, the Starlette route and the OpenAPI entry."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.auth import ROLES, Principal, Role
from service.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.jsoncodec import FastJSONResponse
from service.state import AppContext

B = TypeVar("B", bound=BaseModel)
Q = TypeVar("Q", bound=BaseModel)

SessionRule = Literal["see", "own"]


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call an endpoint, checked before any query or body parsing.

    ``roles``: the roles allowed; ``None`` is a public route (no token is read; the handler has no principal).
    ``session``: the route acts on one session the caller must be able to see ("see") or own ("own"). That
    check runs in the same database hop as the work (no extra read per request); only when the request is
    refused as invalid is it run first, so an invalid request never tells apart a session the caller may not
    see (404) from their own (422).
    """

    roles: frozenset[Role] | None
    session: SessionRule | None = None

    @property
    def authenticated(self) -> bool:
        return self.roles is not None

    def every_role(self) -> bool:
        """Authenticated, and any role may call it (so no 403 comes from the declaration)."""
        return self.roles == ROLES


STAFF_ROLES: frozenset[Role] = frozenset(("admin", "teacher"))

PUBLIC = Access(None)
ANY_ROLE = Access(ROLES)
STAFF = Access(STAFF_ROLES)
ADMIN = Access(frozenset(("admin",)))
SEE_SESSION = Access(ROLES, "see")  # read or use a session: admin any, teacher their own, student ACTIVE ones
OWN_SESSION = Access(STAFF_ROLES, "own")  # change a session: admin any, teacher their own


@dataclass(slots=True)
class Call(Generic[B, Q]):
    request: Request
    ctx: AppContext
    caller: Principal | None  # None exactly on public routes: no token was read
    body: B
    query: Q
    path: dict[str, str]

    @property
    def principal(self) -> Principal:
        """The authenticated caller; a public route has none (its handler must not ask)."""
        if self.caller is None:
            raise RuntimeError("a public endpoint has no principal")
        return self.caller


Handler = Callable[[Call[Any, Any]], Awaitable[Any]]


class Empty(BaseModel):
    model_config = {"extra": "forbid"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route. ``errors``: statuses beyond those the OpenAPI entry derives itself (401/403/404/503 from
    ``access``, 400/408/413/415/422 from a body or query)."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    access: Access  # explicit on every endpoint: no default that silently means "any role"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    multipart: bool = False
    raw_response: str | None = None  # media type of a non-JSON response (e.g. /metrics)
    response_headers: dict[str, str] = field(default_factory=dict)  # header -> description, on the success answer
    extra_openapi: dict[str, Any] = field(default_factory=dict)

    @property
    def session_in_path(self) -> bool:
        """Whether the session the access rule is about is named by the path (else by the body)."""
        return "{session_id}" in self.path


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


def _authorization(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None and not (header.isascii() and header.isprintable()):
        # it is forwarded to the auth service: a non-ASCII (latin-1 decoded) value could not even be encoded
        raise Unauthorized("Authorization must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    return header


async def authorize(ep: Endpoint, request: Request, ctx: AppContext) -> Principal | None:
    """The caller, once their role is allowed here (401/403/503); ``None`` on a public route (no token read)."""
    roles = ep.access.roles
    if roles is None:
        return None
    principal = await ctx.auth.resolve(_authorization(request))
    if principal.role not in roles:
        raise Forbidden(
            "your role may not call this endpoint",
            details={"role": principal.role, "allowed_roles": sorted(roles)},
        )
    return principal


# What a malformed request is refused with; on a session route the session is checked before any of them.
_INVALID_REQUEST = (BadRequest, ValidationFailed, PayloadTooLarge, UnsupportedMediaType)


def to_route(ep: Endpoint, path: str) -> Route:
    rule = ep.access.session if ep.session_in_path else None

    async def endpoint(request: Request) -> Response:
        ctx = cast(AppContext, request.state.ctx)
        principal = await authorize(ep, request, ctx)
        try:
            query = parse_query(ep.query, request) if ep.query else Empty()
            body = await parse_json_body(ep.body, request) if ep.body and not ep.multipart else Empty()
            call: Call[Any, Any] = Call(request, ctx, principal, body, query, dict(request.path_params))
            result = await ep.handler(call)
        except _INVALID_REQUEST:
            if rule is not None and principal is not None:
                # Only on this failure path: the read the operation would have done, so the caller learns
                # 404 (not visible / not theirs) before anything about their request.
                await ctx.storage.sessions.require(principal, request.path_params["session_id"], rule)
            raise
        if isinstance(result, Response):
            return result
        return FastJSONResponse(result, status_code=ep.status)

    endpoint.__name__ = ep.handler.__name__
    return Route(path, endpoint, methods=[ep.method])


def routes_for(endpoints: Sequence[Endpoint]) -> list[Route]:
    """Every endpoint at its path and at its ``/api`` twin."""
    routes: list[Route] = []
    for ep in endpoints:
        routes.append(to_route(ep, ep.path))
        twin = ep.path.removeprefix("/api") if ep.path.startswith("/api/") else "/api" + ep.path
        routes.append(to_route(ep, twin))
    return routes
