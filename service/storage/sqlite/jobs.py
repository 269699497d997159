"""SQLite ingestion-job store: jobs claimed with a lease, every change fenced on the lease owner.

A job row is claimed in one write (``UPDATE ... WHERE status = 'queued' OR lease_until < now``), so however many
processes share the database file exactly one runs it; a progress write that finds the lease gone raises
``LeaseLost`` and rolls back the unit it rides in (``SqliteRag.record`` applies one with the session's counters).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import Any

from service.auth import Principal
from service.library.job_rows import DIED_TOO_OFTEN, new_job_documents, parsed
from service.storage.base import JobProgress, LeaseLost
from service.storage.sqlite.database import Database
from service.timeutil import now_ms


def progress_sql(conn: sqlite3.Connection, change: JobProgress) -> None:
    """One fenced update, on the writer's thread: ``LeaseLost`` (rolling back the caller's unit) unless
    ``change.owner`` still holds the job's lease; the lease is renewed with it."""
    cur = conn.execute(
        "UPDATE ingestion_jobs SET current_file = coalesce(?, current_file), "
        "results = CASE WHEN ? IS NULL THEN results ELSE json_insert(results, '$[#]', json(?)) END, "
        "errors = CASE WHEN ? IS NULL THEN errors ELSE json_insert(errors, '$[#]', json(?)) END, "
        "total_chunks = total_chunks + ?, lease_until = ? "
        "WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
        (
            change.current_file,
            None if change.result is None else 1,
            json.dumps(change.result),
            None if change.error is None else 1,
            json.dumps(change.error),
            change.chunks,
            now_ms() + change.lease_ms,
            change.job_id,
            change.owner,
        ),
    )
    if cur.rowcount != 1:
        raise LeaseLost(change.job_id)


class SqliteJobs:
    """``service.storage.base.JobStore`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        principal: Principal,
        session_id: str,
        files: list[tuple[int, str]],
        params: dict[str, Any],
        extra: dict[str, Any],
    ) -> str:
        """Insert a queued job for ``files`` ((library id, name)); its id. ``params`` go to ``process_documents``;
        ``extra`` is recorded only (the RAG service's process-and-store has no LLM post-processing)."""
        job_id = uuid.uuid4().hex
        params_json, files_json = new_job_documents(files, params, extra)
        await self.db.write_sql(
            "INSERT INTO ingestion_jobs (job_id, owner_id, owner_role, session_id, status, params, files, "
            "created_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
            (
                job_id,
                principal.id,
                principal.role,
                session_id,
                params_json,
                files_json,
                now_ms(),
            ),
        )
        return job_id

    async def get(self, job_id: str, principal: Principal | None = None) -> dict[str, Any] | None:
        if principal is None:
            rows = await self.db.read("SELECT * FROM ingestion_jobs WHERE job_id = ?", (job_id,))
        else:
            rows = await self.db.read(
                "SELECT * FROM ingestion_jobs WHERE job_id = ? AND (owner_id = ? OR ?)",
                (job_id, principal.id, principal.role == "admin"),
            )
        if not rows:
            return None
        return parsed(dict(rows[0]))

    async def claimable(self) -> bool:
        """A read, so an idle runner takes no write lock each poll (the writer and its lock are shared with every
        request, and with the other processes on the file)."""
        rows = await self.db.read(
            "SELECT 1 FROM ingestion_jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?) LIMIT 1",
            (now_ms(),),
        )
        return bool(rows)

    async def claim(self, owner: str, limit: int, *, lease_ms: int, max_attempts: int) -> list[str]:
        """Claim up to ``limit`` jobs in one write transaction."""

        def run(conn: sqlite3.Connection) -> list[str]:
            now = now_ms()
            conn.execute(
                "UPDATE ingestion_jobs SET status = 'failed', completed_at = ?, current_file = NULL, "
                "lease_owner = NULL, lease_until = NULL, errors = json_insert(errors, '$[#]', json(?)) "
                "WHERE status = 'running' AND lease_until < ? AND attempts >= ?",
                (
                    now,
                    json.dumps(DIED_TOO_OFTEN),
                    now,
                    max_attempts,
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
                    (owner, now + lease_ms, now, row["job_id"], now),
                )
                if cur.rowcount == 1:
                    claimed.append(str(row["job_id"]))
            return claimed

        return await self.db.write(run)

    async def renew(self, job_id: str, owner: str, *, lease_ms: int) -> None:
        await self.db.write_sql(
            "UPDATE ingestion_jobs SET lease_until = ? WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
            (now_ms() + lease_ms, job_id, owner),
        )

    async def progress(self, change: JobProgress) -> None:
        await self.db.write(lambda conn: progress_sql(conn, change))

    async def fail(self, job_id: str, owner: str, reason: str) -> None:
        await self.db.write_sql(
            "UPDATE ingestion_jobs SET status = 'failed', current_file = NULL, completed_at = ?, "
            "errors = json_insert(errors, '$[#]', json(?)), lease_owner = NULL, lease_until = NULL "
            "WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
            (now_ms(), json.dumps({"filename": "", "error": reason}), job_id, owner),
        )

    async def finish(self, job_id: str, owner: str) -> None:
        await self.db.write_sql(
            "UPDATE ingestion_jobs SET status = CASE "
            "WHEN json_array_length(errors) = 0 THEN 'completed' "
            "WHEN json_array_length(results) = 0 THEN 'failed' ELSE 'completed_with_errors' END, "
            "current_file = NULL, completed_at = ?, lease_owner = NULL, lease_until = NULL "
            "WHERE job_id = ? AND lease_owner = ? AND status = 'running'",
            (now_ms(), job_id, owner),
        )

    async def release(self, owner: str) -> None:
        await self.db.write_sql(
            "UPDATE ingestion_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL "
            "WHERE lease_owner = ? AND status = 'running'",
            (owner,),
        )
