"""The rag, library and jobs stores on PostgreSQL: counters in one unit with the event, fenced job progress,
claims that never hand one job to two owners, and the library's visibility rules."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service.auth import Principal
from service.errors import Conflict, NotFound
from service.sessions.models import EventsQuery, SessionCreate, SessionEnd
from service.storage.base import JobProgress, LeaseLost
from service.storage.postgres import PostgresStorage

ADMIN = Principal(id="admin-1", role="admin", username="admin", profile={})
TEACHER = Principal(id="teacher-1", role="teacher", username="t1", profile={})
OTHER = Principal(id="teacher-2", role="teacher", username="t2", profile={})
STUDENT = Principal(id="student-1", role="student", username="s1", profile={})


async def new_session(store: PostgresStorage, who: Principal = TEACHER) -> str:
    out = await store.sessions.create(who, SessionCreate(name="s"), max_metadata_bytes=65536)
    return str(out["session_id"])


async def test_rag_reads_record_and_settings(pg_storage: PostgresStorage) -> None:
    sid = await new_session(pg_storage)
    assert (await pg_storage.rag.session_for_read(STUDENT, sid))["status"] == "ACTIVE"
    with pytest.raises(NotFound):
        await pg_storage.rag.session_for_change(OTHER, sid, open_only=False)
    change = await pg_storage.rag.session_for_change(TEACHER, sid, open_only=True)
    assert change["counters"] == {"document_count": 0, "total_chunks": 0, "query_count": 0, "questions_generated": 0}

    counters = await pg_storage.rag.record(
        sid, "DOCUMENTS_PROCESSED", {"files": 2}, add={"document_count": 2, "total_chunks": 10}, embedding_model="m1"
    )
    assert counters["document_count"] == 2 and counters["total_chunks"] == 10
    counters = await pg_storage.rag.record(
        sid, "RAG_QUERY", {}, add={"query_count": 1}, assign={"total_chunks": 3}, embedding_model="m2"
    )
    assert counters == {"document_count": 2, "total_chunks": 3, "query_count": 1, "questions_generated": 0}
    read = await pg_storage.rag.session_for_read(TEACHER, sid)
    assert read["rag_settings"] == {"embedding_model": "m1"}  # the first model stays

    settings = await pg_storage.rag.patch_rag_settings(TEACHER, sid, {"top_k": 4, "embedding_model": None})
    assert settings == {"top_k": 4}
    with pytest.raises(NotFound):
        await pg_storage.rag.patch_rag_settings(STUDENT, sid, {"top_k": 1})
    events = await pg_storage.sessions.list_events(TEACHER, sid, EventsQuery(), after=0)
    assert [e["event_type"] for e in events.events][1:] == ["DOCUMENTS_PROCESSED", "RAG_QUERY", "RAG_SETTINGS_UPDATED"]

    await pg_storage.sessions.end(TEACHER, sid, SessionEnd(end_state=0))
    with pytest.raises(Conflict):
        await pg_storage.rag.session_for_change(TEACHER, sid, open_only=True)
    await pg_storage.sessions.delete(TEACHER, sid)
    with pytest.raises(NotFound):
        await pg_storage.rag.record(sid, "RAG_QUERY", {}, add={"query_count": 1})


async def test_library_visibility_names_and_limits(pg_storage: PostgresStorage) -> None:
    lib = pg_storage.library
    assert await lib.add(TEACHER, "a.md", "alpha", 5, max_files=3) == "a.md"
    assert await lib.add(TEACHER, "a.md", "again", 5, max_files=3) == "a_1.md"
    assert await lib.add(OTHER, "a.md", "other", 5, max_files=3) == "a.md"
    assert await lib.add(ADMIN, "b.md", "ü", 2, max_files=3) == "b.md"
    with pytest.raises(Conflict):
        await asyncio.gather(*(lib.add(TEACHER, "c.md", "x", 1, max_files=3) for _ in range(2)))
    assert await lib.names(TEACHER) == ["a.md", "a_1.md", "c.md"]
    assert len(await lib.names(ADMIN)) == 5
    assert await lib.content(ADMIN, "a.md") == "alpha"  # no own file of that name: the earliest
    assert await lib.content(OTHER, "a.md") == "other"
    with pytest.raises(NotFound):
        await lib.content(OTHER, "a_1.md")
    docs = await lib.documents(TEACHER, ["a_1.md", "a.md"])
    assert docs == [("a_1.md", "again", 5), ("a.md", "alpha", 5)]
    with pytest.raises(NotFound) as missing:
        await lib.resolve(TEACHER, ["a.md", "b.md", "zz.md"])
    assert missing.value.details == {"missing": ["b.md", "zz.md"]}
    ((file_id, _),) = await lib.resolve(ADMIN, ["b.md"])
    assert await lib.file(file_id) == ("ü", 2)
    await lib.delete(TEACHER, "a.md")
    assert await lib.file(file_id) is not None
    assert await lib.delete_all(TEACHER) == 2
    assert await lib.delete_all(ADMIN) == 2
    assert await lib.file(file_id) is None


async def _job(store: PostgresStorage, sid: str) -> str:
    return await store.jobs.create(TEACHER, sid, [(1, "a.md"), (2, "b.md")], {"chunk_size": 500}, {"note": 1})


async def test_job_claims_never_overlap_and_progress_is_fenced(pg_storage: PostgresStorage) -> None:
    jobs = pg_storage.jobs
    sid = await new_session(pg_storage)
    ids = [await _job(pg_storage, sid) for _ in range(6)]
    assert await jobs.claimable()
    first, second = await asyncio.gather(
        jobs.claim("owner-a", 4, lease_ms=60_000, max_attempts=5),
        jobs.claim("owner-b", 4, lease_ms=60_000, max_attempts=5),
    )
    assert not set(first) & set(second) and sorted(first + second) == sorted(ids)
    assert not await jobs.claimable()

    job = first[0]
    await jobs.progress(JobProgress(job, "owner-a", 60_000, current_file="a.md"))
    with pytest.raises(LeaseLost):
        await jobs.progress(JobProgress(job, "owner-b", 60_000, current_file="b.md"))
    # a record riding on a lost lease writes nothing, neither the progress nor the counters
    with pytest.raises(LeaseLost):
        await pg_storage.rag.record(
            sid, "DOCUMENTS_PROCESSED", {}, add={"total_chunks": 5}, job=JobProgress(job, "owner-b", 60_000, chunks=5)
        )
    counters = await pg_storage.rag.record(
        sid,
        "DOCUMENTS_PROCESSED",
        {},
        add={"total_chunks": 7},
        job=JobProgress(job, "owner-a", 60_000, result={"filename": "a.md", "chunks_processed": 7}, chunks=7),
    )
    assert counters["total_chunks"] == 7
    await jobs.progress(JobProgress(job, "owner-a", 60_000, error={"filename": "b.md", "error": "bad"}))
    await jobs.finish(job, "owner-a")
    row = await jobs.get(job, TEACHER)
    assert row is not None and row["status"] == "completed_with_errors"
    assert row["results"] == [{"filename": "a.md", "chunks_processed": 7}] and row["total_chunks"] == 7
    assert row["params"] == {"process": {"chunk_size": 500}, "extra": {"note": 1}}
    assert row["files"] == [{"id": 1, "filename": "a.md"}, {"id": 2, "filename": "b.md"}]
    assert await jobs.get(job, OTHER) is None and await jobs.get(job, ADMIN) is not None

    await jobs.fail(first[1], "owner-a", "boom")
    failed = await jobs.get(first[1])
    assert failed is not None and failed["status"] == "failed" and failed["errors"][-1]["error"] == "boom"
    await jobs.release("owner-b")
    assert sorted(await jobs.claim("owner-c", 10, lease_ms=60_000, max_attempts=5)) == sorted(second)


async def test_an_expired_lease_is_claimed_again_until_attempts_run_out(pg_storage: PostgresStorage) -> None:
    jobs = pg_storage.jobs
    sid = await new_session(pg_storage)
    job = await _job(pg_storage, sid)
    # a claim of a running job whose lease lapsed counts an attempt (its runner died); the first claim does not
    assert await jobs.claim("dead-1", 1, lease_ms=-1, max_attempts=1) == [job]  # its lease already lapsed
    assert await jobs.claimable()
    assert await jobs.claim("dead-2", 1, lease_ms=-1, max_attempts=1) == [job]
    with pytest.raises(LeaseLost):
        await jobs.progress(JobProgress(job, "dead-1", 60_000))
    assert await jobs.claim("next", 1, lease_ms=60_000, max_attempts=1) == []  # out of attempts: failed instead
    row = await jobs.get(job)
    assert row is not None and row["status"] == "failed" and row["attempts"] == 1
    assert row["errors"][-1]["error"] == "the process running it died too many times"


async def test_a_claim_skips_rows_another_transaction_holds(pg_storage: PostgresStorage, pg_dsn: str) -> None:
    jobs = pg_storage.jobs
    sid = await new_session(pg_storage)
    held, free = await _job(pg_storage, sid), await _job(pg_storage, sid)
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM ingestion_jobs WHERE job_id = $1 FOR UPDATE", held)
            assert await jobs.claim("owner", 5, lease_ms=60_000, max_attempts=5) == [free]  # no wait on `held`
    finally:
        await conn.close()


async def test_downstream_text_with_a_nul_is_stored_with_a_replacement_character(pg_storage: PostgresStorage) -> None:
    """jsonb cannot hold NUL: an answer or error message from downstream carrying one must not turn the write into
    a 500 (SQLite stores it as is). Validation already refuses a NUL in what clients send, on both engines."""
    sid = await new_session(pg_storage)
    counters = await pg_storage.rag.record(
        sid, "RAG_QUERY", {"model_used": "m\x00x", "escaped": "a\\u0000b"}, add={"query_count": 1}
    )
    assert counters["query_count"] == 1
    page = await pg_storage.sessions.list_events(TEACHER, sid, EventsQuery(), after=0)
    data = page.events[-1]["event_data"]
    assert data == {"model_used": "m\ufffdx", "escaped": "a\\u0000b"}  # an escaped backslash stays as it was
    job = await _job(pg_storage, sid)
    assert await pg_storage.jobs.claim("owner-n", 1, lease_ms=60_000, max_attempts=5) == [job]
    change = JobProgress(job, "owner-n", 60_000, error={"filename": "a.md", "error": "rag said \x00"})
    await pg_storage.jobs.progress(change)
    await pg_storage.jobs.fail(job, "owner-n", "internal \x00 error")
    row = await pg_storage.jobs.get(job)
    assert row is not None
    assert [e["error"] for e in row["errors"]] == ["rag said \ufffd", "internal \ufffd error"]
