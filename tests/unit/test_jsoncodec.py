"""The hot path's JSON (orjson, with the standard library where orjson would refuse or change a value)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from service import jsoncodec

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_same_document_as_the_standard_library(value: Any) -> None:
    ours = jsoncodec.dumps(value)
    theirs = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    assert json.loads(ours) == json.loads(theirs) == value
    assert jsoncodec.loads(theirs) == value


def test_long_integers_keep_every_digit() -> None:
    big = 123456789012345678901234567890
    assert jsoncodec.dumps({"n": big}) == b'{"n":123456789012345678901234567890}'
    decoded = jsoncodec.loads(b'{"n": 123456789012345678901234567890, "m": -18446744073709551616}')
    assert decoded == {"n": big, "m": -(2**64)}
    assert isinstance(decoded["n"], int)  # orjson alone would give a float


def test_what_python_peers_send_is_read_like_json_does() -> None:
    decoded = jsoncodec.loads(b'{"score": NaN, "hi": Infinity}')
    assert math.isnan(decoded["score"]) and decoded["hi"] == math.inf


def test_non_string_keys_are_written_like_json_does() -> None:
    assert jsoncodec.dumps({1: "a", None: "b"}) == b'{"1":"a","null":"b"}'


def test_malformed_json_is_a_value_error() -> None:
    for raw in (b"{", b"", b'{"a": tru}', b"\xff"):
        try:
            jsoncodec.loads(raw)
        except ValueError:
            continue
        raise AssertionError(f"{raw!r} was accepted")


def test_response_class_renders_with_the_codec() -> None:
    response = jsoncodec.FastJSONResponse({"ç": [1, 2.5, None]}, status_code=201)
    assert response.status_code == 201
    assert response.body == '{"ç":[1,2.5,null]}'.encode()
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.body))
