"""The session rules every engine applies the same way, before or around its SQL: pure functions, no I/O."""

from __future__ import annotations

import uuid
from typing import Any

from service.auth import Principal
from service.errors import Forbidden, PayloadTooLarge, ValidationFailed
from service.sessions.domain import ACTIVE
from service.sessions.models import (
    COUNTERS,
    LIST_FIELDS,
    TEXT_FIELDS,
    EventCreate,
    ListQuery,
    SessionCreate,
    SessionPatch,
)
from service.sessions.render import dumps
from service.timeutil import now_ms

INLINE_EVENTS = 1000  # events inlined by ?include=events
# Fields of a PATCH body stored at the top of ``metadata``, by name (fixed here, never taken from the client).
PATCH_FIELDS = ("name", "category", *TEXT_FIELDS, *LIST_FIELDS, "is_public")


def new_session(principal: Principal, body: SessionCreate, *, max_metadata_bytes: int) -> dict[str, Any]:
    """The row a create inserts (``metadata`` as JSON text); 413 when its metadata is too large."""
    meta: dict[str, Any] = dict(body.metadata)
    meta["name"] = body.name
    for key in ("category", *TEXT_FIELDS, *LIST_FIELDS):  # body.created_by is ignored: the owner is the caller
        value = getattr(body, key)
        if value is not None:
            meta[key] = value
    if body.is_public:
        meta["is_public"] = True
    meta["rag_settings"] = body.rag_settings.model_dump(exclude_none=True) if body.rag_settings else {}
    meta["counters"] = dict.fromkeys(COUNTERS, 0)
    meta_text = dumps(meta)
    if len(meta_text.encode()) > max_metadata_bytes:
        raise PayloadTooLarge(f"metadata exceeds {max_metadata_bytes} bytes")
    ts = now_ms()
    return {
        "session_id": uuid.uuid4().hex,
        "user_id": principal.id,
        "start_time": ts,
        "end_time": None,
        "start_state": body.start_state,
        "end_state": None,
        "current_state": body.start_state,
        "status": ACTIVE,
        "metadata": meta_text,
        "created_at": ts,
        "updated_at": ts,
    }


def started_event(body: SessionCreate) -> dict[str, Any]:
    return {"start_state": body.start_state, "name": body.name}


def check_patch(patch: SessionPatch) -> dict[str, Any]:
    """422 for a PATCH that changes nothing or nulls what cannot be removed; the changes, for its event."""
    sent = patch.model_fields_set
    if not sent:
        raise ValidationFailed(f"send at least one of {', '.join(SessionPatch.model_fields)}")
    if "metadata" in sent and patch.metadata is None:
        raise ValidationFailed("metadata cannot be null: send an object (a key set to null removes that key)")
    if "name" in sent and patch.name is None:
        raise ValidationFailed("name cannot be removed", details=[{"loc": ["body", "name"], "msg": "null"}])
    return {k: getattr(patch, k) for k in sorted(sent)}


def check_event(body: EventCreate) -> None:
    if body.event_type is None and body.state is None:
        raise ValidationFailed("send event_type, state, or both")
    if body.event_type == "STATE_CHANGED" and body.state is None:
        raise ValidationFailed("STATE_CHANGED needs a state")


def appended_events(body: EventCreate, current_state: int) -> list[tuple[str, Any]]:
    """The (event_type, event_data) an append records, in order; a ``STATE_CHANGED`` last when the state moves."""
    events: list[tuple[str, Any]] = []
    if body.event_type is not None and body.event_type != "STATE_CHANGED":
        events.append((body.event_type, body.event_data))
    if body.state is not None:
        data: dict[str, Any] = {"from": current_state, "to": body.state}
        # the client's data rides on STATE_CHANGED unless it went with an event of its own type
        if body.event_type in (None, "STATE_CHANGED") and body.event_data:
            data = {**body.event_data, **data}
        events.append(("STATE_CHANGED", data))
    return events


def check_list_filter(principal: Principal, query: ListQuery) -> None:
    if query.user_id is not None and principal.role != "admin" and query.user_id != principal.id:
        raise Forbidden("only admins may filter by another user_id")


def retention_cutoff(keep_newest: int | None, older_than_days: float | None) -> int | None:
    """Check a cleanup's retention rule (``ValueError`` when absent or negative); the end-time cutoff in Unix ms
    of ``older_than_days``, None without it."""
    if keep_newest is None and older_than_days is None:
        raise ValueError("give keep_newest and/or older_than_days")
    if keep_newest is not None and keep_newest < 0:
        raise ValueError("keep_newest must be >= 0")
    if older_than_days is not None and older_than_days < 0:
        raise ValueError("older_than_days must be >= 0")
    return None if older_than_days is None else int(now_ms() - older_than_days * 86_400_000)


def percentile_offset(count: int, q: float) -> int:
    """The row offset of the ``q`` quantile among ``count`` ordered values (nearest rank)."""
    return min(count - 1, max(0, int(round(q * (count - 1)))))
