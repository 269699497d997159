"""Durable ingestion jobs: library files ingested into a session in the background, surviving restarts.

A job row is claimed with a lease in one write (``UPDATE ... WHERE status = 'queued' OR lease_until < now``), so
however many processes share the database file exactly one runs it; the lease is renewed while working and every
progress write is fenced on the lease owner. Each file's outcome is committed as it finishes, so a job resumed
after a crash or shutdown skips the files already done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import uuid
from typing import Any

from service.auth import Principal
from service.db import Database
from service.errors import ApiError, NotFound
from service.rag.models import ProcessForm
from service.rag.operations import Rag
from service.timeutil import iso, now_ms

log = logging.getLogger("service.jobs")

TERMINAL = ("completed", "completed_with_errors", "failed")
# A job whose process died this many times while running it (say, a file that crashes it) fails instead of
# being claimed again; a clean shutdown gives a job back without counting.
MAX_ATTEMPTS = 5


class LeaseLost(Exception):
    """This process no longer holds the job's lease (it lapsed and another process claimed the job)."""


def job_not_found(job_id: str) -> NotFound:
    return NotFound("job not found", details={"job_id": job_id[:64]})


async def create(
    db: Database,
    principal: Principal,
    session_id: str,
    files: list[tuple[int, str]],
    params: dict[str, Any],
    extra: dict[str, Any],
) -> str:
    """Insert a queued job for ``files`` ((library id, name)); its id. ``params`` go to ``process_documents``;
    ``extra`` is recorded only (the RAG service's process-and-store has no LLM post-processing)."""
    job_id = uuid.uuid4().hex
    await db.write_sql(
        "INSERT INTO ingestion_jobs (job_id, owner_id, owner_role, session_id, status, params, files, created_at) "
        "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        (
            job_id,
            principal.id,
            principal.role,
            session_id,
            json.dumps({"process": params, "extra": extra}),
            json.dumps([{"id": i, "filename": n} for i, n in files]),
            now_ms(),
        ),
    )
    return job_id


async def status(db: Database, principal: Principal, job_id: str) -> dict[str, Any]:
    """The job as the frontend polls it; 404 unless the caller created it or is an admin."""
    rows = await db.read(
        "SELECT * FROM ingestion_jobs WHERE job_id = ? AND (owner_id = ? OR ?)",
        (job_id, principal.id, principal.role == "admin"),
    )
    if not rows:
        raise job_not_found(job_id)
    row = rows[0]
    results = json.loads(row["results"])
    errors = json.loads(row["errors"])
    return {
        "job_id": row["job_id"],
        "session_id": row["session_id"],
        "status": row["status"],
        "started_at": iso(row["started_at"]),
        "completed_at": iso(row["completed_at"]),
        "created_at": iso(row["created_at"]),
        "total_files": len(json.loads(row["files"])),
        "processed_successfully": len(results),
        "errors_count": len(errors),
        "current_file": row["current_file"],
        "total_chunks": row["total_chunks"],
        "results": results,
        "errors": errors,
    }


