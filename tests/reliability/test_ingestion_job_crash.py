"""An ingestion job survives its process: ``python -m service serve`` is SIGKILLed mid-job while the downstream is
slow; a restart on the same ``DATABASE_PATH`` takes the job over once its lease lapses and completes it, skipping
the files already done (none ingested twice: the session's counters and the devstack's request counts agree)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from reliability_kit import DevstackProcess, GatewayProcess, eventually, on_db

TEACHER = {"Authorization": "Bearer dev-teacher-token"}
FILES = [f"part{i}.md" for i in range(5)]
STATUS = "/api/documents/process-and-store-batch/status/"


async def job_of(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await client.get(STATUS + job_id, headers=TEACHER)
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()["job"]
    return job


async def test_killed_runner_resumes_on_restart_without_reingesting(tmp_path: Path) -> None:
    devstack = await DevstackProcess(tmp_path).start()
    gw = GatewayProcess(tmp_path, devstack.url, ingestion_poll_interval_s=0.1, ingestion_lease_s=2)
    try:
        await devstack.control(latency_ms=600, fault_paths=["/process-and-store"], reset_counts=True)
        await gw.start()
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
            for name in FILES:
                text = f"# {name}\n\nCells divide by mitosis.\n\nEach part is {name}.\n".encode()
                r = await client.post(
                    "/api/documents/upload-markdown", headers=TEACHER, files={"file": (name, text, "text/markdown")}
                )
                assert r.status_code == 200, r.text
            r = await client.post("/api/sessions", headers=TEACHER, json={"name": "crash", "category": "bio"})
            sid = r.json()["session_id"]
            # the FormData of api.ts addMarkdownDocumentsToSession, plus the old gateway's optional LLM fields
            fields = {
                "session_id": sid,
                "markdown_files": json.dumps(FILES),
                "chunk_strategy": "lightweight",
                "chunk_size": "1000",
                "chunk_overlap": "100",
                "embedding_model": "nomic-embed-text",
                "use_llm_post_processing": "false",
                "llm_model_name": "llama-3.1-8b-instant",
            }
            r = await client.post(
                "/api/documents/process-and-store-batch",
                headers=TEACHER,
                files=[(k, (None, v.encode())) for k, v in fields.items()],
            )
            assert r.status_code == 200, r.text
            job_id = r.json()["job_id"]

            async def some_done() -> bool:
                return int((await job_of(client, job_id))["processed_successfully"]) >= 2

            await eventually(some_done, 20, "two files ingested before the kill")
        await gw.kill()

        def stored(conn: Any) -> tuple[str, int]:
            row = conn.execute(
                "SELECT status, json_array_length(results) FROM ingestion_jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            return str(row[0]), int(row[1])

        status, done_before = await on_db(gw.db_path, stored)
        assert status == "running" and 2 <= done_before < len(FILES)  # left mid-way, with its lease

        await gw.start()  # same port, same database file
        async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:

            async def finished() -> bool:
                return (await job_of(client, job_id))["status"] not in ("queued", "running")

            await eventually(finished, 30, "the resumed job finishes")
            job = await job_of(client, job_id)
            assert job["status"] == "completed", job
            assert [r["filename"] for r in job["results"]] == FILES  # each file once, in order
            assert job["processed_successfully"] == len(FILES) and job["errors_count"] == 0
            session = (await client.get(f"/api/sessions/{sid}", headers=TEACHER)).json()
            assert session["document_count"] == len(FILES)
            assert session["total_chunks"] == job["total_chunks"]
        counts = (await devstack.control())["counts"]
        # the files done before the kill were not sent again; at most the one in flight at the kill was
        assert len(FILES) <= counts.get("/process-and-store", 0) <= len(FILES) + 1, counts
    finally:
        gw.close()
        devstack.close()
        await asyncio.sleep(0)
