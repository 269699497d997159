"""The storage interface: the domain's operations, one implementation per engine.

``service/storage/sqlite/`` (aiosqlite, the embedded default) and ``service/storage/postgres/`` (asyncpg, for
replicas) implement it; the domain and the API call only this, hold no SQL and import no driver. Every
operation is one unit of work: atomic, and one awaited database call where the engine allows (SQLite: one
thread hop, shared with concurrent calls by group commit; PostgreSQL: one short transaction on a pooled
connection). Access rules (who may see or change what: ``service/storage/sqlite/access.py``) are applied inside
the unit, so a refusal costs no extra call and reveals nothing: a session the caller may not see answers exactly
like a missing one (404).

Operations raise the API's own errors (``service.errors``: 404, 409, 413, ...), rolling their unit back;
``StorageUnavailable`` when the engine cannot be reached or no connection frees up in time (503 +
``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from service.auth import Principal
from service.errors import ApiError
from service.sessions.models import (
    EventCreate,
    EventsQuery,
    ListQuery,
    SessionCreate,
    SessionEnd,
    SessionPatch,
    StatusUpdate,
)

Engine = Literal["sqlite", "postgres"]
Rule = Literal["see", "own"]
OpObserver = Callable[[str, float], None]  # (kind: "read" | "write", seconds), for the metrics
BatchObserver = Callable[[str, int], None]  # (kind: "read" | "write", calls in one batch), for the metrics


class StorageUnavailable(ApiError):
    """The engine is down or every pooled connection stayed busy past the wait bound: retry shortly."""

    status, code = 503, "database_unavailable"

    def __init__(self, message: str = "database unavailable, retry shortly", *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotSupportedByEngine(ApiError):
    """An operation this engine leaves to its own tools (a backup of PostgreSQL is pg_dump's job)."""

    status, code = 501, "not_supported"


class StorageError(Exception):
    """A maintenance operation (open, migrate, backup, cleanup) failed in the engine: a locked or unreadable
    file, a newer schema. ``__cause__`` is the driver's own exception, whose type names the failure (the CLI
    prints it); the domain and the API never see a driver type."""


class LeaseLost(Exception):
    """This process no longer holds the ingestion job's lease (it lapsed and another process claimed the job)."""


# -- values crossing the interface ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions_json: str  # a JSON array of session documents (``service/sessions/render.py``'s shape)
    next_key: tuple[int, str] | None  # (start_time, session_id) of the last row, when more rows follow


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[dict[str, Any]]  # ``render.event_out`` documents, by id
    next_id: int | None  # the last event's id, when more events follow


@dataclass(frozen=True, slots=True)
class JobProgress:
    """One fenced change to a running ingestion job: applied only while ``owner`` holds the lease (else
    ``LeaseLost``, rolling back the unit it rides in), and renewing the lease to now + ``lease_ms``."""

    job_id: str
    owner: str
    lease_ms: int
    current_file: str | None = None
    result: dict[str, Any] | None = None  # appended to the job's results
    error: dict[str, Any] | None = None  # appended to the job's errors
    chunks: int = 0  # added to the job's total_chunks


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: str
    bytes: int
    pages: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CleanupResult:
    deleted_sessions: int
    deleted_events: int


# -- the stores -----------------------------------------------------------------------------------------------
class SessionStore(Protocol):
    async def create(self, principal: Principal, body: SessionCreate, *, max_metadata_bytes: int) -> dict[str, Any]:
        """The new session (``session_out``) with ``events``: its SESSION_STARTED event."""

    async def get(self, principal: Principal, session_id: str, *, with_events: bool) -> str:
        """The session document as JSON text; with ``events`` (the first ``rules.INLINE_EVENTS``) and
        ``events_truncated`` when asked."""

    async def list(self, principal: Principal, query: ListQuery, *, after: tuple[int, str] | None) -> SessionPage:
        """Visible sessions matching ``query``, newest first (start_time DESC, session_id ASC), keyset-paged
        after ``after``; ``query.limit`` is already clamped."""

    async def patch(
        self, principal: Principal, session_id: str, patch: SessionPatch, *, max_metadata_bytes: int
    ) -> dict[str, Any]:
        """Top-level fields set or removed, ``metadata`` merged as an RFC 7396 merge patch; a METADATA_UPDATED
        event; 413 (nothing written) when the result exceeds ``max_metadata_bytes``."""

    async def append_event(self, principal: Principal, session_id: str, body: EventCreate) -> dict[str, Any]:
        """``{"events": [...], "current_state": n}``; 409 unless the session is open."""

    async def end(self, principal: Principal, session_id: str, body: SessionEnd) -> dict[str, Any]:
        """Ends an open session; 409 when already ended (of two racing ends exactly one succeeds)."""

    async def set_status(self, principal: Principal, session_id: str, body: StatusUpdate) -> dict[str, Any]:
        """ACTIVE <-> INACTIVE with a STATUS_CHANGED event when it changes; 409 on an ended session."""

    async def delete(self, principal: Principal, session_id: str) -> dict[str, Any]:
        """``{"session_id", "deleted": True, "events_deleted": n}``; events go with it."""

    async def list_events(self, principal: Principal, session_id: str, query: EventsQuery, *, after: int) -> EventPage:
        """A visible session's events with id > ``after``, by id; 404 when not visible."""

    async def stats(self, principal: Principal) -> dict[str, Any]:
        """Counts by status, ended durations (count, avg, p50, p95 as ints or None), events by type; an
        admin's over every session, anyone else's over their own."""

    async def require(self, principal: Principal, session_id: str, rule: Rule) -> None:
        """404 unless the caller may see (``see``) or change (``own``) the session."""


class RagStore(Protocol):
    async def session_for_read(self, principal: Principal, session_id: str) -> dict[str, Any]:
        """``{"status", "user_id", "rag_settings"}`` of a visible session; 404 otherwise. Status not checked."""

    async def session_for_change(self, principal: Principal, session_id: str, *, open_only: bool) -> dict[str, Any]:
        """``{"status", "rag_settings", "counters"}`` of a session the caller may change (404), open (409)
        when ``open_only``."""

    async def record(
        self,
        session_id: str,
        event_type: str,
        data: dict[str, Any],
        *,
        add: dict[str, int] | None = None,
        assign: dict[str, int] | None = None,
        embedding_model: str | None = None,
        job: JobProgress | None = None,
    ) -> dict[str, int]:
        """An action's event and counter changes in one unit; the counters after it. ``embedding_model``
        becomes ``rag_settings.embedding_model`` when none is stored. ``job`` is applied first in the same
        unit (``LeaseLost`` writes nothing). 404 when the session was deleted meanwhile."""

    async def patch_rag_settings(self, principal: Principal, session_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """``rag_settings`` merged with ``patch`` (RFC 7396), a RAG_SETTINGS_UPDATED event; the new settings."""


class LibraryStore(Protocol):
    """Per-owner markdown files; an admin sees every owner's (``service/storage/sqlite/library.py`` has the
    rules)."""

    async def add(self, principal: Principal, name: str, content: str, size: int, *, max_files: int) -> str:
        """Stored under ``name`` or the first free ``library.models.candidate``; the name used. 409 when full."""

    async def names(self, principal: Principal) -> list[str]: ...

    async def content(self, principal: Principal, filename: str) -> str: ...

    async def delete(self, principal: Principal, filename: str) -> None: ...

    async def delete_all(self, principal: Principal) -> int: ...

    async def documents(self, principal: Principal, filenames: list[str]) -> list[tuple[str, str, int]]:
        """(name, text, bytes) of each, in one read; a 404 naming every missing one."""

    async def resolve(self, principal: Principal, filenames: list[str]) -> list[tuple[int, str]]:
        """(id, name) of each; a 404 naming every missing one."""

    async def file(self, file_id: int) -> tuple[str, int] | None:
        """(text, bytes) of a file by id, or None when it was deleted (an ingestion job reads by id)."""


class JobStore(Protocol):
    """Durable ingestion jobs, claimed with a lease so exactly one process runs each."""

    async def create(
        self,
        principal: Principal,
        session_id: str,
        files: list[tuple[int, str]],
        params: dict[str, Any],
        extra: dict[str, Any],
    ) -> str: ...

    async def get(self, job_id: str, principal: Principal | None = None) -> dict[str, Any] | None:
        """The job's row (JSON columns parsed: ``params``, ``files``, ``results``, ``errors``); with a
        principal, only when they created it or are an admin."""

    async def claimable(self) -> bool:
        """Whether a claim could find work (a read: an idle poll takes no write lock)."""

    async def claim(self, owner: str, limit: int, *, lease_ms: int, max_attempts: int) -> list[str]:
        """Claim up to ``limit`` queued or lease-expired jobs; a job past ``max_attempts`` fails instead."""

    async def renew(self, job_id: str, owner: str, *, lease_ms: int) -> None: ...

    async def progress(self, change: JobProgress) -> None:
        """``LeaseLost`` unless ``change.owner`` still holds the lease."""

    async def fail(self, job_id: str, owner: str, reason: str) -> None: ...

    async def finish(self, job_id: str, owner: str) -> None:
        """completed, completed_with_errors or failed, by its results and errors."""

    async def release(self, owner: str) -> None:
        """Give every job ``owner`` is running back to the queue (a clean shutdown)."""


class Storage(Protocol):
    engine: Engine
    sessions: SessionStore
    rag: RagStore
    library: LibraryStore
    jobs: JobStore
    migrations_applied: list[str]  # what ``open(run_migrations=True)`` did, for the log
    target_schema_version: int  # the version this build migrates to: readiness wants exactly it
    # Whether ``serve`` migrates at start: SQLite yes (an embedded file, one host); PostgreSQL no, its migration is
    # the one-off job ``python -m service migrate`` and a replica on an older schema reports not-ready instead.
    migrates_on_start: bool

    async def open(self, *, run_migrations: bool = True) -> None:
        """Connect (and migrate, exactly once however many processes start together); a failure closes what it
        opened (``StorageError``). Refuses a schema newer than this build."""

    async def close(self) -> None: ...

    async def schema_version(self) -> int | None:
        """The schema version, or None when the engine cannot be reached (readiness)."""

    async def backup(self, dest_dir: str) -> BackupResult:
        """An online, consistent copy; ``NotSupportedByEngine`` where the engine's own tools do it."""

    async def cleanup(self, *, keep_newest: int | None = None, older_than_days: float | None = None) -> CleanupResult:
        """Delete ended sessions beyond a retention rule (``service/storage/sqlite/maintenance.py`` says which);
        never open ones."""
