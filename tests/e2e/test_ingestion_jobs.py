"""Durable ingestion jobs, called as the EBARS frontend calls them, against SQLite or PostgreSQL and the devstack.

Source: ``frontend/lib/api.ts`` of github.com/EngindalgaMaku/ebars: ``addMarkdownDocumentsToSession`` posts a
FormData to ``/documents/process-and-store-batch`` and the batch status function polls
``/documents/process-and-store-batch/status/{job_id}`` until the job is done. Through the Next.js ``/api``
rewrite, so the paths carry ``/api``; the bearer token is the only addition the gateway requires.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sessions_kit import db_path, error_of, sql

from devstack.app import create_app as create_devstack
from devstack.settings import DevstackSettings
from service.library import jobs
from support.inprocess import AppGatewayFactory, InProcessServer
from support.servers import ServerThread, auth
from support.session_view import counters_of

pytestmark = pytest.mark.engines

DOCS = {
    "bio.md": "# Photosynthesis\n\nChlorophyll absorbs blue and red light.\n\nThe Calvin cycle fixes CO2.\n",
    "chem.md": "# Bonds\n\nCovalent bonds share electrons.\n\nIonic bonds transfer them.\n\nMetals share a sea.\n",
}
BIG = "# Long\n\n" + "A sentence about cells and their parts. " * 20 + "\n"  # over the small devstack's limit


def frontend_batch(session_id: str, names: list[str], **overrides: str) -> dict[str, Any]:
    # api.ts addMarkdownDocumentsToSession(sessionId, filenames, embeddingModel): a FormData with exactly these
    # fields (the names as JSON.stringify(filenames), numbers as strings), POSTed to
    # `${getApiUrl()}/documents/process-and-store-batch`. The old gateway's further form fields
    # (use_llm_post_processing, llm_model_name) are optional; tests add them through ``overrides``.
    fields = {
        "session_id": session_id,
        "markdown_files": json.dumps(names),
        "chunk_strategy": "lightweight",
        "chunk_size": "800",
        "chunk_overlap": "100",
        "embedding_model": "nomic-embed-text",
        **overrides,
    }
    # sent as multipart/form-data, as a browser sends a FormData (plain fields, no file parts)
    return {"files": _parts(fields)}


def _parts(fields: dict[str, str]) -> list[tuple[str, tuple[None, bytes]]]:
    return [(k, (None, v.encode())) for k, v in fields.items()]


async def upload(client: httpx.AsyncClient, name: str, text: str, role: str = "teacher") -> None:
    r = await client.post(
        "/api/documents/upload-markdown", headers=auth(role), files={"file": (name, text.encode(), "text/markdown")}
    )
    assert r.status_code == 200, r.text


async def new_session(client: httpx.AsyncClient, role: str = "teacher") -> str:
    r = await client.post("/api/sessions", headers=auth(role), json={"name": "Jobs", "category": "biology"})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["session_id"])


async def start(client: httpx.AsyncClient, sid: str, names: list[str], role: str = "teacher") -> httpx.Response:
    return await client.post("/api/documents/process-and-store-batch", headers=auth(role), **frontend_batch(sid, names))


async def poll(client: httpx.AsyncClient, job_id: str, role: str = "teacher", timeout_s: float = 20) -> dict[str, Any]:
    """As the frontend's polling (getBatchProcessingStatus and the session page's pollStatus) does: the status
    route with ``?session_id=`` (ignored here: a job is found by its id), until no longer queued or running."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        r = await client.get(
            f"/api/documents/process-and-store-batch/status/{job_id}", headers=auth(role), params={"session_id": "x"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True
        job: dict[str, Any] = body["job"]
        if job["status"] not in ("queued", "running"):
            return job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.05)


async def job_rows(gateway: InProcessServer) -> int:
    [(count,)] = await sql(db_path(gateway), "SELECT count(*) FROM ingestion_jobs")
    return int(count)


