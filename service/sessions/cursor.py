"""Opaque, tamper-evident keyset cursors: base64url(JSON position) + truncated HMAC."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from service.errors import BadRequest

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _sign(payload: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()[:24]


def encode_cursor(position: list[Any], secret: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).rstrip(b"=")
    return f"{payload.decode()}.{_sign(payload, secret)}"


def decode_cursor(cursor: str, secret: str, shape: tuple[type, ...]) -> list[Any]:
    """The position inside ``cursor``; 400 if it was forged, tampered with or has the wrong shape."""
    payload, _, signature = cursor.partition(".")
    raw = payload.encode("ascii", "replace")
    # compared as bytes: compare_digest refuses non-ASCII str (a TypeError, i.e. a 500, for a forged cursor)
    if not signature or not hmac.compare_digest(signature.encode(), _sign(raw, secret).encode()):
        raise BadRequest("invalid cursor", details={"cursor": "signature mismatch"})
    try:
        position = json.loads(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("invalid cursor", details={"cursor": "undecodable"}) from exc
    if (
        not isinstance(position, list)
        or len(position) != len(shape)
        or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(position, shape, strict=True))
        or any(isinstance(v, int) and not _INT64_MIN <= v <= _INT64_MAX for v in position)  # SQLite's INTEGER
    ):
        raise BadRequest("invalid cursor", details={"cursor": "wrong shape"})
    return position
