"""Tokenising, sentence splitting and chunking for the devstack RAG stand-in (not product code)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n")

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just let me
    more most my myself no nor not now of off on once only or other our ours ourselves out over own same
    she should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves one two many may might must shall us""".split()
)


def stem(word: str) -> str:
    """A deliberately tiny plural stripper; identical on both the indexing and the query side."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Content words of ``text``: lower-cased, stop words and one-letter words dropped."""
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS]


def terms(text: str) -> list[str]:
    """Stemmed content words, in order (duplicates kept)."""
    return [stem(w) for w in words(text)]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


def chunk_fixed(text: str, size: int, overlap: int) -> Iterator[str]:
    """Windows of ``size`` characters, each starting ``size - overlap`` after the previous one."""
    step = max(1, size - overlap)
    for start in range(0, len(text), step):
        piece = text[start : start + size].strip()
        if piece:
            yield piece
        if start + size >= len(text):
            break


def chunk_paragraph(text: str, size: int, overlap: int) -> Iterator[str]:
    """One chunk per blank-line separated paragraph; an oversized paragraph is split like ``fixed``."""
    for paragraph in _PARAGRAPH_SPLIT.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= size:
            yield paragraph
        else:
            yield from chunk_fixed(paragraph, size, overlap)


def _joined_len(parts: list[str]) -> int:
    return sum(map(len, parts)) + max(0, len(parts) - 1)


def chunk_sentence(text: str, size: int, overlap: int) -> Iterator[str]:
    """Whole sentences packed greedily up to ``size`` characters.

    The trailing sentences of a chunk that fit in ``overlap`` characters start the next chunk; a sentence
    longer than ``size`` is split like ``fixed``.
    """
    current: list[str] = []
    for sentence in sentences(text):
        if len(sentence) > size:
            if current:
                yield " ".join(current)
                current = []
            yield from chunk_fixed(sentence, size, overlap)
            continue
        if current and _joined_len([*current, sentence]) > size:
            yield " ".join(current)
            carry: list[str] = []
            for previous in reversed(current):
                if _joined_len([previous, *carry]) > overlap:
                    break
                carry.insert(0, previous)
            current = carry
            while current and _joined_len([*current, sentence]) > size:
                current.pop(0)
        current.append(sentence)
    if current:
        yield " ".join(current)


Chunker = Callable[[str, int, int], Iterator[str]]
CHUNKERS: dict[str, Chunker] = {
    "fixed": chunk_fixed,
    "paragraph": chunk_paragraph,
    "sentence": chunk_sentence,
    "lightweight": chunk_paragraph,  # what the EBARS frontend's library ingestion sends
}
