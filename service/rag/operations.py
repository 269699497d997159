"""RAG actions: check the session, call the downstream, record the event and counters."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.auth import Principal
from service.downstream import Downstream, DownstreamError
from service.downstream.client import SERVICES, DownstreamBadAnswer
from service.errors import (
    ApiError,
    BadGateway,
    Conflict,
    GatewayTimeout,
    ServiceUnavailable,
    ValidationFailed,
    session_not_open,
)
from service.rag import precedence, questions
from service.rag.models import STYLE_KEYS, GenerateQuestionsRequest, ProcessForm, RagQueryRequest, ReprocessRequest
from service.sessions.domain import OPEN_STATUSES
from service.settings import Settings
from service.storage import JobProgress, Storage

MAX_SUGGESTIONS = 10
MAX_SUGGESTION_CHARS = 500
# One chunk listing is bounded: the RAG service returns at most this many (and the total it holds).
MAX_LISTED_CHUNKS = 10_000


def collection_name(session_id: str) -> str:
    return f"session_{session_id}"


def _source(raw: dict[str, Any]) -> dict[str, Any]:
    """One downstream source in the answer's shape: its text as ``content`` (the field the web frontend prints;
    older RAG services call it ``chunk_text``) and a finite ``score`` (0.0 when missing or not a number)."""
    text = next((raw[k] for k in ("content", "chunk_text", "text") if isinstance(raw.get(k), str)), "")
    score = raw.get("score")
    if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
        score = 0.0
    metadata = raw.get("metadata")
    return {
        "content": text,
        "chunk_text": text,
        "score": float(score),
        "metadata": metadata if isinstance(metadata, dict) else None,
    }


def _chunk(raw: dict[str, Any], position: int) -> dict[str, Any]:
    """A downstream chunk as the frontend's ``Chunk``: name and index from its metadata (the listing position
    when the RAG service gives no index), its text from ``chunk_text`` (else ``content``/``text``)."""
    given = raw.get("metadata")
    metadata: dict[str, Any] = given if isinstance(given, dict) else {}
    text = next((raw[k] for k in ("chunk_text", "content", "text") if isinstance(raw.get(k), str)), "")
    name = metadata.get("filename") or metadata.get("source_file")
    index = metadata.get("chunk_index")
    return {
        "document_name": name if isinstance(name, str) else "",
        "chunk_index": index if isinstance(index, int) and not isinstance(index, bool) else position,
        "chunk_text": text,
        "chunk_metadata": metadata,
    }


def _suggestions(raw: Any) -> list[str]:
    """The RAG service's follow-up questions, if any: non-blank strings only, bounded in number and length."""
    if not isinstance(raw, list):
        return []
    found = [s.strip()[:MAX_SUGGESTION_CHARS] for s in raw if isinstance(s, str) and s.strip()]
    return found[:MAX_SUGGESTIONS]


