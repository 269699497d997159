"""``json_merge_patch`` (created by the migration) answers what SQLite's ``json_patch`` answers: RFC 7396.

Compared as parsed JSON: jsonb reorders keys (and normalizes spacing), SQLite keeps the text's order.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# RFC 7396 appendix A, plus nested removal and non-object targets and patches
CASES = [
    ({"a": "b"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}),
    ({"a": "b"}, {"a": None}),
    ({"a": "b", "b": "c"}, {"a": None}),
    ({"a": ["b"]}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}),
    (["a", "b"], ["c", "d"]),
    ({"a": "b"}, ["c"]),
    ({"a": "foo"}, None),
    ({"a": "foo"}, "bar"),
    ({"e": None}, {"a": 1}),
    ([1, 2], {"a": "b", "c": None}),
    ({}, {"a": {"bb": {"ccc": None}}}),
    ({"a": {"x": 1, "y": {"z": 2}}}, {"a": {"y": {"z": None, "w": [1, {"q": None}]}}}),
    ({"ключ": "значение", "emoji": "😀"}, {"emoji": None, "新": {"深": "\u2028"}}),
    ({}, {}),
]

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.sampled_from([0.5, -1.25, 3.0e-3]) | text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(text, values, max_size=5)


def sqlite_patch(target: Any, patch: Any) -> Any:
    conn = sqlite3.connect(":memory:")
    try:
        return json.loads(
            conn.execute("SELECT json_patch(?, ?)", (json.dumps(target), json.dumps(patch))).fetchone()[0]
        )
    finally:
        conn.close()


async def pg_patch(conn: asyncpg.Connection, target: Any, patch: Any) -> Any:
    result = await conn.fetchval(
        "SELECT json_merge_patch($1::jsonb, $2::jsonb)::text", json.dumps(target), json.dumps(patch)
    )
    return json.loads(result)


@pytest.mark.parametrize(("target", "patch"), CASES)
async def test_rfc_7396_cases_match_sqlite(pg_dsn: str, target: Any, patch: Any) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await pg_patch(conn, target, patch) == sqlite_patch(target, patch)
    finally:
        await conn.close()


def test_jsonb_concatenation_is_not_a_merge_patch() -> None:
    # why the function exists: `||` would keep {"a": null} and replace {"a": {...}} whole
    assert sqlite_patch({"a": {"x": 1}, "b": 1}, {"a": {"y": 2}, "b": None}) == {"a": {"x": 1, "y": 2}}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=objects | values, patch=objects | values)
async def test_random_documents_match_sqlite(pg_dsn: str, target: Any, patch: Any) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await pg_patch(conn, target, patch) == sqlite_patch(target, patch)
    finally:
        await conn.close()
