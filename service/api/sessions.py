"""Session routes (SPEC 3): thin wrappers over the storage's session store (``ctx.storage.sessions``); the
keyset cursors are signed and checked here, the storage takes and returns bare keys."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from starlette.responses import Response

from service.api.endpoint import ANY_ROLE, OWN_SESSION, SEE_SESSION, STAFF, Call, Endpoint
from service.downstream import DownstreamError
from service.errors import PayloadTooLarge
from service.sessions.cursor import decode_cursor, encode_cursor
from service.sessions.models import (
    Deleted,
    EventCreate,
    EventPage,
    EventsAppended,
    EventsQuery,
    GetQuery,
    ListQuery,
    SessionCreate,
    SessionEnd,
    SessionList,
    SessionOut,
    SessionPatch,
    Stats,
    StatusChanged,
    StatusUpdate,
)
from service.sessions.render import dumps

log = logging.getLogger(__name__)


async def create_session(call: Call[SessionCreate, Any]) -> dict[str, Any]:
    return await call.ctx.storage.sessions.create(
        call.principal, call.body, max_metadata_bytes=call.ctx.settings.max_metadata_bytes
    )


def json_text(body: str, status: int = 200) -> Response:
    """A response whose JSON was already rendered (by SQLite): no parse and re-encode on the loop."""
    return Response(body.encode(), status_code=status, media_type="application/json")


Page = TypeVar("Page", ListQuery, EventsQuery)


def clamped(call: Call[Any, Page]) -> Page:
    """The query with ``limit`` clamped to MAX_PAGE_SIZE.

    The model accepts up to the absolute bound (``PAGE_SIZE_LIMIT``), so the setting, not a number in the model,
    is what limits a page (an events page's ``limit`` tells the client what was honoured).
    """
    query, most = call.query, call.ctx.settings.max_page_size
    return query.model_copy(update={"limit": most}) if query.limit > most else query


NEXT_PAGE_HEADERS = {
    "Link": '`<URL>; rel="next"` (RFC 8288): this request\'s URL with every parameter kept and `cursor` '
    "replaced; absent on the last page",
    "X-Next-Cursor": "the next page's cursor alone (send it as `cursor`); absent on the last page",
}


def next_page_headers(call: Call[Any, Any], cursor: str | None) -> dict[str, str]:
    """``Link: <...>; rel="next"`` and ``X-Next-Cursor``, as GitHub's API pages: the body stays a bare array.

    The link is the full URL of this request (scheme, host, path with its ``/api`` prefix or not) with every
    filter kept as sent and only ``cursor`` replaced, so a client follows it without knowing the parameters."""
    if cursor is None:
        return {}
    url = call.request.url.include_query_params(cursor=cursor)
    return {"Link": f'<{url}>; rel="next"', "X-Next-Cursor": cursor}


async def list_sessions(call: Call[Any, ListQuery]) -> Response:
    query = clamped(call)
    secret = call.ctx.settings.cursor_secret.get_secret_value()
    after = None
    if query.cursor is not None:
        start, sid = decode_cursor(query.cursor, secret, (int, str))
        after = (start, sid)
    page = await call.ctx.storage.sessions.list(call.principal, query, after=after)
    response = json_text(page.sessions_json)  # the array the engine rendered, as is
    cursor = None if page.next_key is None else encode_cursor(list(page.next_key), secret)
    response.headers.update(next_page_headers(call, cursor))
    return response


async def get_session(call: Call[Any, GetQuery]) -> Response:
    session = await call.ctx.storage.sessions.get(
        call.principal, call.path["session_id"], with_events=call.query.include == "events"
    )
    return json_text(session)


async def patch_session(call: Call[SessionPatch, Any]) -> dict[str, Any]:
    return await call.ctx.storage.sessions.patch(
        call.principal,
        call.path["session_id"],
        call.body,
        max_metadata_bytes=call.ctx.settings.max_metadata_bytes,
    )


async def append_event(call: Call[EventCreate, Any]) -> dict[str, Any]:
    if call.body.event_data is not None:
        size = len(dumps(call.body.event_data).encode())
        limit = call.ctx.settings.max_event_data_bytes
        if size > limit:
            raise PayloadTooLarge(f"event_data is {size} bytes; the limit is {limit}")
    return await call.ctx.storage.sessions.append_event(call.principal, call.path["session_id"], call.body)


async def list_events(call: Call[Any, EventsQuery]) -> dict[str, Any]:
    query = clamped(call)
    secret = call.ctx.settings.cursor_secret.get_secret_value()
    after = 0
    if query.cursor is not None:
        (after,) = decode_cursor(query.cursor, secret, (int,))
    page = await call.ctx.storage.sessions.list_events(call.principal, call.path["session_id"], query, after=after)
    cursor = None if page.next_id is None else encode_cursor([page.next_id], secret)
    return {"events": page.events, "next_cursor": cursor, "limit": query.limit}


async def end_session(call: Call[SessionEnd, Any]) -> dict[str, Any]:
    return await call.ctx.storage.sessions.end(call.principal, call.path["session_id"], call.body)


async def set_status(call: Call[StatusUpdate, Any]) -> dict[str, Any]:
    return await call.ctx.storage.sessions.set_status(call.principal, call.path["session_id"], call.body)


async def delete_session(call: Call[Any, Any]) -> dict[str, Any]:
    result = await call.ctx.storage.sessions.delete(call.principal, call.path["session_id"])
    # The session is gone first (the source of truth); the downstream collection is best effort and reported.
    try:
        await call.ctx.downstream.call("rag", "DELETE", f"/sessions/{result['session_id']}/collection")
        result["collection_deleted"] = True
    except DownstreamError:
        log.warning("collection of deleted session %s was not deleted downstream", result["session_id"])
        result["collection_deleted"] = False
    return result


async def session_stats(call: Call[Any, Any]) -> dict[str, Any]:
    return await call.ctx.storage.sessions.stats(call.principal)


SID = "/sessions/{session_id}"
TAG = "sessions"
ENDPOINTS = [
    Endpoint(
        "POST",
        "/sessions",
        create_session,
        "Create a session (active)",
        TAG,
        STAFF,
        body=SessionCreate,
        response=SessionOut,
        status=201,
        errors=(413, 422),
    ),
    Endpoint(
        "GET",
        "/sessions",
        list_sessions,
        "List sessions, newest first (keyset cursor; next page in the Link header)",
        TAG,
        ANY_ROLE,
        query=ListQuery,
        response=SessionList,
        response_headers=NEXT_PAGE_HEADERS,
        errors=(400, 403, 422),  # 403: a user_id filter naming someone else (admins only)
    ),
    Endpoint(
        "GET",
        "/sessions/stats",
        session_stats,
        "Counts, durations and events per type",
        TAG,
        STAFF,
        response=Stats,
    ),
    Endpoint(
        "GET",
        SID,
        get_session,
        "One session",
        TAG,
        SEE_SESSION,
        query=GetQuery,
        response=SessionOut,
        errors=(422,),
    ),
    Endpoint(
        "PATCH",
        SID,
        patch_session,
        "Change only the fields sent (metadata is a merge patch)",
        TAG,
        OWN_SESSION,
        body=SessionPatch,
        response=SessionOut,
        errors=(413, 422),
    ),
    Endpoint(
        "POST",
        SID + "/events",
        append_event,
        "Append an event; `state` records STATE_CHANGED",
        TAG,
        OWN_SESSION,
        body=EventCreate,
        response=EventsAppended,
        status=201,
        errors=(409, 413, 422),
    ),
    Endpoint(
        "GET",
        SID + "/events",
        list_events,
        "Events, oldest first (keyset cursor)",
        TAG,
        SEE_SESSION,
        query=EventsQuery,
        response=EventPage,
        errors=(400, 422),
    ),
    Endpoint(
        "POST",
        SID + "/end",
        end_session,
        "End the session",
        TAG,
        OWN_SESSION,
        body=SessionEnd,
        response=SessionOut,
        errors=(409, 422),
    ),
    Endpoint(
        "PATCH",
        SID + "/status",
        set_status,
        "Make an open session active or inactive (hidden from students); 409 once ended",
        TAG,
        OWN_SESSION,
        body=StatusUpdate,
        response=StatusChanged,
        errors=(409, 422),
    ),
    Endpoint(
        "DELETE",
        SID,
        delete_session,
        "Delete the session, its events and its collection",
        TAG,
        OWN_SESSION,
        response=Deleted,
    ),
]
