"""SQLite markdown library store: one awaited database call per operation.

Who sees what: a teacher their own files; an admin every owner's (listing, reading, deleting). An admin naming a
file reads or deletes their own file of that name if they have one, else the earliest uploaded of that name
(names are unique per owner only). A file the caller may not see answers exactly like a missing one.
"""

from __future__ import annotations

import sqlite3

from service.auth import Principal
from service.errors import Conflict, NotFound
from service.library.models import candidate
from service.storage.sqlite.database import Database
from service.timeutil import now_ms

# The caller's files: a teacher's own; an admin's own first, then everyone's by upload order.
_PICK = (
    "SELECT id, content FROM library_files WHERE filename = ? AND (owner_id = ? OR ?) "
    "ORDER BY owner_id = ? DESC, id LIMIT 1"
)


def _pick_params(principal: Principal, filename: str) -> tuple[str, str, bool, str]:
    return filename, principal.id, principal.role == "admin", principal.id


def not_found(filename: str) -> NotFound:
    return NotFound("markdown file not found", details={"filename": filename[:200]})


def _pick_all(conn: sqlite3.Connection, principal: Principal, filenames: list[str]) -> list[sqlite3.Row]:
    """The row of each named file the caller may see, in the order asked; a 404 naming every missing one."""
    found: list[sqlite3.Row] = []
    missing: list[str] = []
    for name in filenames:
        row = conn.execute(_PICK, _pick_params(principal, name)).fetchone()
        if row is None:
            missing.append(name[:200])
        else:
            found.append(row)
    if missing:
        raise NotFound("markdown files not found in your library", details={"missing": missing})
    return found


class SqliteLibrary:
    """``service.storage.base.LibraryStore`` on SQLite."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, principal: Principal, name: str, content: str, size: int, *, max_files: int) -> str:
        """Store under ``name``, or ``stem_1.md``, ``stem_2.md``, ... when taken; the name used. 409 when full."""

        def run(conn: sqlite3.Connection) -> str:
            (count,) = conn.execute("SELECT count(*) FROM library_files WHERE owner_id = ?", (principal.id,)).fetchone()
            if count >= max_files:
                raise Conflict(f"your markdown library is full ({max_files} files)", details={"max_files": max_files})
            # at most ``count`` names are taken, so one of the first count + 1 candidates is free
            for n in range(count + 1):
                chosen = candidate(name, n)
                taken = conn.execute(
                    "SELECT 1 FROM library_files WHERE owner_id = ? AND filename = ?", (principal.id, chosen)
                ).fetchone()
                if taken is None:
                    conn.execute(
                        "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (principal.id, chosen, content, size, now_ms()),
                    )
                    return chosen
            raise AssertionError("unreachable: a free name exists")

        return await self.db.write(run)

    async def names(self, principal: Principal) -> list[str]:
        """The caller's file names (an admin: every owner's), in upload order."""
        rows = await self.db.read(
            "SELECT filename FROM library_files WHERE owner_id = ? OR ? ORDER BY id",
            (principal.id, principal.role == "admin"),
        )
        return [row["filename"] for row in rows]

    async def content(self, principal: Principal, filename: str) -> str:
        rows = await self.db.read(_PICK, _pick_params(principal, filename))
        if not rows:
            raise not_found(filename)
        return str(rows[0]["content"])

    async def delete(self, principal: Principal, filename: str) -> None:
        def run(conn: sqlite3.Connection) -> None:
            row = conn.execute(_PICK, _pick_params(principal, filename)).fetchone()
            if row is None:
                raise not_found(filename)
            conn.execute("DELETE FROM library_files WHERE id = ?", (row["id"],))

        await self.db.write(run)

    async def delete_all(self, principal: Principal) -> int:
        """Delete what the caller's listing shows; how many."""
        rows = await self.db.write_sql(
            "DELETE FROM library_files WHERE owner_id = ? OR ? RETURNING id", (principal.id, principal.role == "admin")
        )
        return len(rows)

    async def documents(self, principal: Principal, filenames: list[str]) -> list[tuple[str, str, int]]:
        """(name, text, bytes) of each named file, read in one call, so a request naming a wrong file processes
        nothing."""

        def run(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            rows = _pick_all(conn, principal, filenames)
            texts = [(name, str(row["content"])) for name, row in zip(filenames, rows, strict=True)]
            return [(name, text, len(text.encode())) for name, text in texts]

        return await self.db.read_fn(run)

    async def resolve(self, principal: Principal, filenames: list[str]) -> list[tuple[int, str]]:
        """The (id, name) of each named file (an ingestion job keeps ids, and reads each file when it gets to it)."""

        def run(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = _pick_all(conn, principal, filenames)
            return [(int(row["id"]), name) for name, row in zip(filenames, rows, strict=True)]

        return await self.db.read_fn(run)

    async def file(self, file_id: int) -> tuple[str, int] | None:
        rows = await self.db.read("SELECT content, size_bytes FROM library_files WHERE id = ?", (file_id,))
        return (str(rows[0]["content"]), int(rows[0]["size_bytes"])) if rows else None