@dataclass(slots=True)
class Rag:
    settings: Settings
    storage: Storage
    downstream: Downstream

    def _forward(self, authorization: str | None) -> dict[str, str]:
        if self.settings.forward_authorization and authorization:
            return {"Authorization": authorization}
        return {}

    async def _open_session(self, principal: Principal, session_id: str) -> dict[str, Any]:
        session = await self.storage.rag.session_for_read(principal, session_id)
        if session["status"] not in OPEN_STATUSES:
            raise session_not_open(session_id, session["status"])
        return session

    async def query(
        self, principal: Principal, body: RagQueryRequest, authorization: str | None = None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        session = await self._open_session(principal, body.session_id)
        used = precedence.effective(
            body.model_dump(),
            body.model_fields_set,
            session["rag_settings"],
            precedence.service_defaults(self.settings),
        )
        history = body.conversation_history or []
        payload = {
            "session_id": body.session_id,
            "collection_name": collection_name(body.session_id),
            "query": body.query,
            **used,
            "max_tokens": body.max_tokens if body.max_tokens is not None else self.settings.rag_default_max_tokens,
            "conversation_history": [t.model_dump() for t in history],
            **{k: getattr(body, k) for k in STYLE_KEYS},
        }
        downstream_started = time.perf_counter()
        reply = await self.downstream.call(
            "rag", "POST", "/query", json_body=payload, headers=self._forward(authorization)
        )
        latency_ms = round((time.perf_counter() - downstream_started) * 1000, 2)
        answer = reply.body
        if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
            raise DownstreamBadAnswer("rag service answer has no 'answer'", details={"service": "rag"})
        raw_sources = answer.get("sources")
        sources = [_source(s) for s in raw_sources if isinstance(s, dict)] if isinstance(raw_sources, list) else []
        await self.storage.rag.record(
            body.session_id,
            "RAG_QUERY",
            {"query": body.query[:500], "latency_ms": latency_ms, "source_count": len(sources), "settings": used},
            add={"query_count": 1},
        )
        return {
            "session_id": body.session_id,
            "answer": answer["answer"],
            "sources": sources,
            "chain_type": answer.get("chain_type", used["chain_type"]),
            "settings_used": used,
            "latency_ms": latency_ms,
            "processing_time_ms": round((time.perf_counter() - started) * 1000),
            "suggestions": _suggestions(answer.get("suggestions")),
        }

    async def chunks(self, principal: Principal, session_id: str, authorization: str | None = None) -> dict[str, Any]:
        """The session's chunks from the RAG service, in the EBARS ``Chunk`` shape; any session you may see,
        ended ones included (reading chunks changes nothing)."""
        await self.storage.rag.session_for_read(principal, session_id)
        reply = await self.downstream.call(
            "rag",
            "GET",
            f"/sessions/{session_id}/chunks?limit={MAX_LISTED_CHUNKS}",
            headers=self._forward(authorization),
        )
        raw = reply.body.get("chunks") if isinstance(reply.body, dict) else None
        if not isinstance(raw, list):
            raise DownstreamBadAnswer("rag service chunks answer is malformed", details={"service": "rag"})
        chunks = [_chunk(c, i) for i, c in enumerate(raw[:MAX_LISTED_CHUNKS]) if isinstance(c, dict)]
        total = reply.body.get("total_count")
        if not isinstance(total, int) or isinstance(total, bool) or total < len(chunks):
            total = len(chunks)
        return {"session_id": session_id, "chunks": chunks, "total_count": total}

    async def generate_questions(
        self, principal: Principal, session_id: str, body: GenerateQuestionsRequest, authorization: str | None = None
    ) -> dict[str, Any]:
        await self._open_session(principal, session_id)
        headers = self._forward(authorization)
        reply = await self.downstream.call("rag", "GET", f"/sessions/{session_id}/chunks", headers=headers)
        chunks = reply.body.get("chunks") if isinstance(reply.body, dict) else None
        if not isinstance(chunks, list):
            raise DownstreamBadAnswer("rag service chunks answer is malformed", details={"service": "rag"})
        context, used = questions.build_context(
            (c for c in chunks if isinstance(c, Mapping)),
            max_chars=self.settings.question_context_max_chars,
            max_chunks=self.settings.question_context_max_chunks,
        )
        if not context:
            raise Conflict("the session has no processed documents to ask about", details={"session_id": session_id})
        reply = await self.downstream.call(
            "question",
            "POST",
            "/models/generate",
            json_body={
                "prompt": questions.build_prompt(context, body.count),
                "model": self.settings.question_model,
                "temperature": 0.7,
                "max_tokens": 128 * body.count,
            },
            headers=headers,
        )
        text = reply.body.get("response") if isinstance(reply.body, dict) else None
        if not isinstance(text, str):
            raise DownstreamBadAnswer("question service answer has no 'response'", details={"service": "question"})
        found = questions.parse_questions(text, body.count)
        if not found:
            raise BadGateway(
                "question service answer contained no questions",
                details={"service": "question", "excerpt": text[:300]},
            )
        model_used = reply.body.get("model_used")
        await self.storage.rag.record(
            session_id,
            "QUESTIONS_GENERATED",
            {"requested": body.count, "returned": len(found), "model_used": model_used, "context_chunks": used},
            add={"questions_generated": len(found)},
        )
        return {
            "session_id": session_id,
            "questions": found,
            "count": len(found),
            "model_used": model_used,
            "context_chunks": used,
            "context_chars": len(context),
        }

    async def process_documents(
        self,
        principal: Principal,
        form: ProcessForm,
        files: list[tuple[str, str, int]],
        authorization: str | None = None,
        *,
        library_names: list[str] | None = None,
        job: JobProgress | Callable[[list[dict[str, Any]]], JobProgress] | None = None,
    ) -> dict[str, Any]:
        """``files`` are (filename, text, bytes), or ``library_names`` name the caller's library files (read after
        the session check, so a session you may not change is a 404 first). Each goes downstream with bounded
        concurrency; the counters count only what succeeded, in one write after the downstream answers. ``job``
        (an ingestion job's progress, or a function from the per-file results to it) is applied in that write, so
        a crash cannot split them; ``LeaseLost`` there writes nothing."""
        session = await self.storage.rag.session_for_change(principal, form.session_id, open_only=True)
        if library_names is not None:
            files = await self.storage.library.documents(principal, library_names)
        embedding = form.embedding_model or session["rag_settings"].get("embedding_model")
        embedding = embedding or self.settings.rag_default_embedding_model
        gate = asyncio.Semaphore(4)
        headers = self._forward(authorization)

        async def one(filename: str, text: str, size: int) -> dict[str, Any]:
            async with gate:
                try:
                    reply = await self.downstream.call(
                        "rag",
                        "POST",
                        "/process-and-store",
                        json_body={
                            "text": text,
                            "metadata": {"session_id": form.session_id, "filename": filename},
                            "collection_name": collection_name(form.session_id),
                            "chunk_size": form.chunk_size,
                            "chunk_overlap": form.chunk_overlap,
                            "chunk_strategy": form.chunk_strategy,
                            "embedding_model": embedding,
                        },
                        headers=headers,
                    )
                except DownstreamError as exc:
                    return {
                        "filename": filename,
                        "success": False,
                        "bytes": size,
                        "chunks_processed": 0,
                        "error": {"status": exc.status, "message": exc.message},
                    }
            body = reply.body if isinstance(reply.body, dict) else {}
            chunks = body.get("chunks_processed")
            if body.get("success") is not True or not isinstance(chunks, int) or chunks < 0:
                return {
                    "filename": filename,
                    "success": False,
                    "bytes": size,
                    "chunks_processed": 0,
                    "error": {"status": 502, "message": "rag service did not confirm the document"},
                }
            return {"filename": filename, "success": True, "bytes": size, "chunks_processed": chunks, "error": None}

        results = await asyncio.gather(*(one(*f) for f in files))
        ok = [r for r in results if r["success"]]
        chunks_total = sum(r["chunks_processed"] for r in ok)
        if not ok:
            # Every file failed: when they all failed the same way (downstream unreachable or timing out), say so.
            statuses = {r["error"]["status"] for r in results}
            failure = {503: ServiceUnavailable, 504: GatewayTimeout}.get(statuses.pop()) if len(statuses) == 1 else None
            raise (failure or BadGateway)("no document was processed", details={"files": results})
        counters = await self.storage.rag.record(
            form.session_id,
            "DOCUMENTS_PROCESSED",
            {
                "files": [
                    {k: r[k] for k in ("filename", "success", "chunks_processed", "bytes", "error")} for r in results
                ],
                "chunk_size": form.chunk_size,
                "chunk_overlap": form.chunk_overlap,
                "chunk_strategy": form.chunk_strategy,
                "embedding_model": embedding,
            },
            add={"document_count": len(ok), "total_chunks": chunks_total},
            embedding_model=embedding,
            job=job(results) if callable(job) else job,
        )
        return {
            "session_id": form.session_id,
            "success": True,
            "message": f"{len(ok)} of {len(results)} documents processed, {chunks_total} chunks added",
            "processed_count": len(ok),
            "total_chunks_added": chunks_total,
            "files": results,
            "succeeded": len(ok),
            "failed": len(results) - len(ok),
            "chunks_processed": chunks_total,
            "document_count": counters["document_count"],
            "total_chunks": counters["total_chunks"],
        }

    async def reprocess(
        self, principal: Principal, session_id: str, body: ReprocessRequest, authorization: str | None = None
    ) -> dict[str, Any]:
        """Re-chunk the session's documents (``source_files``: only those). The session's documents are the
        ones the RAG service reports for it (the file names in its chunk listing): it holds what is re-chunked,
        whoever stored it; a name outside them is a 422 naming it, and nothing is re-chunked."""
        session = await self.storage.rag.session_for_change(principal, session_id, open_only=True)
        embedding = body.embedding_model or session["rag_settings"].get("embedding_model")
        embedding = embedding or self.settings.rag_default_embedding_model
        headers = self._forward(authorization)
        wanted = list(dict.fromkeys(body.source_files)) if body.source_files is not None else None
        if wanted is not None:
            listing = await self.chunks(principal, session_id, authorization)
            known = {c["document_name"] for c in listing["chunks"]}
            unknown = [name for name in wanted if name not in known]
            if unknown:
                raise ValidationFailed(
                    "source_files names documents the session does not have",
                    details={"unknown": [n[:200] for n in unknown]},
                )
        payload: dict[str, Any] = {
            "chunk_size": body.chunk_size,
            "chunk_overlap": body.chunk_overlap,
            "embedding_model": embedding,
        }
        if wanted is not None:
            payload["source_files"] = wanted
        reply = await self.downstream.call(
            "rag", "POST", f"/sessions/{session_id}/reprocess", json_body=payload, headers=headers
        )
        answer = reply.body if isinstance(reply.body, dict) else {}
        chunks = answer.get("chunks_processed")
        if answer.get("success") is not True or not isinstance(chunks, int):
            raise DownstreamBadAnswer("rag service did not confirm the reprocessing", details={"service": "rag"})
        files = answer.get("files")
        done = [f for f in files if isinstance(f, str)] if isinstance(files, list) else list(wanted or [])
        failed = [name for name in wanted or [] if name not in done]
        total = answer.get("total_chunks")
        if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
            assign = {"total_chunks": total}
        else:  # an older RAG service: its count is the whole session's only when everything was re-chunked
            assign = {"total_chunks": chunks} if wanted is None else {}
        counters = await self.storage.rag.record(
            session_id,
            "DOCUMENTS_REPROCESSED",
            {
                "chunk_size": body.chunk_size,
                "chunk_overlap": body.chunk_overlap,
                "embedding_model": embedding,
                "chunks_processed": chunks,
                "source_files": wanted,
                "successful_files": done[:1000],
                "failed_files": failed,
            },
            assign=assign,
            embedding_model=embedding,
        )
        return {
            "session_id": session_id,
            "success": True,
            "message": f"{len(done)} documents reprocessed, {chunks} chunks",
            "chunks_processed": chunks,
            "total_chunks": counters["total_chunks"],
            "successful_files": done,
            "failed_files": failed,
            "embedding_model": embedding,
        }

    async def rag_settings(self, principal: Principal, session_id: str) -> dict[str, Any]:
        session = await self.storage.rag.session_for_read(principal, session_id)
        return self._settings_out(session_id, session["rag_settings"])

    async def patch_rag_settings(self, principal: Principal, session_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        if patch.get("use_reranker_service") is False and "reranker_type" not in patch:
            patch = {**patch, "reranker_type": None}  # as the old gateway: no reranker service, no reranker type
        stored = await self.storage.rag.patch_rag_settings(principal, session_id, patch)
        return {**self._settings_out(session_id, stored), "success": True}

    def _settings_out(self, session_id: str, stored: dict[str, Any]) -> dict[str, Any]:
        defaults = precedence.service_defaults(self.settings)
        return {
            "session_id": session_id,
            "rag_settings": stored,
            "effective": precedence.effective({}, set(), stored, defaults),
        }

    async def services_health(self) -> dict[str, Any]:
        async def probe(service: str) -> tuple[str, dict[str, Any]]:
            url = self.downstream.base_urls[service]  # type: ignore[index]
            started = time.perf_counter()
            try:
                reply = await self.downstream.call(service, "GET", "/health", deadline_s=3.0)  # type: ignore[arg-type]
                status, detail = "ok", reply.body
            except ApiError as exc:
                status, detail = "error", {"status": exc.status, "message": exc.message}
            return service, {
                "status": status,
                "url": url,
                "detail": detail,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }

        results = dict(await asyncio.gather(*(probe(s) for s in SERVICES)))
        overall = "ok" if all(r["status"] == "ok" for r in results.values()) else "degraded"
        return {"status": overall, "services": results}
