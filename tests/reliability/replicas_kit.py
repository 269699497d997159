"""Several real gateway replicas (``python -m service serve``) on one PostgreSQL database, and what their tests need.

Each replica is its own process on its own 127.0.0.1 port, with one shared ``CURSOR_SECRET`` (a cursor made by one
is valid on the others) and the session's reference downstream. Clients: one ``httpx.AsyncClient`` per replica,
every request bounded by ``REQUEST_TIMEOUT_S``. ``Ledger`` keeps what the replicas acknowledged, to be found in the
database afterwards with a connection of the test's own (``pg_fetch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from reliability_kit import REPO, GatewayProcess

from support.servers import auth

CURSOR_SECRET = "replicas-test-cursor-secret-0123456789"
REQUEST_TIMEOUT_S = 10.0  # a request past this is a hang: the tests fail on any timeout
START_WITHIN_S = 60.0  # three interpreters importing at once on two shared cores
COUNT = 3


def replica_env(dsn: str) -> dict[str, str]:
    """A replica's database settings: 3 x 6 connections; a pool wait of 5 s (< the request timeout) so a busy CI
    machine does not turn a slow moment into a 503 where the tests expect none (a refused connect fails at once)."""
    return {"DATABASE_URL": dsn, "CURSOR_SECRET": CURSOR_SECRET, "DB_POOL_SIZE": "6", "DB_POOL_TIMEOUT_S": "5"}


class Replicas:
    """``count`` gateway processes on the database at ``dsn``; ``close()`` (in ``finally``) kills what still runs."""

    def __init__(self, tmp: Path, downstream_url: str, dsn: str, count: int = COUNT) -> None:
        self.dsn = dsn
        self.procs = [GatewayProcess(tmp, downstream_url, name=f"replica{i}", **replica_env(dsn)) for i in range(count)]
        self.clients = [
            httpx.AsyncClient(
                base_url=p.url,
                timeout=REQUEST_TIMEOUT_S,
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
            )
            for p in self.procs
        ]

    def __len__(self) -> int:
        return len(self.procs)

    def client(self, k: int) -> httpx.AsyncClient:
        """Replica ``k % count``'s client: spreading work by index spreads it across the replicas."""
        return self.clients[k % len(self.clients)]

    async def start(self, path: str = "/health/ready") -> Replicas:
        """Spawn every replica at once, then wait until each answers 200 on ``path``."""
        for proc in self.procs:
            proc.spawn("serve")
        await asyncio.gather(*(p.wait_http(f"{p.url}{path}", START_WITHIN_S) for p in self.procs))
        return self

    async def ready_codes(self) -> list[int]:
        return [(await c.get("/health/ready")).status_code for c in self.clients]

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log_text()[-2000:]}" for p in self.procs)

    async def aclose(self) -> None:
        for c in self.clients:
            await c.aclose()
        for p in self.procs:
            p.close()


@contextlib.asynccontextmanager
async def replicas_on(
    tmp: Path, downstream_url: str, dsn: str, *, path: str = "/health/ready"
) -> AsyncIterator[Replicas]:
    replicas = Replicas(tmp, downstream_url, dsn)
    try:
        yield await replicas.start(path)
    finally:
        await replicas.aclose()


async def pg_fetch(dsn: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """One statement on a connection of the test's own (not through any replica)."""
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(statement, *args)]
    finally:
        await conn.close()


async def run_cli(env: dict[str, str], *args: str, within_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m service <args>`` to its exit, stdout and stderr captured (off the event loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=within_s,
        check=False,
    )


@dataclass
class Ledger:
    """What the replicas acknowledged (a 2xx received), and every answer's status per replica."""

    sessions: set[str] = field(default_factory=set)
    events: set[int] = field(default_factory=set)
    statuses: list[Counter[int]] = field(default_factory=lambda: [Counter() for _ in range(COUNT)])
    transport_errors: list[Counter[str]] = field(default_factory=lambda: [Counter() for _ in range(COUNT)])
    bad: list[str] = field(default_factory=list)  # answers a test forbids, with their replica and body

    def note(self, k: int, r: httpx.Response) -> None:
        """Count the answer; a 5xx other than a 503 with ``Retry-After`` is never acceptable."""
        self.statuses[k][r.status_code] += 1
        if r.status_code >= 500 and (r.status_code != 503 or "retry-after" not in r.headers):
            self.bad.append(f"replica{k}: {r.status_code} {dict(r.headers)} {r.text[:300]}")


async def write_unit(replicas: Replicas, ledger: Ledger, k: int, tag: str) -> None:
    """Create a session on replica ``k``, then append one event on each of the two others; acks to ``ledger``.

    A transport error (the replica was killed) is counted, never an ack; a timeout is a hang and fails the test."""
    n = len(replicas)
    try:
        r = await replicas.client(k).post("/sessions", json={"name": tag}, headers=auth("teacher"))
    except httpx.TimeoutException:
        raise
    except httpx.TransportError as exc:
        ledger.transport_errors[k % n][type(exc).__name__] += 1
        return
    ledger.note(k % n, r)
    if r.status_code != 201:
        await asyncio.sleep(0.05)  # a 503 (database down): do not spin on it
        return
    sid: str = r.json()["session_id"]
    ledger.sessions.add(sid)
    for j in (k + 1, k + 2):
        try:
            e = await replicas.client(j).post(
                f"/sessions/{sid}/events",
                json={"event_type": "LOAD", "event_data": {"t": tag}},
                headers=auth("teacher"),
            )
        except httpx.TimeoutException:
            raise
        except httpx.TransportError as exc:
            ledger.transport_errors[j % n][type(exc).__name__] += 1
            continue
        ledger.note(j % n, e)
        if e.status_code == 201:
            ledger.events.update(ev["id"] for ev in e.json()["events"])


async def assert_acknowledged_are_stored(dsn: str, ledger: Ledger) -> None:
    """Every acknowledged session and event is in the database (read directly, not through a replica)."""
    stored_sessions = {r[0] for r in await pg_fetch(dsn, "SELECT session_id FROM sessions")}
    stored_events = {r[0] for r in await pg_fetch(dsn, "SELECT id FROM session_events")}
    lost_sessions = ledger.sessions - stored_sessions
    lost_events = ledger.events - stored_events
    assert not lost_sessions and not lost_events, (sorted(lost_sessions)[:10], sorted(lost_events)[:10])


async def load_until(stop: asyncio.Event, workers: int, body: Any, max_s: float) -> None:
    """Run ``body(worker, iteration)`` on ``workers`` tasks until ``stop`` is set (or ``max_s`` passed)."""
    deadline = time.monotonic() + max_s

    async def loop(w: int) -> None:
        i = 0
        while not stop.is_set() and time.monotonic() < deadline:
            await body(w, i)
            i += 1

    await asyncio.gather(*(loop(w) for w in range(workers)))
