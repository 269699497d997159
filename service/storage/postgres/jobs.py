"""``JobStore`` on PostgreSQL: durable ingestion jobs claimed with a lease, one replica per job.

A claim takes queued or lease-expired rows ``FOR UPDATE SKIP LOCKED``: replicas claiming at once each get other
jobs and never wait on one another. Every change a runner makes is fenced on its lease (``lease_owner``), so a
replica that lost its lease (it stalled, another claimed the job) writes nothing (``LeaseLost``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from service.auth import Principal
from service.library.job_rows import DIED_TOO_OFTEN, new_job_documents, parsed
from service.storage.base import JobProgress, LeaseLost
from service.storage.postgres.engine import Engine
from service.storage.postgres.sql import jsonb_text, unnameable
from service.timeutil import now_ms


async def apply_progress(conn: asyncpg.Connection, change: JobProgress) -> None:
    """One fenced change inside the caller's unit; ``LeaseLost`` (rolling the unit back) unless still held."""
    found = await conn.fetchval(
        "UPDATE ingestion_jobs SET current_file = coalesce($3, current_file), "
        "results = CASE WHEN $4::jsonb IS NULL THEN results ELSE results || jsonb_build_array($4::jsonb) END, "
        "errors = CASE WHEN $5::jsonb IS NULL THEN errors ELSE errors || jsonb_build_array($5::jsonb) END, "
        "total_chunks = total_chunks + $6, lease_until = $7 "
        "WHERE job_id = $1 AND lease_owner = $2 AND status = 'running' RETURNING 1",
        change.job_id,
        change.owner,
        change.current_file,
        None if change.result is None else jsonb_text(change.result),
        None if change.error is None else jsonb_text(change.error),
        change.chunks,
        now_ms() + change.lease_ms,
    )
    if found is None:
        raise LeaseLost(change.job_id)


class PostgresJobs:
    def __init__(self, db: Engine) -> None:
        self.db = db

    async def create(
        self,
        principal: Principal,
        session_id: str,
        files: list[tuple[int, str]],
        params: dict[str, Any],
        extra: dict[str, Any],
    ) -> str:
        job_id = uuid.uuid4().hex
        params_json, files_json = new_job_documents(files, params, extra)
        async with self.db.unit("write") as conn:
            await conn.execute(
                "INSERT INTO ingestion_jobs (job_id, owner_id, owner_role, session_id, status, params, files, "
                "created_at) VALUES ($1, $2, $3, $4, 'queued', $5::jsonb, $6::jsonb, $7)",
                job_id,
                principal.id,
                principal.role,
                session_id,
                params_json,
                files_json,
                now_ms(),
            )
        return job_id

    async def get(self, job_id: str, principal: Principal | None = None) -> dict[str, Any] | None:
        if unnameable(job_id):
            return None
        if principal is None:
            row = await self.db.fetchrow("SELECT * FROM ingestion_jobs WHERE job_id = $1", job_id)
        else:
            row = await self.db.fetchrow(
                "SELECT * FROM ingestion_jobs WHERE job_id = $1 AND (owner_id = $2 OR $3)",
                job_id,
                principal.id,
                principal.role == "admin",
            )
        if row is None:
            return None
        return parsed(row)

    async def claimable(self) -> bool:
        found = await self.db.fetchval(
            "SELECT 1 FROM ingestion_jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < $1) LIMIT 1",
            now_ms(),
        )
        return found is not None

    async def claim(self, owner: str, limit: int, *, lease_ms: int, max_attempts: int) -> list[str]:
        now = now_ms()
        async with self.db.unit("write") as conn:
            # a job whose runner died max_attempts times fails instead of being claimed again
            await conn.execute(
                "UPDATE ingestion_jobs SET status = 'failed', completed_at = $1, current_file = NULL, "
                "lease_owner = NULL, lease_until = NULL, errors = errors || jsonb_build_array($2::jsonb) "
                "WHERE job_id IN (SELECT job_id FROM ingestion_jobs WHERE status = 'running' AND lease_until < $1 "
                "AND attempts >= $3 FOR UPDATE SKIP LOCKED)",
                now,
                json.dumps(DIED_TOO_OFTEN),
                max_attempts,
            )
            rows = await conn.fetch(
                "UPDATE ingestion_jobs j SET status = 'running', lease_owner = $1, lease_until = $2, "
                "started_at = coalesce(j.started_at, $3), "
                "attempts = j.attempts + CASE WHEN j.status = 'running' THEN 1 ELSE 0 END "
                "FROM (SELECT job_id FROM ingestion_jobs WHERE status = 'queued' "
                "OR (status = 'running' AND lease_until < $3) ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED) c "
                "WHERE j.job_id = c.job_id RETURNING j.job_id, j.created_at",
                owner,
                now + lease_ms,
                now,
                limit,
            )
        return [str(r["job_id"]) for r in sorted(rows, key=lambda r: (r["created_at"], r["job_id"]))]

    async def renew(self, job_id: str, owner: str, *, lease_ms: int) -> None:
        async with self.db.unit("write") as conn:
            await conn.execute(
                "UPDATE ingestion_jobs SET lease_until = $3 "
                "WHERE job_id = $1 AND lease_owner = $2 AND status = 'running'",
                job_id,
                owner,
                now_ms() + lease_ms,
            )

    async def progress(self, change: JobProgress) -> None:
        async with self.db.unit("write") as conn:
            await apply_progress(conn, change)

    async def fail(self, job_id: str, owner: str, reason: str) -> None:
        async with self.db.unit("write") as conn:
            await conn.execute(
                "UPDATE ingestion_jobs SET status = 'failed', current_file = NULL, completed_at = $3, "
                "errors = errors || jsonb_build_array($4::jsonb), lease_owner = NULL, lease_until = NULL "
                "WHERE job_id = $1 AND lease_owner = $2 AND status = 'running'",
                job_id,
                owner,
                now_ms(),
                jsonb_text({"filename": "", "error": reason}),
            )

    async def finish(self, job_id: str, owner: str) -> None:
        async with self.db.unit("write") as conn:
            await conn.execute(
                "UPDATE ingestion_jobs SET status = CASE "
                "WHEN jsonb_array_length(errors) = 0 THEN 'completed' "
                "WHEN jsonb_array_length(results) = 0 THEN 'failed' ELSE 'completed_with_errors' END, "
                "current_file = NULL, completed_at = $3, lease_owner = NULL, lease_until = NULL "
                "WHERE job_id = $1 AND lease_owner = $2 AND status = 'running'",
                job_id,
                owner,
                now_ms(),
            )

    async def release(self, owner: str) -> None:
        async with self.db.unit("write") as conn:
            await conn.execute(
                "UPDATE ingestion_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL "
                "WHERE lease_owner = $1 AND status = 'running'",
                owner,
            )