async def test_frontend_batch_ingests_and_polls_to_completion(client: httpx.AsyncClient) -> None:
    for name, text in DOCS.items():
        await upload(client, name, text)
    sid = await new_session(client)
    r = await start(client, sid, list(DOCS))
    assert r.status_code == 200, r.text
    started = r.json()
    assert started["success"] is True and started["total_files"] == 2 and isinstance(started["message"], str)
    job = await poll(client, started["job_id"])
    assert job["job_id"] == started["job_id"] and job["session_id"] == sid
    assert job["status"] == "completed"
    assert job["total_files"] == 2 and job["processed_successfully"] == 2 and job["errors_count"] == 0
    assert job["current_file"] is None and job["errors"] == []
    assert job["started_at"] is not None and job["completed_at"] is not None
    assert job["started_at"] <= job["completed_at"]
    assert [r["filename"] for r in job["results"]] == list(DOCS)
    assert all(r["success"] is True and r["chunks_processed"] > 0 for r in job["results"])
    assert job["total_chunks"] == sum(r["chunks_processed"] for r in job["results"])
    session = (await client.get(f"/api/sessions/{sid}", headers=auth("teacher"))).json()
    counters = counters_of(session)
    assert counters["document_count"] == 2 and counters["total_chunks"] == job["total_chunks"]
    # an admin sees the job; another teacher and a student do not
    assert (await poll(client, started["job_id"], role="admin"))["status"] == "completed"
    error_of(
        await client.get(f"/api/documents/process-and-store-batch/status/{job['job_id']}", headers=auth("teacher2")),
        404,
    )
    r = await client.get(f"/api/documents/process-and-store-batch/status/{job['job_id']}", headers=auth("student"))
    error_of(r, 403)
    error_of(await client.get("/api/documents/process-and-store-batch/status/nope", headers=auth("teacher")), 404)


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("unknown-file", 404),
        ("others-session", 404),
        ("missing-session", 404),
        ("student", 403),
        ("too-many", 422),
        ("bad-json", 422),
        ("not-a-list", 422),
    ],
)
async def test_invalid_batches_create_nothing(make_app_gateway: AppGatewayFactory, case: str, status: int) -> None:
    gateway = await make_app_gateway(max_upload_files=2)
    async with gateway.client(timeout=30) as client:
        await upload(client, "bio.md", DOCS["bio.md"])
        sid = await new_session(client)
        theirs = await new_session(client, role="teacher2")
        headers = auth("student" if case == "student" else "teacher")
        names = {"unknown-file": ["bio.md", "ghost.md"], "too-many": ["bio.md", "a.md", "b.md"]}.get(case, ["bio.md"])
        target = {"others-session": theirs, "missing-session": "no-such-session"}.get(case, sid)
        overrides = {"bad-json": {"markdown_files": "[bio.md"}, "not-a-list": {"markdown_files": '"bio.md"'}}
        r = await client.post(
            "/api/documents/process-and-store-batch",
            headers=headers,
            **frontend_batch(target, names, **overrides.get(case, {})),
        )
        body = error_of(r, status)
        if case == "unknown-file":
            assert body["details"]["missing"] == ["ghost.md"]
        assert await job_rows(gateway) == 0


@pytest.fixture
def small_devstack() -> Iterator[ServerThread]:
    """A devstack refusing documents over 200 characters (413): one file of a batch fails, downstream."""
    server = ServerThread(create_devstack(DevstackSettings(max_document_chars=200))).start()
    yield server
    server.stop()


async def test_one_file_failing_downstream(
    make_app_gateway: AppGatewayFactory, small_devstack: ServerThread, tmp_path: Path
) -> None:
    url = small_devstack.url
    gateway = await make_app_gateway(rag_service_url=url)
    async with gateway.client(timeout=30) as client:
        await upload(client, "bio.md", DOCS["bio.md"])
        await upload(client, "big.md", BIG)
        sid = await new_session(client)
        r = await start(client, sid, ["bio.md", "big.md"])
        job = await poll(client, r.json()["job_id"])
        assert job["status"] == "completed_with_errors"
        assert job["processed_successfully"] == 1 and job["errors_count"] == 1
        assert [e["filename"] for e in job["errors"]] == ["big.md"] and job["errors"][0]["error"]
        counters = counters_of((await client.get(f"/api/sessions/{sid}", headers=auth("teacher"))).json())
        assert counters["document_count"] == 1 and counters["total_chunks"] == job["total_chunks"] > 0
        # every file failing: failed, counters untouched
        sid2 = await new_session(client)
        job = await poll(client, (await start(client, sid2, ["big.md"])).json()["job_id"])
        assert job["status"] == "failed" and job["processed_successfully"] == 0 and job["errors_count"] == 1
        counters = counters_of((await client.get(f"/api/sessions/{sid2}", headers=auth("teacher"))).json())
        assert counters["document_count"] == 0 and counters["total_chunks"] == 0


