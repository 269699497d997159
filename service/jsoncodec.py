"""JSON on the hot path: orjson where it can, the standard library where orjson refuses.

The standard library's encoder costs ~30 us for a RAG query's payload and as much for its answer, orjson ~1 us
(bench/README.md, "CPU per RAG request"). orjson refuses what the standard library accepts in a few corners:
integers past 64 bits and non-string keys when encoding, ``NaN``/``Infinity`` literals and integers past 64 bits
when decoding (a downstream written in Python may send them; orjson would even read a long integer as a float).
Those fall back, so the answers stay what they were; the one difference: orjson writes a NaN float as ``null``
where ``json`` with ``allow_nan=False`` raised.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.responses import JSONResponse

# orjson reads an integer past 64 bits as a float (silently losing digits): such input goes to ``json``
_LONG_NUMBER = re.compile(rb"\d{19}")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (what ``json.dumps(value, ensure_ascii=False, separators=(",", ":"))`` gives)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a big integer, a non-string key
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def loads(raw: bytes) -> Any:
    """Raises ``ValueError`` on malformed JSON, like ``json.loads``."""
    if _LONG_NUMBER.search(raw):
        return json.loads(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # NaN / Infinity literals, big integers; malformed input raises here too


class FastJSONResponse(JSONResponse):
    """Starlette's ``JSONResponse`` with the body from ``dumps`` (same bytes for what both encode)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
