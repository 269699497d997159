"""Admin-only maintenance: retention cleanup and online backup."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, Field, model_validator

from service.api.endpoint import ADMIN, Call, Endpoint


class CleanupRequest(BaseModel):
    model_config = {"extra": "forbid"}
    keep_newest: int | None = Field(default=None, ge=0, le=10_000_000)
    older_than_days: float | None = Field(default=None, ge=0, le=36_500)

    @model_validator(mode="after")
    def _one_rule(self) -> CleanupRequest:
        if self.keep_newest is None and self.older_than_days is None:
            raise ValueError("give keep_newest and/or older_than_days")
        return self


class CleanupResult(BaseModel):
    deleted_sessions: int
    deleted_events: int


class BackupResult(BaseModel):
    path: str
    bytes: int
    pages: int
    seconds: float


async def cleanup(call: Call[CleanupRequest, Any]) -> dict[str, Any]:
    result = await call.ctx.storage.cleanup(
        keep_newest=call.body.keep_newest, older_than_days=call.body.older_than_days
    )
    return dataclasses.asdict(result)


async def backup(call: Call[Any, Any]) -> dict[str, Any]:
    result = await call.ctx.storage.backup(call.ctx.settings.backup_dir)
    return dataclasses.asdict(result)


ENDPOINTS = [
    Endpoint(
        "POST",
        "/admin/cleanup",
        cleanup,
        "Delete ended sessions beyond a retention rule",
        "admin",
        ADMIN,
        body=CleanupRequest,
        response=CleanupResult,
        errors=(422,),
    ),
    Endpoint(
        "POST",
        "/admin/backup",
        backup,
        "Online backup to a timestamped file",
        "admin",
        ADMIN,
        response=BackupResult,
        status=201,
        errors=(501,),  # on PostgreSQL: backups belong to the engine's own tools (NotSupportedByEngine)
    ),
]