class JobRunner:
    """Claims queued (or lease-expired) jobs and runs them, at most ``concurrency`` at once, until stopped."""

    def __init__(self, rag: Rag, *, poll_s: float, lease_s: float, concurrency: int) -> None:
        self.rag = rag
        self.db = rag.db
        self.poll_s = poll_s
        self.lease_ms = int(lease_s * 1000)
        self.concurrency = concurrency
        self.owner = uuid.uuid4().hex
        self.wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="ingestion-jobs")

    async def stop(self) -> None:
        """Cancel the loop and every job task, then give their jobs back (queued): the next start resumes them."""
        tasks = [t for t in (self._loop_task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # give the jobs back at once instead of waiting for the lease to lapse
        with contextlib.suppress(Exception):
            await self.db.write_sql(
                "UPDATE ingestion_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL "
                "WHERE lease_owner = ? AND status = 'running'",
                (self.owner,),
            )

    async def _loop(self) -> None:
        while True:
            try:
                free = self.concurrency - len(self._running)
                if free > 0 and await self._claimable():
                    for job_id in await self._claim(free):
                        task = asyncio.create_task(self._run(job_id), name=f"ingestion-job-{job_id}")
                        self._running.add(task)
                        task.add_done_callback(self._done)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database busy or closing: try again next round
                log.exception("ingestion job runner: claiming failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_s)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self.wake.set()

    async def _claimable(self) -> bool:
        """Whether a claim could find work: a read, so an idle runner takes no write lock each poll (the writer
        and its lock are shared with every request, and with the other processes on the file)."""
        rows = await self.db.read(
            "SELECT 1 FROM ingestion_jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?) LIMIT 1",
            (now_ms(),),
        )
        return bool(rows)

    async def _claim(self, limit: int) -> list[str]:
        """Claim up to ``limit`` jobs in one write transaction."""

        def run(conn: sqlite3.Connection) -> list[str]:
            now = now_ms()
            conn.execute(
                "UPDATE ingestion_jobs SET status = 'failed', completed_at = ?, current_file = NULL, "
                "lease_owner = NULL, lease_until = NULL, errors = json_insert(errors, '$[#]', json(?)) "
                "WHERE status = 'running' AND lease_until < ? AND attempts >= ?",
                (
                    now,
                    json.dumps({"filename": "", "error": "the process running it died too many times"}),
                    now,
                    MAX_ATTEMPTS,
                ),
            )
            rows = conn.execute(
                "SELECT job_id FROM ingestion_jobs WHERE status = 'queued' "
                "OR (status = 'running' AND lease_until < ?) ORDER BY created_at LIMIT ?",
                (now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                cur = conn.execute(
                    "UPDATE ingestion_jobs SET status = 'running', lease_owner = ?, lease_until = ?, "
                    "started_at = coalesce(started_at, ?), attempts = attempts + (status = 'running') "
                    "WHERE job_id = ? AND (status = 'queued' OR (status = 'running' AND lease_until < ?))",
                    (self.owner, now + self.lease_ms, now, row["job_id"], now),
                )
                if cur.rowcount == 1:
                    claimed.append(str(row["job_id"]))
            return claimed

        return await self.db.write(run)

    async def _renew(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            await self.db.write_sql(
                "UPDATE ingestion_jobs SET lease_until = ? WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
                (now_ms() + self.lease_ms, job_id, self.owner),
            )

    async def _run(self, job_id: str) -> None:
        renew = asyncio.create_task(self._renew(job_id))
        try:
            await self._work(job_id)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            log.warning("ingestion job %s: lease lost, left to the process that holds it", job_id)
        except Exception as exc:
            log.exception("ingestion job %s failed", job_id)
            with contextlib.suppress(Exception):  # failed with its reason, never left running
                await self._fail(job_id, f"internal error: {type(exc).__name__}")
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    async def _work(self, job_id: str) -> None:
        rows = await self.db.read("SELECT * FROM ingestion_jobs WHERE job_id = ?", (job_id,))
        if not rows or rows[0]["lease_owner"] != self.owner:
            return
        row = rows[0]
        principal = Principal(id=row["owner_id"], role=row["owner_role"], username="", profile={})
        params = json.loads(row["params"])["process"]
        files = json.loads(row["files"])
        done = {r["filename"] for r in json.loads(row["results"])} | {e["filename"] for e in json.loads(row["errors"])}
        # validated when the job was created; built without the upload's chunk_strategy choices (forwarded as sent)
        form = ProcessForm.model_construct(session_id=row["session_id"], **params)
        for entry in files:
            name = entry["filename"]
            if name in done:
                continue
            await self._progress(job_id, current_file=name)
            texts = await self.db.read("SELECT content, size_bytes FROM library_files WHERE id = ?", (entry["id"],))
            if not texts:
                await self._progress(job_id, error={"filename": name, "error": "the library file was deleted"})
                continue

            def done_file(conn: sqlite3.Connection, results: list[dict[str, Any]], name: str = name) -> None:
                # in the same write as the session's counters: a crash cannot count a file the job would redo
                chunks = int(results[0]["chunks_processed"])
                result = {"filename": name, "chunks_processed": chunks, "success": True}
                self._progress_sql(conn, job_id, result=result, chunks=chunks)

            try:
                await self.rag.process_documents(
                    principal, form, [(name, texts[0]["content"], texts[0]["size_bytes"])], also=done_file
                )
            except LeaseLost:
                return  # another process took the job over; it redoes this file
            except ApiError as exc:
                message = exc.message
                files_out = exc.details.get("files") if isinstance(exc.details, dict) else None
                if isinstance(files_out, list) and files_out and isinstance(files_out[0].get("error"), dict):
                    message = f"{message}: {files_out[0]['error'].get('message')}"
                await self._progress(job_id, error={"filename": name, "error": message})
        await self._finish(job_id)

    def _progress_sql(
        self,
        conn: sqlite3.Connection,
        job_id: str,
        *,
        current_file: str | None = None,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        chunks: int = 0,
    ) -> None:
        """One fenced update: raises ``LeaseLost`` (rolling back the caller's write) unless this process still
        holds the job's lease."""
        cur = conn.execute(
            "UPDATE ingestion_jobs SET current_file = coalesce(?, current_file), "
            "results = CASE WHEN ? IS NULL THEN results ELSE json_insert(results, '$[#]', json(?)) END, "
            "errors = CASE WHEN ? IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(?)) END, "
            "total_chunks = total_chunks + ?, lease_until = ? "
            "WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
            (
                current_file,
                None if result is None else 1,
                json.dumps(result),
                None if error is None else 1,
                json.dumps(error),
                chunks,
                now_ms() + self.lease_ms,
                job_id,
                self.owner,
            ),
        )
        if cur.rowcount != 1:
            raise LeaseLost(job_id)

    async def _progress(self, job_id: str, **changes: Any) -> None:
        await self.db.write(lambda conn: self._progress_sql(conn, job_id, **changes))

    async def _fail(self, job_id: str, reason: str) -> None:
        await self.db.write_sql(
            "UPDATE ingestion_jobs SET status = 'failed', current_file = NULL, completed_at = ?, "
            "errors = json_insert(errors, '$[#]', json(?)), lease_owner = NULL, lease_until = NULL "
            "WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
            (now_ms(), json.dumps({"filename": "", "error": reason}), job_id, self.owner),
        )

    async def _finish(self, job_id: str) -> None:
        await self.db.write_sql(
            "UPDATE ingestion_jobs SET status = CASE "
            "WHEN json_array_length(errors) = 0 THEN 'completed' "
            "WHEN json_array_length(results) = 0 THEN 'failed' ELSE 'completed_with_errors' END, "
            "current_file = NULL, completed_at = ?, lease_owner = NULL, lease_until = NULL "
            "WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
            (now_ms(), job_id, self.owner),
        )
