"""The maintenance commands of ``python -m service`` on PostgreSQL, as the README's replica recipe runs them.

A one-off ``migrate`` job needs no ``CURSOR_SECRET`` (it signs no cursor; only ``serve`` requires it); ``backup``
is PostgreSQL's own job (pg_dump, point-in-time recovery): the command says so in one line and exits 1, without
a traceback; ``cleanup`` works as on SQLite.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


async def cli(dsn: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CURSOR_", "WORKERS"))}
    env.update({"DATABASE_URL": dsn, "LOG_LEVEL": "warning"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


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
