"""``LibraryStore`` on PostgreSQL: per-owner markdown files (``service/library/store.py`` has the rules).

A teacher sees their own files, an admin every owner's; an admin naming a file gets their own of that name if
any, else the earliest uploaded. Adds of one owner are serialized by a transaction-scoped advisory lock on the
owner (the count limit and the free-name search read then write; SQLite's single writer gives that for free).
"""

from __future__ import annotations

from service.auth import Principal
from service.errors import Conflict, NotFound
from service.library.models import candidate
from service.storage.postgres.engine import Engine
from service.storage.postgres.sql import unnameable
from service.timeutil import now_ms

# pg_advisory_xact_lock(class, key)'s class for "an owner's library"; the key is hashtext(owner_id)
LIBRARY_LOCK_CLASS = 0x6C6962  # "lib"
_VISIBLE = "(owner_id = $2 OR $3)"
_PICK = (
    f"SELECT id, content FROM library_files WHERE filename = $1 AND {_VISIBLE} "  # noqa: S608 - constant
    "ORDER BY owner_id = $2 DESC, id LIMIT 1"
)


def not_found(filename: str) -> NotFound:
    return NotFound("markdown file not found", details={"filename": filename[:200]})


class PostgresLibrary:
    def __init__(self, db: Engine) -> None:
        self.db = db

    async def add(self, principal: Principal, name: str, content: str, size: int, *, max_files: int) -> str:
        async with self.db.unit("write") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LIBRARY_LOCK_CLASS, principal.id)
            taken = {
                r[0] for r in await conn.fetch("SELECT filename FROM library_files WHERE owner_id = $1", principal.id)
            }
            if len(taken) >= max_files:
                raise Conflict(f"your markdown library is full ({max_files} files)", details={"max_files": max_files})
            # at most len(taken) names are taken, so one of the first len(taken) + 1 candidates is free
            chosen = next(c for c in (candidate(name, n) for n in range(len(taken) + 1)) if c not in taken)
            await conn.execute(
                "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                principal.id,
                chosen,
                content,
                size,
                now_ms(),
            )
        return chosen

    async def names(self, principal: Principal) -> list[str]:
        rows = await self.db.fetch(
            "SELECT filename FROM library_files WHERE owner_id = $1 OR $2 ORDER BY id",
            principal.id,
            principal.role == "admin",
        )
        return [str(r[0]) for r in rows]

    async def content(self, principal: Principal, filename: str) -> str:
        if unnameable(filename):
            raise not_found(filename)
        row = await self.db.fetchrow(_PICK, filename, principal.id, principal.role == "admin")
        if row is None:
            raise not_found(filename)
        return str(row["content"])

    async def delete(self, principal: Principal, filename: str) -> None:
        if unnameable(filename):
            raise not_found(filename)
        async with self.db.unit("write") as conn:
            deleted = await conn.fetchval(
                f"DELETE FROM library_files WHERE id = ({_PICK.replace('id, content', 'id')}) RETURNING id",  # noqa: S608
                filename,
                principal.id,
                principal.role == "admin",
            )
        if deleted is None:
            raise not_found(filename)

    async def delete_all(self, principal: Principal) -> int:
        async with self.db.unit("write") as conn:
            rows = await conn.fetch(
                "DELETE FROM library_files WHERE owner_id = $1 OR $2 RETURNING id",
                principal.id,
                principal.role == "admin",
            )
        return len(rows)

    async def _pick_all(
        self, principal: Principal, filenames: list[str], *, with_content: bool
    ) -> dict[str, tuple[int, str]]:
        """(id, content) of each named file the caller may see, in one statement; a 404 naming every missing one."""
        text = "content" if with_content else "''"  # one of two constants
        rows = await self.db.fetch(
            f"SELECT DISTINCT ON (filename) filename, id, {text} AS content FROM library_files "  # noqa: S608
            f"WHERE filename = ANY($1::text[]) AND {_VISIBLE} ORDER BY filename, owner_id = $2 DESC, id",
            sorted({name for name in filenames if not unnameable(name)}),  # a NUL names no file: missing below
            principal.id,
            principal.role == "admin",
        )
        found = {str(r["filename"]): (int(r["id"]), str(r["content"])) for r in rows}
        missing = [name[:200] for name in filenames if name not in found]
        if missing:
            raise NotFound("markdown files not found in your library", details={"missing": missing})
        return found

    async def documents(self, principal: Principal, filenames: list[str]) -> list[tuple[str, str, int]]:
        found = await self._pick_all(principal, filenames, with_content=True)
        return [(name, found[name][1], len(found[name][1].encode())) for name in filenames]

    async def resolve(self, principal: Principal, filenames: list[str]) -> list[tuple[int, str]]:
        found = await self._pick_all(principal, filenames, with_content=False)
        return [(found[name][0], name) for name in filenames]

    async def file(self, file_id: int) -> tuple[str, int] | None:
        row = await self.db.fetchrow("SELECT content, size_bytes FROM library_files WHERE id = $1", file_id)
        return None if row is None else (str(row["content"]), int(row["size_bytes"]))
