"""Property tests of the keyset cursors (``service.sessions.cursor``): round trip, tamper evidence, and no
input at all that makes ``decode_cursor`` fail with anything but a 400."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import string

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from service.errors import BadRequest
from service.sessions.cursor import decode_cursor, encode_cursor

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
SESSIONS = (int, str)  # (start_time, session_id)
EVENTS = (int,)  # (event id,)
secrets_ = st.text(min_size=1, max_size=64)
positions = st.tuples(INT64, st.text(max_size=64)).map(list)
PROPS = settings(derandomize=True, max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sign(payload: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()[:24]


def signed(payload: bytes, secret: str) -> str:
    """Any payload wrapped as the service would sign it (what a holder of the secret could forge)."""
    body = base64.urlsafe_b64encode(payload).rstrip(b"=")
    return f"{body.decode()}.{_sign(body, secret)}"


@PROPS
@given(position=positions, secret=secrets_)
@example(position=[0, ""], secret="s")
@example(position=[-(2**63), "é\x00/=."], secret="ü")
@example(position=[2**63 - 1, "x" * 64], secret="s")
def test_round_trip_sessions(position: list[object], secret: str) -> None:
    cursor = encode_cursor(position, secret)
    assert re.fullmatch(r"[A-Za-z0-9_-]*\.[0-9a-f]{24}", cursor), cursor  # opaque and URL-safe
    assert decode_cursor(cursor, secret, SESSIONS) == position


@PROPS
@given(event_id=INT64, secret=secrets_)
def test_round_trip_events(event_id: int, secret: str) -> None:
    assert decode_cursor(encode_cursor([event_id], secret), secret, EVENTS) == [event_id]


@PROPS
@given(position=positions, secret=secrets_, data=st.data())
def test_any_single_character_change_is_detected(position: list[object], secret: str, data: st.DataObject) -> None:
    cursor = encode_cursor(position, secret)
    i = data.draw(st.integers(min_value=0, max_value=len(cursor) - 1), label="index")
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != cursor[i]), label="replacement")
    forged = cursor[:i] + replacement + cursor[i + 1 :]
    with pytest.raises(BadRequest) as err:
        decode_cursor(forged, secret, SESSIONS)
    assert err.value.status == 400


@PROPS
@given(position=positions, secret=secrets_, cut=st.integers(min_value=1, max_value=30))
def test_truncation_and_extension_are_detected(position: list[object], secret: str, cut: int) -> None:
    cursor = encode_cursor(position, secret)
    for forged in (cursor[:-cut], cursor + "0" * cut, cursor[cut:], "." + cursor, cursor.replace(".", "..", 1)):
        assume(forged != cursor)
        with pytest.raises(BadRequest):
            decode_cursor(forged, secret, SESSIONS)


@PROPS
@given(position=positions, secret=secrets_, other=secrets_)
def test_another_secret_is_refused(position: list[object], secret: str, other: str) -> None:
    assume(_sign(b"x", secret) != _sign(b"x", other))
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor(position, secret), other, SESSIONS)


@PROPS
@given(position=positions, event_id=INT64, secret=secrets_)
def test_a_cursor_is_only_valid_for_its_own_shape(position: list[object], event_id: int, secret: str) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor(position, secret), secret, EVENTS)
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor([event_id], secret), secret, SESSIONS)


@PROPS
@given(cursor=st.text(max_size=600))
@example(cursor="")
@example(cursor=".")
@example(cursor="é.é")
@example(cursor="\x00.\x00")
@example(cursor="a" * 600 + "." + "0" * 24)
def test_arbitrary_text_is_refused_with_400(cursor: str) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(cursor, "secret", SESSIONS)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@PROPS
@given(payload=st.binary(max_size=200) | JSONISH.map(lambda v: repr(v).encode()), secret=secrets_)
@example(payload=b'[1e999999, "x"]', secret="s")
@example(payload=b"[" + b"9" * 5000 + b', "x"]', secret="s")
@example(payload=b"[" * 400 + b"]" * 400, secret="s")
@example(payload=b'[true, "x"]', secret="s")
@example(payload=b'[9223372036854775808, "x"]', secret="s")
@example(payload=b"\xff\xfe", secret="s")
def test_signed_garbage_is_refused_or_well_shaped(payload: bytes, secret: str) -> None:
    """Even with a valid signature (a leaked secret), a payload either decodes to the right shape with
    SQLite-sized integers or is refused with a 400: never another exception (a 500)."""
    for shape in (SESSIONS, EVENTS):
        try:
            position = decode_cursor(signed(payload, secret), secret, shape)
        except BadRequest:
            continue
        assert len(position) == len(shape)
        for value, kind in zip(position, shape, strict=True):
            assert type(value) is kind
            if kind is int and isinstance(value, int):  # (the type was asserted just above)
                assert -(2**63) <= value < 2**63


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_integers_beyond_sqlite_are_refused(value: int) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor([value, "x"], "s"), "s", SESSIONS)
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor([value], "s"), "s", EVENTS)


def test_cursor_alphabet() -> None:
    allowed = set(string.ascii_letters + string.digits + "-_.")
    assert set(encode_cursor([1795627017067, "a" * 32], "k")) <= allowed
