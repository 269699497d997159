"""Turning chunks into a bounded context, and an LLM's free text into a clean list of questions."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

_NUMBERED = re.compile(
    r"^\s*(?:\(?\d{1,3}[.):\]]|[-*•·‣–—]|\(?[a-zA-Z][.)]|Q\d{1,3}[.:)]?|Question\s*\d{1,3}\s*[:.)-])\s*"
)
_PREAMBLE = re.compile(
    r"^(?:here(?: are|'s| is)|sure|certainly|of course|below are|the following|questions?:?$|okay|ok[,!.])",
    re.IGNORECASE,
)
_WRAPPERS = "\"'`*_ "
MIN_LEN = 8
MAX_LEN = 500


def build_context(chunks: Iterable[Mapping[str, Any]], *, max_chars: int, max_chunks: int) -> tuple[str, int]:
    """Join chunk texts in order until either bound is reached; returns (context, chunks used)."""
    parts: list[str] = []
    used = 0
    total = 0
    for chunk in chunks:
        if used >= max_chunks:
            break
        text = str(chunk.get("chunk_text") or "").strip()
        if not text:
            continue
        room = max_chars - total - (2 if parts else 0)
        if room <= 0:
            break
        piece = text[:room]
        parts.append(piece)
        total += len(piece) + (2 if len(parts) > 1 else 0)
        used += 1
    return "\n\n".join(parts), used


def build_prompt(context: str, count: int) -> str:
    return (
        f"Generate {count} questions based on the following context. "
        "Answer with a numbered list, one question per line, and nothing else.\n\n"
        f"Context:\n{context}\n\nQuestions:"
    )


def _clean(line: str) -> str:
    text = _NUMBERED.sub("", line.strip(), count=1).strip()
    text = text.strip(_WRAPPERS).strip()
    text = re.sub(r"\s+", " ", text)
    return text


_DECODER = json.JSONDecoder()
_MAX_JSON_ATTEMPTS = 20


def _json_items(value: Any) -> list[str] | None:
    """The question texts of a decoded JSON array, or None when it holds none (e.g. ``[1, 2, 3]``)."""
    if not isinstance(value, list):
        return None
    out: list[str] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            q = item.get("question") or item.get("text") or item.get("q")
            if isinstance(q, str):
                out.append(q)
    return out or None


def _from_json(text: str) -> list[str] | None:
    """The first JSON array of questions in the answer (preambles, code fences and trailing chatter around it
    are fine); None when there is none. A bracket inside a numbered or bulleted line is part of a question
    ("1. What is [1, 2, 3]?"), not the answer's format, so it is skipped."""
    start = text.find("[")
    attempts = 0
    while start != -1 and attempts < _MAX_JSON_ATTEMPTS:
        attempts += 1
        line_start = text.rfind("\n", 0, start) + 1
        if not _NUMBERED.match(text[line_start:start]):
            try:
                value, _ = _DECODER.raw_decode(text, start)
            except (ValueError, RecursionError):
                value = None
            items = _json_items(value)
            if items is not None:
                return items
        start = text.find("[", start + 1)
    return None


def parse_questions(text: str, count: int) -> list[str]:
    """At most ``count`` distinct questions from an LLM answer: JSON arrays, numbered lists, bullets, or plain
    lines; preambles, headings, blank lines and duplicates are dropped."""
    candidates = _from_json(text)
    if candidates is None:
        lines: list[tuple[str, bool]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            numbered = bool(_NUMBERED.match(line))
            if not numbered and (_PREAMBLE.match(line) or (line.endswith(":") and "?" not in line)):
                continue
            lines.append((line, numbered))
        # In a list answer, unnumbered lines are chatter ("Hope this helps!"), not questions.
        listed = any(numbered for _, numbered in lines)
        candidates = [line for line, numbered in lines if numbered or not listed]
    seen: set[str] = set()
    out: list[str] = []
    for candidate in candidates:
        question = _clean(candidate)
        key = question.lower().rstrip("?.! ")
        if not (MIN_LEN <= len(question) <= MAX_LEN) or key in seen:
            continue
        seen.add(key)
        out.append(question)
        if len(out) == count:
            break
    return out
