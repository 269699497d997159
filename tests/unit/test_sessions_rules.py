"""Pure session rules: cursors, request models, access predicates, rendering."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import pytest
from pydantic import ValidationError

from service.auth import Principal, bearer_token
from service.errors import BadRequest, Unauthorized
from service.sessions.cursor import decode_cursor, encode_cursor
from service.sessions.models import (
    MAX_JSON_DEPTH,
    RESERVED_METADATA_KEYS,
    EventCreate,
    ListQuery,
    SessionCreate,
    SessionEnd,
    SessionPatch,
    json_depth,
    non_finite,
)
from service.sessions.render import event_out, session_out
from service.storage.sqlite import access
from service.timeutil import iso
from support.session_view import counters_of

ADMIN = Principal(id="a", role="admin", username="a", profile={})
TEACHER = Principal(id="t", role="teacher", username="t", profile={})
STUDENT = Principal(id="s", role="student", username="s", profile={})


# -- cursors -----------------------------------------------------------------------------------------------
def test_cursor_round_trip() -> None:
    c = encode_cursor([1_700_000_000_000, "abc"], "k")
    assert decode_cursor(c, "k", (int, str)) == [1_700_000_000_000, "abc"]
    assert "=" not in c and " " not in c


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c + "0",
        lambda c: c[:-1] + ("1" if c[-1] == "0" else "0"),
        lambda c: c.split(".")[0],
        lambda c: "." + c.split(".")[1],
        lambda c: c.replace(".", ".é"),
        lambda c: "ü" + c,
        lambda c: c.upper(),
        lambda c: "",
    ],
)
def test_cursor_tampering(mutate: Any) -> None:
    c = encode_cursor([5, "x"], "k")
    with pytest.raises(BadRequest):
        decode_cursor(mutate(c), "k", (int, str))


def test_cursor_other_secret_and_shapes() -> None:
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor([5, "x"], "k"), "other", (int, str))
    for position in ([5], [5, 6], ["5", "x"], [True, "x"], [5, "x", 1], {"a": 1}):
        with pytest.raises(BadRequest, match="invalid cursor"):
            decode_cursor(encode_cursor(position, "k"), "k", (int, str))  # type: ignore[arg-type]


# -- request models -------------------------------------------------------------------------------------------
def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_json_depth_and_bounds() -> None:
    assert json_depth({}) == 1
    assert json_depth({"a": [1, {"b": 2}]}) == 3
    assert json_depth(nested(MAX_JSON_DEPTH)) == MAX_JSON_DEPTH
    SessionCreate(name="x", metadata=nested(MAX_JSON_DEPTH))
    with pytest.raises(ValidationError, match="nested deeper"):
        SessionCreate(name="x", metadata=nested(MAX_JSON_DEPTH + 1))
    with pytest.raises(ValidationError, match="nested deeper"):
        EventCreate(event_type="E", event_data=nested(MAX_JSON_DEPTH + 1))
    with pytest.raises(ValidationError, match="nested deeper"):
        SessionPatch(metadata=nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    assert non_finite({"a": [1, {"b": bad}]})
    with pytest.raises(ValidationError, match="NaN or Infinity"):
        SessionCreate(name="x", metadata={"v": bad})
    with pytest.raises(ValidationError, match="NaN or Infinity"):
        SessionPatch(metadata={"v": [bad]})
    with pytest.raises(ValidationError, match="NaN or Infinity"):
        EventCreate(event_type="E", event_data={"v": {"w": bad}})
    # what is accepted can always be stored as JSON
    assert not non_finite({"a": [1.5, -2, "inf", None, True]})
    json.dumps({"a": 1.5}, allow_nan=False)


@pytest.mark.parametrize("key", sorted(RESERVED_METADATA_KEYS))
def test_reserved_metadata_keys(key: str) -> None:
    with pytest.raises(ValidationError, match="own fields"):
        SessionCreate(name="x", metadata={key: 1})
    with pytest.raises(ValidationError, match="own fields"):
        SessionPatch(metadata={key: None})
    SessionCreate(name="x", metadata={"nested": {key: 1}})  # only top-level keys are the service's


def test_event_types() -> None:
    for ok in ("A", "ANSWER_GIVEN", "STEP2", "X_1_Y", "STATE_CHANGED"):
        assert EventCreate(event_type=ok, state=1 if ok == "STATE_CHANGED" else None).event_type == ok
    for bad in ("a", "Answer", "_A", "A_", "A__B", "1A", "A-B", "A B", "X" * 65, ""):
        with pytest.raises(ValidationError):
            EventCreate(event_type=bad)
    for service_type in ("SESSION_STARTED", "SESSION_ENDED", "RAG_QUERY", "METADATA_UPDATED", "QUESTIONS_GENERATED"):
        with pytest.raises(ValidationError, match="service itself"):
            EventCreate(event_type=service_type)


def test_models_forbid_unknown_fields_and_strip() -> None:
    assert SessionCreate(name="  padded ").name == "padded"
    for model, body in (
        (SessionCreate, {"name": "x", "owner": "me"}),
        (SessionPatch, {"status": "COMPLETED"}),
        (EventCreate, {"event_type": "E", "timestamp": 1}),
        (SessionEnd, {"end_state": 1, "end_time": 5}),
        (ListQuery, {"sort": "asc"}),
    ):
        with pytest.raises(ValidationError, match="Extra inputs"):
            model.model_validate(body)
    with pytest.raises(ValidationError):
        SessionEnd.model_validate({"status": "ACTIVE", "end_state": 1})
    assert SessionPatch.model_validate({"description": None}).model_fields_set == {"description"}


def test_list_query_time_bounds() -> None:
    ListQuery(started_after=0, ended_before=253_402_300_799_999, created_after=1)
    for field in ("started_after", "started_before", "ended_after", "ended_before", "created_after", "created_before"):
        with pytest.raises(ValidationError):
            ListQuery.model_validate({field: str(2**63)})
        with pytest.raises(ValidationError):
            ListQuery.model_validate({field: "-1"})


# -- access ----------------------------------------------------------------------------------------------------
def test_visibility_predicates() -> None:
    assert access.visible(ADMIN) == ("", ())
    assert access.visible(TEACHER) == (" AND user_id = ?", ("t",))
    clause, params = access.visible(STUDENT)
    assert "status = 'ACTIVE'" in clause and "end_time IS NULL" in clause and params == ()


def test_visible_and_owned_rows() -> None:
    """The predicates applied to real rows: what each role may see, and what it may change."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE sessions (session_id TEXT, user_id TEXT, status TEXT, end_time INTEGER)")
    conn.executemany(
        "INSERT INTO sessions VALUES (?, ?, ?, ?)",
        [("t-open", "t", "ACTIVE", None), ("t-done", "t", "COMPLETED", 5), ("o-open", "other", "ACTIVE", None)],
    )

    def ids(clause_params: tuple[str, tuple[str, ...]]) -> set[str]:
        clause, params = clause_params
        return {r[0] for r in conn.execute(f"SELECT session_id FROM sessions WHERE 1 = 1{clause}", params)}  # noqa: S608

    everything = {"t-open", "t-done", "o-open"}
    assert ids(access.visible(ADMIN)) == ids(access.owned(ADMIN)) == everything
    assert ids(access.visible(TEACHER)) == ids(access.owned(TEACHER)) == {"t-open", "t-done"}
    assert ids(access.visible(STUDENT)) == {"t-open", "o-open"}
    assert ids(access.owned(STUDENT)) == set()


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Token abc", "Bearer " + "x" * 5000])
def test_bearer_token_refusals(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        bearer_token(header)


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"


# -- rendering -----------------------------------------------------------------------------------------------
def test_session_out_separates_service_keys() -> None:
    row = {
        "session_id": "s",
        "user_id": "u",
        "start_time": 1_000,
        "end_time": 3_500,
        "start_state": 1,
        "end_state": 2,
        "current_state": 2,
        "status": "COMPLETED",
        "metadata": json.dumps(
            {"name": "n", "category": "c", "rag_settings": {"top_k": 3}, "counters": {"query_count": 4}, "k": 1}
        ),
        "created_at": 1_000,
        "updated_at": 3_500,
    }
    out = session_out(row)
    assert out["metadata"] == {"k": 1}
    assert (out["name"], out["category"], out["description"]) == ("n", "c", "")
    assert out["rag_settings"] == {"top_k": 3}
    assert counters_of(out) == {"document_count": 0, "total_chunks": 0, "query_count": 4, "questions_generated": 0}
    assert out["duration_ms"] == 2_500
    assert out["start_time"] == "1970-01-01T00:00:01.000Z" and out["end_time"] == "1970-01-01T00:00:03.500Z"
    event = event_out({"id": 1, "session_id": "s", "event_type": "E", "timestamp": 0, "event_data": None})
    assert event["timestamp"] == "1970-01-01T00:00:00.000Z" and event["event_data"] is None
    assert iso(None) is None
