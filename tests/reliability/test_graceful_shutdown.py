"""Graceful shutdown of ``python -m service serve``: SIGTERM under load drains, checkpoints and exits 0.

Allowed outcomes for a request racing the shutdown: a normal answer (in-flight work finishes), a clean 503, or a
clean connection close/refusal once draining starts. Never a 500/502/504, never a hang, never a traceback.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from reliability_kit import GatewayProcess, eventually, integrity, on_db, wal_bytes

from devstack.app import create_app as create_devstack
from devstack.settings import DevstackSettings
from support.servers import ServerThread

TEACHER = {"Authorization": "Bearer dev-teacher-token"}
ADMIN = {"Authorization": "Bearer dev-admin-token"}
SHUTDOWN_TIMEOUT_S = 8
RAG_LATENCY_S = 1.0
# A connection refused, or closed by the server before it answered: what a draining server may do.
CLEAN_CLOSE = ("ConnectError", "RemoteProtocolError", "ReadError", "WriteError")
STDERR_FORBIDDEN = ("Traceback", "ResourceWarning", "Event loop is closed", "Task was destroyed", "Unclosed")


@dataclass(slots=True)
class Outcome:
    kind: str
    started: float
    ended: float
    result: int | str  # a status code, or the transport error's class name


@pytest.fixture
def quiet_devstack() -> Iterator[ServerThread]:
    """A reference downstream of our own: its knobs are changed without touching the shared one."""
    server = ServerThread(create_devstack(DevstackSettings(seed=7))).start()
    yield server
    server.stop()


def assert_clean_exit(gw: GatewayProcess) -> None:
    assert wal_bytes(gw.db_path) == 0, f"WAL not checkpointed: {wal_bytes(gw.db_path)} bytes"
    log = gw.log_text()
    for needle in STDERR_FORBIDDEN:
        assert needle not in log, f"stderr contains {needle!r}:\n{log[-4000:]}"


async def test_sigterm_under_load_drains_in_flight_requests_and_exits_zero(
    tmp_path: Path, quiet_devstack: ServerThread
) -> None:
    gw = GatewayProcess(tmp_path, quiet_devstack.url, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S, auth_cache_ttl_s=600)
    outcomes: list[Outcome] = []
    written: list[int] = []
    try:
        await gw.start()
        async with httpx.AsyncClient(base_url=quiet_devstack.url) as c:
            r = await c.post("/_control", json={"latency_ms": RAG_LATENCY_S * 1000, "fault_paths": ["/query"]})
            r.raise_for_status()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30, limits=limits) as client:
            r = await client.post("/sessions", json={"name": "drain"}, headers=TEACHER)
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            sigterm_at: list[float] = []
            active: dict[int, tuple[str, float]] = {}

            def slow_queries_under_way() -> bool:
                now = time.monotonic()
                return sum(1 for kind, t in active.values() if kind == "rag" and now - t > 0.3) >= 5

            async def worker(n: int) -> None:
                rng = random.Random(n)
                while gw.running:
                    kind = "rag" if n < 10 else rng.choice(("read", "write"))
                    started = time.monotonic()
                    active[n] = (kind, started)
                    try:
                        if kind == "rag":
                            r = await client.post("/rag/query", json={"session_id": sid, "query": "q"}, headers=TEACHER)
                        elif kind == "read":
                            r = await client.get(f"/sessions/{sid}", headers=TEACHER)
                        else:
                            r = await client.post(f"/sessions/{sid}/events", json={"state": n % 9}, headers=TEACHER)
                            if r.is_success:
                                written.extend(e["id"] for e in r.json()["events"])
                        result: int | str = r.status_code
                    except httpx.TransportError as exc:
                        result = type(exc).__name__
                    finally:
                        active.pop(n, None)
                    outcomes.append(Outcome(kind, started, time.monotonic(), result))
                    if sigterm_at and isinstance(result, str):
                        await asyncio.sleep(0.05)  # refused while draining: do not spin

            tasks = [asyncio.create_task(worker(n)) for n in range(20)]
            try:
                # SIGTERM mid-flight: at least 5 slow queries have been in the server for 0.3 s or more.
                await eventually(slow_queries_under_way, 20, "the slow queries never got under way")
                sigterm_at.append(time.monotonic())
                gw.signal(signal.SIGTERM)
                code = await gw.wait_exit(SHUTDOWN_TIMEOUT_S + 10)
                took = time.monotonic() - sigterm_at[0]
                _, pending = await asyncio.wait(tasks, timeout=30)
                assert not pending, "clients did not stop after the server exited"
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        gw.close()

    assert code == 0, f"exit code {code} after SIGTERM:\n{gw.log_text()[-3000:]}"
    assert took < SHUTDOWN_TIMEOUT_S + 3, f"exit took {took:.1f} s (SHUTDOWN_TIMEOUT_S={SHUTDOWN_TIMEOUT_S})"
    statuses = [o.result for o in outcomes if isinstance(o.result, int)]
    assert statuses and set(statuses) <= {200, 201, 503}, sorted(set(statuses))
    errors = {o.result for o in outcomes if isinstance(o.result, str)}
    assert errors <= set(CLEAN_CLOSE), errors
    # Requests well under way at SIGTERM (sent >= 0.3 s before, so surely being handled) were finished.
    t0 = sigterm_at[0]
    in_flight = [o for o in outcomes if o.kind == "rag" and o.started < t0 - 0.3 and o.ended > t0]
    assert len(in_flight) >= 5, f"only {len(in_flight)} slow queries were in flight at SIGTERM"
    assert all(o.result == 200 for o in in_flight), [o.result for o in in_flight]
    assert_clean_exit(gw)
    # Every acknowledged write survived the shutdown; the file is sound.
    found = await on_db(gw.db_path, lambda c: {r[0] for r in c.execute("SELECT id FROM session_events")})
    assert set(written) <= found
    checks, orphans = await on_db(gw.db_path, integrity)
    assert checks == ["ok"] and orphans == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_idle_stop_exits_zero_with_checkpointed_wal(
    tmp_path: Path, quiet_devstack: ServerThread, sig: signal.Signals
) -> None:
    gw = GatewayProcess(tmp_path, quiet_devstack.url, shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    try:
        await gw.start()
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            r = await client.post("/sessions", json={"name": "idle"}, headers=TEACHER)
            assert r.status_code == 201
            # an idle keep-alive connection stays open across the signal
            gw.signal(sig)
            code = await gw.wait_exit(SHUTDOWN_TIMEOUT_S + 5)
    finally:
        gw.close()
    assert code == 0, f"exit code {code} after {sig.name}:\n{gw.log_text()[-3000:]}"
    assert_clean_exit(gw)


async def test_sigterm_with_a_request_that_never_finishes_still_exits_in_time(
    tmp_path: Path, quiet_devstack: ServerThread
) -> None:
    """A downstream that hangs longer than SHUTDOWN_TIMEOUT_S: the drain is cut at the timeout, not waited out."""
    timeout_s = 2
    gw = GatewayProcess(tmp_path, quiet_devstack.url, shutdown_timeout_s=timeout_s, http_read_timeout_s=60)
    try:
        await gw.start()
        async with httpx.AsyncClient(base_url=quiet_devstack.url) as c:
            r = await c.post("/_control", json={"fault": "hang", "hang_seconds": 60, "fault_paths": ["/query"]})
            r.raise_for_status()
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            r = await client.post("/sessions", json={"name": "hang"}, headers=TEACHER)
            sid = r.json()["session_id"]
            stuck = asyncio.create_task(
                client.post("/rag/query", json={"session_id": sid, "query": "q"}, headers=TEACHER)
            )
            await asyncio.sleep(0.5)
            started = time.monotonic()
            gw.signal(signal.SIGTERM)
            code = await gw.wait_exit(timeout_s + 10)
            took = time.monotonic() - started
            r = await asyncio.wait_for(stuck, 10)
    finally:
        gw.close()
    assert code == 0, f"exit code {code}:\n{gw.log_text()[-3000:]}"
    assert took < timeout_s + 4, f"exit took {took:.1f} s with SHUTDOWN_TIMEOUT_S={timeout_s}"
    # uvicorn cancels it at the timeout; the caller gets a clean 503 (not uvicorn's 500), then the connection closes
    assert r.status_code == 503 and r.headers.get("retry-after") == "1", (r.status_code, r.text)
    assert r.json()["error"]["code"] == "shutting_down"
    assert_clean_exit(gw)  # the cut is logged as one uvicorn ERROR line, without a traceback
