"""Durable ingestion jobs: library files ingested into a session in the background, surviving restarts.

A job is claimed with a lease (``storage.jobs.claim``), so however many processes share the database exactly one
runs it; the lease is renewed while working and every progress write is fenced on the lease owner
(``LeaseLost`` otherwise). Each file's outcome is committed as it finishes, in the same unit as the session's
counters, so a job resumed after a crash or shutdown skips the files already done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from service.auth import Principal
from service.errors import ApiError, NotFound
from service.rag.models import ProcessForm
from service.rag.operations import Rag
from service.storage import JobProgress, LeaseLost, Storage, StorageUnavailable
from service.timeutil import iso

log = logging.getLogger("service.jobs")

TERMINAL = ("completed", "completed_with_errors", "failed")
# A job whose process died this many times while running it (say, a file that crashes it) fails instead of
# being claimed again; a clean shutdown gives a job back without counting.
MAX_ATTEMPTS = 5


def job_not_found(job_id: str) -> NotFound:
    return NotFound("job not found", details={"job_id": job_id[:64]})


async def status(storage: Storage, principal: Principal, job_id: str) -> dict[str, Any]:
    """The job as the frontend polls it; 404 unless the caller created it or is an admin."""
    row = await storage.jobs.get(job_id, principal)
    if row is None:
        raise job_not_found(job_id)
    results, errors = row["results"], row["errors"]
    return {
        "job_id": row["job_id"],
        "session_id": row["session_id"],
        "status": row["status"],
        "started_at": iso(row["started_at"]),
        "completed_at": iso(row["completed_at"]),
        "created_at": iso(row["created_at"]),
        "total_files": len(row["files"]),
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
        self.storage = rag.storage
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
            await self.storage.jobs.release(self.owner)

    async def _loop(self) -> None:
        while True:
            try:
                free = self.concurrency - len(self._running)
                if free > 0 and await self.storage.jobs.claimable():
                    for job_id in await self.storage.jobs.claim(
                        self.owner, free, lease_ms=self.lease_ms, max_attempts=MAX_ATTEMPTS
                    ):
                        task = asyncio.create_task(self._run(job_id), name=f"ingestion-job-{job_id}")
                        self._running.add(task)
                        task.add_done_callback(self._done)
            except asyncio.CancelledError:
                raise
            except StorageUnavailable as exc:  # the engine down or restarting: one line a round, no traceback
                log.warning("ingestion job runner: claiming failed: %s", exc)
            except Exception:  # the database busy or closing: try again next round
                log.exception("ingestion job runner: claiming failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_s)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self.wake.set()

    async def _renew(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            await self.storage.jobs.renew(job_id, self.owner, lease_ms=self.lease_ms)

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
                await self.storage.jobs.fail(job_id, self.owner, f"internal error: {type(exc).__name__}")
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    async def _work(self, job_id: str) -> None:
        row = await self.storage.jobs.get(job_id)
        if row is None or row["lease_owner"] != self.owner:
            return
        principal = Principal(id=row["owner_id"], role=row["owner_role"], username="", profile={})
        params = row["params"]["process"]
        files = row["files"]
        done = {r["filename"] for r in row["results"]} | {e["filename"] for e in row["errors"]}
        # validated when the job was created; built without the upload's chunk_strategy choices (forwarded as sent)
        form = ProcessForm.model_construct(session_id=row["session_id"], **params)
        for entry in files:
            name = entry["filename"]
            if name in done:
                continue
            await self._progress(job_id, current_file=name)
            text = await self.storage.library.file(entry["id"])
            if text is None:
                await self._progress(job_id, error={"filename": name, "error": "the library file was deleted"})
                continue

            def done_file(results: list[dict[str, Any]], name: str = name) -> JobProgress:
                # in the same write as the session's counters: a crash cannot count a file the job would redo
                chunks = int(results[0]["chunks_processed"])
                result = {"filename": name, "chunks_processed": chunks, "success": True}
                return self._change(job_id, result=result, chunks=chunks)

            try:
                await self.rag.process_documents(principal, form, [(name, *text)], job=done_file)
            except LeaseLost:
                return  # another process took the job over; it redoes this file
            except ApiError as exc:
                message = exc.message
                files_out = exc.details.get("files") if isinstance(exc.details, dict) else None
                if isinstance(files_out, list) and files_out and isinstance(files_out[0].get("error"), dict):
                    message = f"{message}: {files_out[0]['error'].get('message')}"
                await self._progress(job_id, error={"filename": name, "error": message})
        await self.storage.jobs.finish(job_id, self.owner)

    def _change(self, job_id: str, **changes: Any) -> JobProgress:
        """A fenced change of this job by this process (``LeaseLost`` when another one holds it now)."""
        return JobProgress(job_id, self.owner, self.lease_ms, **changes)

    async def _progress(self, job_id: str, **changes: Any) -> None:
        await self.storage.jobs.progress(self._change(job_id, **changes))
