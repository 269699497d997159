"""Helpers for the reliability tests: real server processes on 127.0.0.1, probes, bounded load.

Everything here talks to 127.0.0.1 only, and every process it starts is stopped by ``close()`` (tests call it
in ``finally``): SIGKILL if it is still running, then reaped, then its log file closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import httpx

from service.settings import Settings
from support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
# Gateway settings a developer or CI may have exported: never let them leak into a test's server.
GATEWAY_ENV = frozenset(name.upper() for name in Settings.model_fields)
TRANSPORT_ERRORS = (httpx.TransportError,)


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def pick_seed() -> int:
    """``RELIABILITY_SEED`` replays a run; otherwise a fresh seed (printed in every failure message)."""
    raw = os.environ.get("RELIABILITY_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


class ChildProcess:
    """A Python child process (``python -m <module>``) with stderr captured to a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path, *, warn_resources: bool = True) -> None:
        self.module = module
        self.env = env
        self.log_path = log_path
        self.warn_resources = warn_resources
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def spawn(self, *args: str) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._close_log()
        self._log = open(self.log_path, "ab")  # closed in close()
        argv = [sys.executable]
        if self.warn_resources:
            argv += ["-W", "always::ResourceWarning"]
        argv += ["-m", self.module, *args]
        self.proc = subprocess.Popen(  # our own interpreter and module
            argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def wait_exit(self, within_s: float) -> int:
        """The exit code; kills the process (and fails) if it does not exit within ``within_s``."""
        assert self.proc is not None
        try:
            return await asyncio.to_thread(self.proc.wait, within_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
            raise AssertionError(f"{self.module} did not exit within {within_s} s; killed") from None

    async def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush, checkpoint or close anything."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            await asyncio.to_thread(self.proc.wait, 10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        """Resident set size from /proc/<pid>/status (VmRSS), in KiB; 0 once the process is gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return 0
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async def wait_http(self, url: str, within_s: float = 30.0) -> None:
        """Poll ``url`` until it answers 200; fail early if the process died."""
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if not self.running:
                    code = self.proc and self.proc.returncode
                    raise AssertionError(f"{self.module} exited ({code}):\n{self.log_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not answer within {within_s} s:\n{self.log_text()[-3000:]}")
                await asyncio.sleep(0.05)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in GATEWAY_ENV and not k.startswith("DEVSTACK_")}
    env.pop("PYTHONWARNINGS", None)
    return env


class GatewayProcess(ChildProcess):
    """``python -m service serve`` on its own port and database, downstream URLs pointing at ``downstream_url``."""

    def __init__(self, tmp: Path, downstream_url: str, *, name: str = "gateway", **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = tmp / f"{name}.db"
        env = _clean_env()
        env.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            DATABASE_PATH=str(self.db_path),
            AUTH_SERVICE_URL=downstream_url,
            RAG_SERVICE_URL=downstream_url,
            QUESTION_SERVICE_URL=downstream_url,
            BACKUP_DIR=str(tmp / f"{name}-backups"),
            LOG_LEVEL="warning",
            ACCESS_LOG="false",
        )
        env.update({k.upper(): str(v) for k, v in settings.items()})
        super().__init__("service", env, tmp / f"{name}.stderr.log")

    async def start(self, within_s: float = 30.0) -> GatewayProcess:
        self.spawn("serve")
        await self.wait_http(f"{self.url}/health/ready", within_s)
        return self


class DevstackProcess(ChildProcess):
    """The reference downstream as its own process (``python -m devstack``), so a test can kill and restart it."""

    def __init__(self, tmp: Path, *, name: str = "devstack", **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = _clean_env()
        env.update(DEVSTACK_HOST="127.0.0.1", DEVSTACK_PORT=str(self.port))
        env.update({f"DEVSTACK_{k.upper()}": str(v) for k, v in settings.items()})
        super().__init__("devstack", env, tmp / f"{name}.stderr.log", warn_resources=False)

    async def start(self, within_s: float = 30.0) -> DevstackProcess:
        self.spawn()
        await self.wait_http(f"{self.url}/health", within_s)
        return self

    async def control(self, **knobs: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as c:
            if knobs.pop("reset", False):
                (await c.post("/_control/reset")).raise_for_status()
            r = await c.post("/_control", json=knobs) if knobs else await c.get("/_control")
            r.raise_for_status()
            body: dict[str, Any] = r.json()
            return body


# -- database checks, run on a separate connection (off the event loop) ------------------------------------
def _sqlite(path: Path, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return fn(conn)
    finally:
        conn.close()


async def on_db(path: Path, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    return await asyncio.to_thread(_sqlite, path, fn)


def integrity(conn: sqlite3.Connection) -> tuple[list[str], list[tuple[Any, ...]]]:
    checks = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
    return checks, orphans


async def eventually(check: Callable[[], Awaitable[bool] | bool], within_s: float, what: str) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``within_s`` (a "does not hang" deadline)."""
    deadline = time.monotonic() + within_s
    while True:
        done = check()
        if not isinstance(done, bool):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {within_s} s)")
        await asyncio.sleep(0.05)


def wal_bytes(db_path: Path) -> int:
    """Size of the database's -wal file; 0 when it is absent (checkpointed and removed at close)."""
    wal = Path(f"{db_path}-wal")
    return wal.stat().st_size if wal.exists() else 0


# -- bounded load ---------------------------------------------------------------------------------------------
async def run_for(seconds: float, workers: int, body: Callable[[int], Awaitable[None]]) -> None:
    """Run ``body(worker_no)`` in a loop on ``workers`` tasks for ``seconds``; every task ends by itself."""
    stop_at = time.monotonic() + seconds

    async def loop(n: int) -> None:
        while time.monotonic() < stop_at:
            await body(n)

    await asyncio.gather(*(loop(n) for n in range(workers)))
