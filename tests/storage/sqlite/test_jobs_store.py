"""The SQLite job store on a real file: leases fence every change, and a job's progress rides in the RAG record's
unit (``SqliteRag.record(job=...)``): both commit, or neither does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.auth import Principal
from service.sessions.models import SessionCreate
from service.storage import JobProgress, LeaseLost
from service.storage.sqlite import SqliteStorage

TEACHER = Principal(id="u-teacher", role="teacher", username="teacher", profile={})
OTHER = Principal(id="u-other", role="teacher", username="other", profile={})
ADMIN = Principal(id="u-admin", role="admin", username="admin", profile={})
LEASE_MS = 60_000


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SqliteStorage]:
    opened = SqliteStorage.at(str(tmp_path / "jobs.db"))
    await opened.open()
    yield opened
    await opened.close()


async def running_job(storage: SqliteStorage, owner: str) -> tuple[str, str]:
    """(session id, job id) of a job that ``owner`` has claimed."""
    session = await storage.sessions.create(TEACHER, SessionCreate(name="s"), max_metadata_bytes=65_536)
    stored = await storage.library.add(TEACHER, "a.md", "# a", 3, max_files=10)
    [(file_id, name)] = await storage.library.resolve(TEACHER, [stored])
    job_id = await storage.jobs.create(TEACHER, session["session_id"], [(file_id, name)], {"chunk_size": 9}, {})
    assert await storage.jobs.claimable()
    assert await storage.jobs.claim(owner, 5, lease_ms=LEASE_MS, max_attempts=5) == [job_id]
    assert not await storage.jobs.claimable()  # running under a live lease: nothing to claim
    return session["session_id"], job_id


async def test_a_progress_under_a_lost_lease_rolls_back_the_whole_record(storage: SqliteStorage) -> None:
    sid, job_id = await running_job(storage, "owner-a")
    result = {"filename": "a.md", "chunks_processed": 4, "success": True}
    stolen = JobProgress(job_id, "owner-b", LEASE_MS, result=result, chunks=4)
    with pytest.raises(LeaseLost):
        await storage.rag.record(sid, "DOCUMENTS_PROCESSED", {}, add={"document_count": 1}, job=stolen)
    session = json.loads(await storage.sessions.get(TEACHER, sid, with_events=True))
    assert session["document_count"] == 0 and [e["event_type"] for e in session["events"]] == ["SESSION_STARTED"]
    job = await storage.jobs.get(job_id)
    assert job is not None and job["results"] == [] and job["total_chunks"] == 0

    held = JobProgress(job_id, "owner-a", LEASE_MS, result=result, chunks=4)
    counters = await storage.rag.record(sid, "DOCUMENTS_PROCESSED", {}, add={"document_count": 1}, job=held)
    assert counters["document_count"] == 1
    job = await storage.jobs.get(job_id)
    assert job is not None and job["results"] == [result] and job["total_chunks"] == 4

    await storage.jobs.finish(job_id, "owner-b")  # not the owner: no effect
    job = await storage.jobs.get(job_id)
    assert job is not None and job["status"] == "running"
    await storage.jobs.finish(job_id, "owner-a")
    job = await storage.jobs.get(job_id)
    assert job is not None and job["status"] == "completed" and job["lease_owner"] is None


async def test_a_job_is_visible_to_its_creator_and_admins_only(storage: SqliteStorage) -> None:
    _, job_id = await running_job(storage, "owner-a")
    mine = await storage.jobs.get(job_id, TEACHER)
    assert mine is not None and mine["params"] == {"process": {"chunk_size": 9}, "extra": {}}
    assert mine["files"][0]["filename"] == "a.md"
    assert await storage.jobs.get(job_id, ADMIN) == mine
    assert await storage.jobs.get(job_id, OTHER) is None
    assert await storage.jobs.get("missing") is None


async def test_release_gives_running_jobs_back_to_the_queue(storage: SqliteStorage) -> None:
    _, job_id = await running_job(storage, "owner-a")
    await storage.jobs.progress(JobProgress(job_id, "owner-a", LEASE_MS, current_file="a.md"))
    await storage.jobs.release("owner-a")
    job = await storage.jobs.get(job_id)
    assert job is not None and job["status"] == "queued" and job["lease_owner"] is None
    with pytest.raises(LeaseLost):
        await storage.jobs.progress(JobProgress(job_id, "owner-a", LEASE_MS, current_file="a.md"))
    assert await storage.jobs.claim("owner-c", 5, lease_ms=LEASE_MS, max_attempts=5) == [job_id]
