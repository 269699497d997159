"""The maintenance commands of ``python -m service`` on PostgreSQL, as the README's replica recipe runs them.

A one-off ``migrate`` job needs no ``CURSOR_SECRET`` (it signs no cursor; only ``serve`` requires it); ``backup``
is PostgreSQL's own job (pg_dump, point-in-time recovery): the command says so in one line and exits 1, without
a traceback; ``cleanup`` works as on SQLite.
"""

from __future__ import annotations

import json

from support.cli import run_service


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    return await run_service(*args, env={"DATABASE_URL": dsn})


async def test_maintenance_commands_on_postgres(pg_empty_dsn: str) -> None:
    code, out, err = await cli(pg_empty_dsn, "migrate")
    assert code == 0, err
    assert len(json.loads(out)["applied"]) >= 1
    code, out, err = await cli(pg_empty_dsn, "migrate")
    assert (code, json.loads(out)) == (0, {"applied": ["schema already current"]}), err

    code, out, err = await cli(pg_empty_dsn, "backup")
    lines = err.strip().splitlines()
    assert code == 1 and out == ""
    assert len(lines) == 1 and lines[0].startswith("backup failed: ") and "pg_dump" in lines[0], err
    assert "test@" not in err  # the URL's password is not shown

    code, out, err = await cli(pg_empty_dsn, "cleanup", "--older-than-days", "90")
    assert code == 0, err
    assert json.loads(out) == {"deleted_sessions": 0, "deleted_events": 0}

    code, out, err = await cli(pg_empty_dsn, "serve")  # a server still needs the shared cursor key
    assert code == 2 and "CURSOR_SECRET is required" in err, err