async def test_two_apps_on_one_database_run_each_job_once(make_app_gateway: AppGatewayFactory) -> None:
    first = await make_app_gateway(ingestion_poll_interval_s=0.05)
    second = await make_app_gateway(ingestion_poll_interval_s=0.05)
    async with first.client(timeout=30) as a, second.client(timeout=30) as b:
        target = first.state["ctx"].storage.target_schema_version
        for app in (a, b):  # one schema, migrated once, current for both
            assert (await app.get("/health/ready")).json()["schema_version"] == target
        for name, text in DOCS.items():
            await upload(a, name, text)
        sid = await new_session(a)
        ids = [(await start(a if i % 2 else b, sid, list(DOCS))).json()["job_id"] for i in range(6)]
        jobs = [await poll(b if i % 2 else a, job_id) for i, job_id in enumerate(ids)]  # polled from the other app
        assert all(j["status"] == "completed" and j["processed_successfully"] == 2 for j in jobs)
        counters = counters_of((await a.get(f"/api/sessions/{sid}", headers=auth("teacher"))).json())
        # each job ran exactly once: two documents per job, no more
        assert counters["document_count"] == 12
        assert counters["total_chunks"] == sum(j["total_chunks"] for j in jobs)


@pytest.mark.usefixtures("reset_devstack")
async def test_shutdown_leaves_the_job_resumable(make_app_gateway: AppGatewayFactory, devstack: ServerThread) -> None:
    """Stopping the app mid-job gives the job back (queued, no lease); the next app on the file finishes it."""
    names = [f"slow{i}.md" for i in range(4)]
    first = await make_app_gateway(ingestion_poll_interval_s=0.05)
    async with first.client(timeout=30) as client, httpx.AsyncClient(base_url=devstack.url) as control:
        for name in names:
            await upload(client, name, DOCS["bio.md"])
        sid = await new_session(client)
        r = await control.post("/_control", json={"latency_ms": 300, "fault_paths": ["/process-and-store"]})
        assert r.status_code == 200
        job_id = (await start(client, sid, names)).json()["job_id"]
        for _ in range(400):  # until one file is done (at most 20 s)
            if (await poll_once(client, job_id))["processed_successfully"] >= 1:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no file was ingested")
    await first.stop()
    [(status, lease, results)] = await sql(
        db_path(first), "SELECT status, lease_owner, results FROM ingestion_jobs WHERE job_id = ?", job_id
    )
    assert status == "queued" and lease is None and 1 <= len(json.loads(results)) < len(names)
    second = await make_app_gateway(ingestion_poll_interval_s=0.05)
    async with second.client(timeout=30) as client:
        job = await poll(client, job_id)
        assert job["status"] == "completed" and [r["filename"] for r in job["results"]] == names
        counters = counters_of((await client.get(f"/api/sessions/{sid}", headers=auth("teacher"))).json())
        assert counters["document_count"] == len(names) and counters["total_chunks"] == job["total_chunks"]


async def poll_once(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/documents/process-and-store-batch/status/{job_id}", headers=auth("teacher"))
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()["job"]
    return job


async def test_a_job_abandoned_too_often_fails_with_a_reason(make_app_gateway: AppGatewayFactory) -> None:
    """A job whose processes keep dying on it (lease lapsed, ``MAX_ATTEMPTS`` takeovers) fails, never loops."""
    first = await make_app_gateway()
    async with first.client(timeout=30) as client:
        await upload(client, "bio.md", DOCS["bio.md"])
        sid = await new_session(client)
    await first.stop()  # no runner while the row is set up
    path = db_path(first)
    [(file_id,)] = await sql(path, "SELECT id FROM library_files")
    await sql(
        path,
        "INSERT INTO ingestion_jobs (job_id, owner_id, owner_role, session_id, status, params, files, lease_owner, "
        "lease_until, attempts, created_at, started_at) VALUES ('dying', 'teacher-1', 'teacher', ?, 'running', ?, ?, "
        "'gone', 1, ?, 1, 1)",
        sid,
        json.dumps({"process": {"chunk_size": 1000, "chunk_overlap": 100}, "extra": {}}),
        json.dumps([{"id": file_id, "filename": "bio.md"}]),
        jobs.MAX_ATTEMPTS,
    )
    [(owner,)] = await sql(path, "SELECT user_id FROM sessions WHERE session_id = ?", sid)
    await sql(path, "UPDATE ingestion_jobs SET owner_id = ? WHERE job_id = 'dying'", owner)
    second = await make_app_gateway(ingestion_poll_interval_s=0.05)
    async with second.client(timeout=30) as client:
        job = await poll(client, "dying")
        assert job["status"] == "failed" and job["processed_successfully"] == 0
        assert job["errors"] == [{"filename": "", "error": "the process running it died too many times"}]
        counters = counters_of((await client.get(f"/api/sessions/{sid}", headers=auth("teacher"))).json())
        assert counters["document_count"] == 0
