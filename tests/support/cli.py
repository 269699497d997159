"""``python -m service ...`` as a subprocess of the test, awaited without blocking the loop."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


async def run_service(*args: str, env: dict[str, str], timeout_s: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI with ``env`` on top of this environment, minus inherited database,
    cursor and worker settings (the test says which apply)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CURSOR_", "WORKERS"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        cwd=REPO,
        env={**base, "LOG_LEVEL": "warning", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
