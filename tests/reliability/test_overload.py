"""Overload: past MAX_IN_FLIGHT the gateway sheds with 503 + Retry-After; a 5,000-connection burst stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from reliability_kit import GatewayProcess, eventually, raise_nofile

from devstack.app import create_app as create_devstack
from devstack.settings import DevstackSettings
from service.app import create_app
from support.servers import ServerThread, gateway_settings

TEACHER = {"Authorization": "Bearer dev-teacher-token"}
BURST = 5000
RSS_BOUND_MIB = 300


@pytest.fixture
def slow_devstack() -> Iterator[ServerThread]:
    """Our own reference downstream whose /query takes 1 s (the shared one stays untouched)."""
    server = ServerThread(create_devstack(DevstackSettings(latency_ms=1000, fault_paths=("/query",)))).start()
    yield server
    server.stop()


async def test_past_max_in_flight_requests_are_shed_with_503_and_retry_after(
    tmp_path: Path, slow_devstack: ServerThread
) -> None:
    settings = gateway_settings(tmp_path, slow_devstack.url, max_in_flight=20, auth_cache_ttl_s=600)
    gateway = ServerThread(create_app(settings)).start()
    try:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as client:
            r = await client.post("/sessions", json={"name": "shed"}, headers=TEACHER)  # also caches the token
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]

            async def query() -> httpx.Response:
                return await client.post("/rag/query", json={"session_id": sid, "query": "q"}, headers=TEACHER)

            burst = [asyncio.create_task(query()) for _ in range(200)]
            await asyncio.sleep(0.2)
            health = await client.get("/health")  # liveness is never shed
            answers = await asyncio.wait_for(asyncio.gather(*burst), 60)
            after = await query()
            metrics = (await client.get("/metrics")).text
    finally:
        gateway.stop()

    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0 and statuses[200] >= settings.max_in_flight, statuses
    for r in answers:
        if r.status_code == 503:
            assert r.headers.get("retry-after") == "1", r.headers
            assert r.json()["error"]["code"] == "overloaded", r.text
    assert health.status_code == 200
    assert after.status_code == 200, after.text  # not stuck after the burst
    gauge = [line for line in metrics.splitlines() if line.startswith("http_requests_in_flight ")]
    assert gauge and float(gauge[0].split()[1]) <= 1.0, gauge  # only the /metrics request itself
    print(f"\nshedding at MAX_IN_FLIGHT=20, 200 concurrent RAG queries: {dict(statuses)}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
async def test_burst_of_5000_connections_keeps_memory_bounded(tmp_path: Path, devstack: ServerThread) -> None:
    limit = raise_nofile(3 * BURST)  # the child inherits it
    if limit < BURST + 500:
        pytest.fail(f"RLIMIT_NOFILE hard limit too low for the burst: {limit}")
    gw = GatewayProcess(tmp_path, devstack.url, auth_cache_ttl_s=600)
    try:
        await gw.start()
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
            r = await c.post("/sessions", json={"name": "burst"}, headers=TEACHER)
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            assert (await c.get(f"/sessions/{sid}", headers=TEACHER)).status_code == 200
        await asyncio.sleep(0.2)
        base_rss, base_fds = gw.rss_kib(), fd_count(gw.pid)
        peak = [base_rss]
        sampling = True

        async def sample() -> None:
            while sampling:
                peak[0] = max(peak[0], gw.rss_kib())
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        go = asyncio.Event()
        connected = [0]
        results: Counter[int | str] = Counter()
        read_req = (
            f"GET /sessions/{sid} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-teacher-token\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        health_req = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

        async def one(i: int) -> None:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 45)
                connected[0] += 1
                if connected[0] == BURST:
                    go.set()
                await go.wait()  # all 5,000 are open at once before any request is sent
                writer.write(read_req if i % 5 == 0 else health_req)
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(), 45)
                results[int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else "no response"] += 1
            except (OSError, TimeoutError) as exc:
                results[type(exc).__name__] += 1
            finally:
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

        started = time.monotonic()
        tasks = [asyncio.create_task(one(i)) for i in range(BURST)]
        try:
            # Release the requests once every connection is open, or after 45 s whatever the count.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(go.wait(), 45)
            go.set()
            open_at_once, open_s = connected[0], time.monotonic() - started
            await asyncio.wait_for(asyncio.gather(*tasks), 90)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sampling = False
            await sampler
        took = time.monotonic() - started

        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
            health = await c.get("/health")
            ready = await c.get("/health/ready")
        await eventually(lambda: fd_count(gw.pid) <= base_fds + 5, 15, "the server kept the burst's sockets open")
        fds_after = fd_count(gw.pid)
        alive = gw.running
    finally:
        gw.close()

    print(
        f"\n{BURST}-connection burst: {open_at_once} open at once after {open_s:.1f}s, results={dict(results)}, "
        f"took {took:.1f}s, RSS {base_rss / 1024:.0f} MiB -> peak {peak[0] / 1024:.0f} MiB, "
        f"fds {base_fds} -> {fds_after} after"
    )
    assert alive, gw.log_text()[-3000:]
    assert peak[0] < RSS_BOUND_MIB * 1024, f"peak RSS {peak[0] / 1024:.0f} MiB"
    assert health.status_code == 200 and ready.status_code == 200
    assert open_at_once == BURST, f"only {open_at_once} connections were open at once"
    assert set(results) <= {200, 503}, results  # 503 only if a session read was shed
    assert sum(results.values()) == BURST and results[200] >= BURST * 0.95, results
    assert fds_after <= base_fds + 5, f"server holds {fds_after} fds after the burst (baseline {base_fds})"
    assert "Traceback" not in gw.log_text(), gw.log_text()[-3000:]
