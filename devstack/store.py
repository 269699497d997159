"""In-memory chunk store with an inverted index (devstack RAG stand-in, not product code).

All state lives in plain dicts and lists touched only from the event loop; chunking of large documents runs
in a worker thread as a pure function and its result is applied back on the loop.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

from devstack.settings import DevstackSettings
from devstack.text import CHUNKERS, terms
from devstack.web import ApiError

OFFLOAD_CHARS = 200_000  # chunk documents larger than this in a worker thread


@dataclass(slots=True, frozen=True)
class Chunk:
    text: str
    session_id: str
    metadata: dict[str, Any]
    terms: frozenset[str]


@dataclass(slots=True, frozen=True)
class Document:
    doc_id: str
    session_id: str
    filename: str
    text: str
    collection: str
    strategy: str
    chunk_size: int
    chunk_overlap: int
    embedding_model: str
    metadata: dict[str, Any]


@dataclass(slots=True, frozen=True)
class Hit:
    chunk: Chunk
    score: float


class Collection:
    """Chunks in insertion order plus ``term -> [chunk position]`` postings."""

    __slots__ = ("chunks", "postings")

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.postings: dict[str, list[int]] = {}

    def add(self, chunks: Iterable[Chunk]) -> None:
        for chunk in chunks:
            position = len(self.chunks)
            self.chunks.append(chunk)
            for term in chunk.terms:
                self.postings.setdefault(term, []).append(position)

    def count_session(self, session_id: str) -> int:
        return sum(1 for chunk in self.chunks if chunk.session_id == session_id)

    def remove_session(self, session_id: str) -> int:
        kept = [chunk for chunk in self.chunks if chunk.session_id != session_id]
        removed = len(self.chunks) - len(kept)
        if removed:
            self.chunks, self.postings = [], {}
            self.add(kept)
        return removed


def build_chunks(doc: Document, limit: int) -> list[Chunk] | None:
    """Chunk one document (pure, thread-safe); ``None`` when it yields more than ``limit`` chunks."""
    pieces = list(
        islice(
            CHUNKERS.get(doc.strategy, CHUNKERS["paragraph"])(doc.text, doc.chunk_size, doc.chunk_overlap), limit + 1
        )
    )
    if len(pieces) > limit:
        return None
    base = {
        **doc.metadata,
        "session_id": doc.session_id,
        "filename": doc.filename,
        "document_id": doc.doc_id,
        "embedding_model": doc.embedding_model,
    }
    return [
        Chunk(piece, doc.session_id, {**base, "chunk_index": index}, frozenset(terms(piece)))
        for index, piece in enumerate(pieces)
    ]


def _build_all(docs: list[Document], limit: int) -> list[list[Chunk] | None]:
    return [build_chunks(doc, limit) for doc in docs]


def idf(document_frequency: int, total: int) -> float:
    """BM25-style inverse document frequency; always positive."""
    return math.log(1.0 + (total - document_frequency + 0.5) / (document_frequency + 0.5))


class RagStore:
    def __init__(self, settings: DevstackSettings) -> None:
        self.settings = settings
        self.collections: dict[str, Collection] = {}
        self.documents: dict[str, list[Document]] = {}
        self.total_chunks = 0
        self.total_chars = 0
        self._doc_seq = 0

    def new_doc_id(self) -> str:
        self._doc_seq += 1
        return f"doc-{self._doc_seq}"

    async def _chunk(self, docs: list[Document]) -> list[list[Chunk]]:
        limit = self.settings.max_chunks_per_collection
        if sum(len(doc.text) for doc in docs) > OFFLOAD_CHARS:
            built = await asyncio.to_thread(_build_all, docs, limit)
        else:
            built = _build_all(docs, limit)
        result: list[list[Chunk]] = []
        for doc, chunks in zip(docs, built, strict=True):
            if chunks is None:
                raise ApiError(413, f"document {doc.filename!r} yields more than {limit} chunks")
            result.append(chunks)
        return result

    def _check_capacity(self, added: Counter[str], freed: Counter[str]) -> None:
        limit = self.settings.max_chunks_per_collection
        for name, count in added.items():
            collection = self.collections.get(name)
            current = len(collection.chunks) if collection else 0
            if current - freed[name] + count > limit:
                raise ApiError(413, f"collection {name!r} would exceed {limit} chunks")
        if self.total_chunks - freed.total() + added.total() > self.settings.max_total_chunks:
            raise ApiError(507, "devstack chunk store is full")

    async def add_document(self, doc: Document) -> int:
        if self.total_chars + len(doc.text) > self.settings.max_total_document_chars:
            raise ApiError(507, "devstack document store is full")
        (chunks,) = await self._chunk([doc])
        self._check_capacity(Counter({doc.collection: len(chunks)}), Counter())
        self.collections.setdefault(doc.collection, Collection()).add(chunks)
        self.documents.setdefault(doc.session_id, []).append(doc)
        self.total_chunks += len(chunks)
        self.total_chars += len(doc.text)
        return len(chunks)

    async def reprocess(
        self, session_id: str, *, files: list[str] | None = None, **changes: Any
    ) -> tuple[list[str], int, int]:
        """Re-chunk a session's stored documents with ``changes`` (only those named in ``files`` when given; the
        others keep their parameters); returns ``(names reprocessed, their chunks, the session's chunks)``."""
        docs = self.documents.get(session_id)
        if not docs:
            return [], 0, 0
        updates = {key: value for key, value in changes.items() if value is not None}
        chosen = [files is None or doc.filename in files for doc in docs]
        new_docs = [replace(doc, **updates) if pick else doc for doc, pick in zip(docs, chosen, strict=True)]
        for doc in new_docs:
            if doc.chunk_overlap >= doc.chunk_size:
                raise ApiError(422, "chunk_overlap must be smaller than chunk_size")
        built = await self._chunk(new_docs)
        if self.documents.get(session_id) is not docs:
            raise ApiError(409, "session documents changed during reprocess; retry")
        added: Counter[str] = Counter()
        for doc, chunks in zip(new_docs, built, strict=True):
            added[doc.collection] += len(chunks)
        names = {doc.collection for doc in docs}
        freed = Counter({name: self.collections[name].count_session(session_id) for name in names})
        self._check_capacity(added, freed)
        for name in names:
            self.total_chunks -= self.collections[name].remove_session(session_id)
        for doc, chunks in zip(new_docs, built, strict=True):
            self.collections.setdefault(doc.collection, Collection()).add(chunks)
            self.total_chunks += len(chunks)
        self.documents[session_id] = new_docs
        redone = sum(len(chunks) for chunks, pick in zip(built, chosen, strict=True) if pick)
        return [doc.filename for doc, pick in zip(new_docs, chosen, strict=True) if pick], redone, added.total()

    def session_chunks(self, session_id: str) -> list[Chunk]:
        names = dict.fromkeys(doc.collection for doc in self.documents.get(session_id, ()))
        return [chunk for name in names for chunk in self.collections[name].chunks if chunk.session_id == session_id]

    def delete_session(self, session_id: str) -> int:
        docs = self.documents.pop(session_id, [])
        deleted = 0
        for name in {doc.collection for doc in docs}:
            collection = self.collections[name]
            deleted += collection.remove_session(session_id)
            if not collection.chunks:
                del self.collections[name]
        self.total_chunks -= deleted
        self.total_chars -= sum(len(doc.text) for doc in docs)
        return deleted

    def clear(self) -> int:
        cleared = self.total_chunks
        self.collections.clear()
        self.documents.clear()
        self.total_chunks = self.total_chars = 0
        return cleared

    def query(
        self,
        session_id: str,
        collection_name: str,
        query: str,
        *,
        top_k: int,
        min_score: float,
        use_rerank: bool,
    ) -> list[Hit]:
        """Lexical retrieval: the idf-weighted share of query terms a chunk contains, in 0..1.

        With ``use_rerank`` the score becomes ``0.85 * lexical + 0.15 * density`` where density is the share
        of the chunk's distinct terms that are query terms (favours focused chunks).
        """
        collection = self.collections.get(collection_name)
        query_terms = dict.fromkeys(terms(query))
        if collection is None or not collection.chunks or not query_terms:
            return []
        total = len(collection.chunks)
        weights = {term: idf(len(collection.postings.get(term, ())), total) for term in query_terms}
        norm = sum(weights.values())
        raw: dict[int, float] = {}
        for term, weight in weights.items():
            for position in collection.postings.get(term, ()):
                raw[position] = raw.get(position, 0.0) + weight
        ranked: list[tuple[float, int]] = []
        for position, value in raw.items():
            chunk = collection.chunks[position]
            if chunk.session_id != session_id:
                continue
            score = value / norm
            if use_rerank:
                density = len(chunk.terms.intersection(query_terms)) / len(chunk.terms)
                score = 0.85 * score + 0.15 * density
            score = round(min(score, 1.0), 4)
            if score >= min_score:
                ranked.append((-score, position))
        best = heapq.nsmallest(top_k, ranked)
        return [Hit(collection.chunks[position], -negative) for negative, position in best]
