"""``WORKERS=2``: real supervisor and worker processes (``python -m service serve``) on one port and one SQLite file.

Which worker served a request is read from the kernel, not from the service: the client's end of the connection
gives its local port, ``/proc/net/tcp`` the inode of the server's end, and the worker holding that inode in its fd
table is the one that accepted it. Everything runs on 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_kit import (
    TRANSPORT_ERRORS,
    ChildProcess,
    GatewayProcess,
    eventually,
    integrity,
    on_db,
    wal_bytes,
)

from devstack.app import create_app as create_devstack
from devstack.settings import DevstackSettings
from service.storage.sqlite.migrations import SCHEMA_VERSION
from support.ports import free_port
from support.servers import ServerThread

TEACHER = {"Authorization": "Bearer dev-teacher-token"}
SECRET = "workers-test-cursor-secret-0123456789"
FORBIDDEN = ("Traceback", "ResourceWarning", "Event loop is closed", "Task was destroyed", "Unclosed")
SHUTDOWN_TIMEOUT_S = 8
EXIT_WITHIN_S = 20.0


# -- which process holds a connection ---------------------------------------------------------------------------
def worker_pids(supervisor: int) -> set[int]:
    try:
        text = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


def _server_inode(port: int, client_port: int) -> int | None:
    """The inode of the server's end of the connection from ``client_port`` to ``port`` (IPv4 loopback)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port and inode:
            return inode
    return None


def _holder(inode: int, pids: set[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if Path(fd).readlink().as_posix() == target:
                    return pid
            except OSError:
                continue
    return None


def served_by(response: httpx.Response, gw: GatewayProcess) -> int | None:
    """The worker pid holding the (still open, keep-alive) connection ``response`` came on."""
    stream: Any = response.extensions["network_stream"]
    client_port = stream.get_extra_info("client_addr")[1]
    inode = _server_inode(gw.port, client_port)
    return None if inode is None else _holder(inode, worker_pids(gw.pid))


def connections_per_worker(gw: GatewayProcess) -> Counter[int]:
    """Established connections to the gateway's port, by the worker holding them."""
    pids = worker_pids(gw.pid)
    inodes = {
        int(f[9])
        for f in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if int(f[1].split(":")[1], 16) == gw.port and f[3] == "01"  # ESTABLISHED, the server's end
    }
    held: Counter[int] = Counter()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                link = Path(fd).readlink().as_posix()
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                held[pid] += 1
    return held


@contextlib.asynccontextmanager
async def pinned_clients(
    gw: GatewayProcess, per_worker: int, request_timeout_s: float = 10.0
) -> AsyncIterator[dict[int, list[httpx.AsyncClient]]]:
    """``per_worker`` one-connection clients on each worker: new connections are opened (bounded) until every
    worker has accepted that many; the rest are closed. The kernel picks the worker, we only keep what it picked."""
    await all_workers_ready(gw)
    pids = worker_pids(gw.pid)
    by_worker: dict[int, list[httpx.AsyncClient]] = {pid: [] for pid in pids}
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(40 * per_worker * len(pids)):
            if all(len(v) >= per_worker for v in by_worker.values()):
                break
            client = httpx.AsyncClient(base_url=gw.url, timeout=request_timeout_s, limits=one)
            r = await client.get("/health")
            pid = served_by(r, gw)
            if pid in by_worker and len(by_worker[pid]) < per_worker:
                by_worker[pid].append(client)
                stack.push_async_callback(client.aclose)
            else:
                await client.aclose()
        counts = {pid: len(v) for pid, v in by_worker.items()}
        assert all(n == per_worker for n in counts.values()), f"connections by worker: {counts}"
        yield by_worker


def lag_pids(metrics: str) -> set[int]:
    return {int(m) for m in re.findall(r'^event_loop_lag_seconds\{pid="(\d+)"\}', metrics, re.MULTILINE)}


def metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("service-metrics-*"))


# -- fixtures ---------------------------------------------------------------------------------------------------
def workers_gateway(tmp: Path, downstream: str, *, name: str = "gateway", **settings: Any) -> GatewayProcess:
    values: dict[str, Any] = {"workers": 2, "cursor_secret": SECRET, "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S}
    gw = GatewayProcess(tmp, downstream, name=name, **{**values, **settings})
    gw.env["TMPDIR"] = str(tmp)  # the supervisor's metrics directory lands here, where a test can look for it
    return gw


@pytest.fixture
def own_devstack() -> Iterator[ServerThread]:
    """A reference downstream of our own, so its knobs (latency) never touch the shared one."""
    server = ServerThread(create_devstack(DevstackSettings(seed=11))).start()
    yield server
    server.stop()


@pytest.fixture
async def gw(tmp_path: Path, devstack: ServerThread) -> AsyncIterator[GatewayProcess]:
    proc = workers_gateway(tmp_path, devstack.url)
    try:
        await proc.start()
        await eventually(lambda: len(worker_pids(proc.pid)) == 2, 20, "two workers never appeared")
        yield proc
        if proc.running:  # a clean stop, so no worker outlives the test by its drain
            proc.signal(signal.SIGTERM)
            await proc.wait_exit(EXIT_WITHIN_S)
    finally:
        proc.close()


async def new_session(client: httpx.AsyncClient, name: str = "w") -> str:
    r = await client.post("/sessions", json={"name": name}, headers=TEACHER)
    assert r.status_code == 201, r.text
    sid: str = r.json()["session_id"]
    return sid


async def all_workers_ready(gw: GatewayProcess) -> None:
    """Every worker answers: until the lag series of both appear in /metrics (each worker writes its own)."""

    async def both() -> bool:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as c:
            return len(lag_pids((await c.get("/metrics")).text) & worker_pids(gw.pid)) == 2

    await eventually(both, 30, "not every worker reported its loop lag")


# -- both workers serve ---------------------------------------------------------------------------------------------
async def test_requests_on_new_connections_are_served_by_both_workers(gw: GatewayProcess) -> None:
    await all_workers_ready(gw)
    pids = worker_pids(gw.pid)
    seen: Counter[int | None] = Counter()
    for _ in range(200):  # bounded; each connection is accepted by whichever worker takes it
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as c:
            r = await c.get("/health")
            assert r.status_code == 200
            seen[served_by(r, gw)] += 1
        if set(seen) >= pids:
            break
    assert set(seen) == pids, f"served by {dict(seen)}, workers {pids}"
    async with httpx.AsyncClient(base_url=gw.url, timeout=5) as c:
        metrics = (await c.get("/metrics")).text
    assert lag_pids(metrics) == pids, metrics
    assert len(re.findall(r"^http_requests_in_flight ", metrics, re.MULTILINE)) == 1  # one, summed series
    served = sum(
        float(m)
        for m in re.findall(r'^http_requests_total\{method="GET",route="/health",status="200"\} (\S+)', metrics, re.M)
    )
    assert served == sum(seen.values()), metrics  # the whole service's count, whichever worker rendered it
    print(f"\n/health on new connections, by worker: {dict(seen)}")


async def test_concurrent_appends_are_all_there_with_unique_ids(gw: GatewayProcess) -> None:
    """400 appends over 16 connections (8 on each worker) to 8 sessions: every one stored once, ids unique."""
    async with pinned_clients(gw, per_worker=8) as by_worker:
        clients = [c for pinned in by_worker.values() for c in pinned]
        sids = [await new_session(clients[0], f"s{n}") for n in range(8)]
        ids: list[int] = []

        async def append(n: int) -> None:
            body = {"event_type": "NOTE", "event_data": {"n": n}}
            r = await clients[n % 16].post(f"/sessions/{sids[n % 8]}/events", json=body, headers=TEACHER)
            assert r.status_code == 201, r.text
            ids.extend(e["id"] for e in r.json()["events"])

        await asyncio.gather(*(append(n) for n in range(400)))
        assert sorted(connections_per_worker(gw).values()) == [8, 8]  # still the same connections
    assert len(ids) == 400 and len(set(ids)) == 400

    def stored(conn: sqlite3.Connection) -> tuple[int, int, list[tuple[str, int]]]:
        notes = conn.execute("SELECT count(*), count(DISTINCT id) FROM session_events WHERE event_type = 'NOTE'")
        total, distinct = notes.fetchone()
        per = conn.execute(
            "SELECT session_id, count(*) FROM session_events WHERE event_type = 'NOTE' GROUP BY session_id"
        ).fetchall()
        return total, distinct, per

    total, distinct, per = await on_db(gw.db_path, stored)
    assert (total, distinct) == (400, 400)
    assert sorted(count for _, count in per) == [50] * 8


async def test_a_cursor_walk_across_workers_returns_every_session_once(gw: GatewayProcess) -> None:
    await all_workers_ready(gw)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        created = {await new_session(client, f"walk{n}") for n in range(23)}
    pids = worker_pids(gw.pid)
    page_pids: set[int | None] = set()
    for _ in range(20):  # walks until pages were served by both workers (each page on a new connection)
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
                r = await c.get("/sessions", params=params, headers=TEACHER)
                assert r.status_code == 200, r.text
                page_pids.add(served_by(r, gw))
            seen += [s["session_id"] for s in r.json()]
            cursor = r.headers.get("x-next-cursor")
            if not cursor:
                break
        assert len(seen) == len(set(seen)) and set(seen) >= created, (len(seen), len(created))
        if page_pids >= pids:
            break
    assert page_pids == pids, f"pages served by {page_pids}, workers {pids}"


# -- a worker dies -----------------------------------------------------------------------------------------------
async def test_a_worker_killed_under_load_is_replaced_and_every_acknowledged_write_is_there(
    gw: GatewayProcess,
) -> None:
    """16 writers, 8 on each worker; one worker SIGKILLed mid-load. Its clients reconnect (to whichever worker)."""
    acked: list[int] = []
    statuses: Counter[int | str] = Counter()
    async with pinned_clients(gw, per_worker=8, request_timeout_s=15) as by_worker:
        before = set(by_worker)
        victim = min(before)
        clients = [c for pinned in by_worker.values() for c in pinned]
        sids = [await new_session(clients[0], f"k{n}") for n in range(8)]
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            for i in range(150):  # bounded
                if stop.is_set():
                    return
                try:
                    r = await clients[n].post(
                        f"/sessions/{sids[n % 8]}/events",
                        json={"event_type": "NOTE", "event_data": {"i": i}},
                        headers=TEACHER,
                    )
                except TRANSPORT_ERRORS as exc:  # a request in flight on the killed worker: no answer
                    statuses[type(exc).__name__] += 1
                    continue
                statuses[r.status_code] += 1
                if r.status_code == 201:
                    acked.extend(e["id"] for e in r.json()["events"])

        tasks = [asyncio.create_task(writer(n)) for n in range(16)]
        await eventually(lambda: len(acked) >= 200, 30, "the load never got going")
        killed_at = len(acked)
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: len(acked) >= killed_at + 400, 60, "writes did not go on after the kill")
        stop.set()
        await asyncio.gather(*tasks)
    await replacement_of(gw, victim, before)
    assert gw.running
    assert set(statuses) <= {201, "ReadError", "RemoteProtocolError", "ConnectError", "WriteError"}, statuses
    stored = set(await on_db(gw.db_path, lambda c: [r[0] for r in c.execute("SELECT id FROM session_events")]))
    assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged events missing"
    checks, orphans = await on_db(gw.db_path, integrity)
    assert checks == ["ok"] and orphans == []
    assert f"(pid {victim}) died (killed by SIGKILL); starting a replacement" in gw.log_text()
    # the new worker serves, and /metrics forgets the dead one's live gauges
    now = worker_pids(gw.pid)

    async def lag_of_the_living() -> bool:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as c:
            return lag_pids((await c.get("/metrics")).text) == now

    await eventually(lag_of_the_living, 20, "/metrics still shows the dead worker, or not the new one")
    async with pinned_clients(gw, per_worker=1) as replaced_too:  # and the replacement takes connections
        assert set(replaced_too) == now
    print(f"\nkill under load: {dict(statuses)}; {len(acked)} acknowledged, all stored; workers {before} -> {now}")


async def replacement_of(gw: GatewayProcess, victim: int, before: set[int]) -> None:
    def replaced() -> bool:
        now = worker_pids(gw.pid)
        return len(now) == 2 and victim not in now and len(now - before) == 1

    await eventually(replaced, 30, f"worker {victim} was not replaced")


async def test_workers_that_keep_dying_are_replaced_after_a_growing_delay(gw: GatewayProcess) -> None:
    """Three deaths within a minute: the first replaced at once, the next after 0.5 s, then 1 s (no spinning)."""
    for _ in range(3):
        pids = worker_pids(gw.pid)
        victim = max(pids)
        os.kill(victim, signal.SIGKILL)
        await replacement_of(gw, victim, pids)
    log = gw.log_text()
    replacements = re.findall(r"died \(killed by SIGKILL\); starting a replacement(.*)$", log, re.MULTILINE)
    assert [r.split(" (")[0] for r in replacements] == ["", " in 0.5 s", " in 1.0 s"], log[-3000:]
    async with httpx.AsyncClient(base_url=gw.url, timeout=5) as c:
        assert (await c.get("/health/ready")).status_code == 200


async def test_sigterm_drains_both_workers_and_exits_zero(tmp_path: Path, own_devstack: ServerThread) -> None:
    """Slow RAG queries in flight on both workers (4 each): each answered 200, then exit 0, WAL checkpointed."""
    gw = workers_gateway(tmp_path, own_devstack.url, auth_cache_ttl_s=600, log_level="info")
    try:
        await gw.start()
        async with httpx.AsyncClient(base_url=own_devstack.url) as c:
            r = await c.post("/_control", json={"latency_ms": 1500, "fault_paths": ["/query"]})
            r.raise_for_status()
        async with pinned_clients(gw, per_worker=4, request_timeout_s=30) as by_worker:
            pids = set(by_worker)
            clients = [c for pinned in by_worker.values() for c in pinned]
            sid = await new_session(clients[0], "drain")
            queries = [
                asyncio.create_task(c.post("/rag/query", json={"session_id": sid, "query": "q"}, headers=TEACHER))
                for c in clients
            ]
            await asyncio.sleep(0.5)  # inside the 1.5 s downstream call
            gw.signal(signal.SIGTERM)
            code = await gw.wait_exit(SHUTDOWN_TIMEOUT_S + 15)
            answers = await asyncio.gather(*queries, return_exceptions=True)
    finally:
        gw.close()
    assert code == 0, gw.log_text()[-3000:]
    assert [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers] == [200] * 8
    assert not any(_alive(pid) for pid in pids)
    assert wal_bytes(gw.db_path) == 0
    assert metrics_dirs(tmp_path) == []
    log = gw.log_text()
    assert log.count("shutdown complete: http client closed") == 2, log[-3000:]
    for needle in FORBIDDEN:
        assert needle not in log, log[-3000:]


async def test_a_second_sigterm_while_draining_kills_the_workers(tmp_path: Path, own_devstack: ServerThread) -> None:
    """Queries hang downstream, so the drain would take SHUTDOWN_TIMEOUT_S: a second SIGTERM ends it now, 128+15."""
    gw = workers_gateway(tmp_path, own_devstack.url, log_level="info")
    try:
        await gw.start()
        async with httpx.AsyncClient(base_url=own_devstack.url) as c:
            r = await c.post("/_control", json={"fault": "hang", "hang_seconds": 60, "fault_paths": ["/query"]})
            r.raise_for_status()
        async with pinned_clients(gw, per_worker=2, request_timeout_s=30) as by_worker:
            pids = set(by_worker)
            clients = [c for pinned in by_worker.values() for c in pinned]
            sid = await new_session(clients[0], "hang")
            queries = [
                asyncio.create_task(c.post("/rag/query", json={"session_id": sid, "query": "q"}, headers=TEACHER))
                for c in clients
            ]
            await asyncio.sleep(0.5)
            gw.signal(signal.SIGTERM)
            await eventually(lambda: "SIGTERM: draining 2 workers" in gw.log_text(), 10, "no drain began")
            gw.signal(signal.SIGTERM)
            code = await gw.wait_exit(SHUTDOWN_TIMEOUT_S - 2)  # sooner than the drain would have ended
            await asyncio.gather(*queries, return_exceptions=True)
    finally:
        gw.close()
    assert code == 128 + signal.SIGTERM, gw.log_text()[-3000:]
    assert "SIGTERM again: killing 2 workers" in gw.log_text()
    assert not any(_alive(pid) for pid in pids)
    assert metrics_dirs(tmp_path) == []


# -- the migration runs once -----------------------------------------------------------------------------------------
async def test_many_workers_on_a_fresh_file_migrate_it_once(tmp_path: Path, devstack: ServerThread) -> None:
    gw = workers_gateway(tmp_path, devstack.url, workers=4, log_level="info", access_log="false")
    try:
        await gw.start()
        await eventually(lambda: len(worker_pids(gw.pid)) == 4, 20, "four workers never appeared")
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as c:
            assert (await new_session(c)) is not None
    finally:
        gw.signal(signal.SIGTERM)
        code = await gw.wait_exit(EXIT_WITHIN_S)
        gw.close()
    assert code == 0
    log = gw.log_text()
    for step in range(1, SCHEMA_VERSION + 1):
        assert log.count(f"applied schema migration v{step}") == 1, log
    assert await on_db(gw.db_path, lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION


async def test_several_supervisors_at_once_on_one_fresh_file(tmp_path: Path, devstack: ServerThread) -> None:
    shared = tmp_path / "shared.db"
    gws = [workers_gateway(tmp_path, devstack.url, name=f"gw{n}", log_level="info") for n in range(3)]
    for g in gws:
        g.env["DATABASE_PATH"] = str(shared)
        g.db_path = shared
    try:
        for g in gws:
            g.spawn("serve")  # together, before any has migrated
        await asyncio.gather(*(g.wait_http(f"{g.url}/health/ready", 60) for g in gws))
        async with httpx.AsyncClient(timeout=10) as c:
            for g in gws:
                r = await c.post(f"{g.url}/sessions", json={"name": "race"}, headers=TEACHER)
                assert r.status_code == 201, r.text
    finally:
        for g in gws:
            g.signal(signal.SIGTERM)
        codes = [await g.wait_exit(EXIT_WITHIN_S) for g in gws]
        for g in gws:
            g.close()
    logs = "".join(g.log_text() for g in gws)
    assert codes == [0, 0, 0], logs[-3000:]
    assert "already exists" not in logs
    for step in range(1, SCHEMA_VERSION + 1):
        assert logs.count(f"applied schema migration v{step}") == 1, logs[-3000:]
    sessions = await on_db(shared, lambda c: c.execute("SELECT count(*) FROM sessions").fetchone()[0])
    assert sessions == 3


# -- failures that stop everything -------------------------------------------------------------------------------
async def run_to_exit(proc: ChildProcess, *args: str) -> int:
    proc.spawn(*args)
    return await proc.wait_exit(EXIT_WITHIN_S)


async def test_a_worker_that_cannot_start_stops_the_service_with_exit_3(tmp_path: Path) -> None:
    """The CA bundle is no certificate: every worker fails to build its client; the supervisor exits 3."""
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    gw = workers_gateway(tmp_path, "http://127.0.0.1:9")
    gw.env["SSL_CERT_FILE"] = str(bundle)
    try:
        code = await run_to_exit(gw, "serve")
    finally:
        gw.close()
    log = gw.log_text()
    assert code == 3, log
    lines = [line for line in log.splitlines() if line.strip()]
    assert "start-up failed: worker" in lines[-1] and "could not start (exit 3, see above)" in lines[-1], log
    assert "start-up failed: cannot build the downstream HTTP client" in log
    assert log.count("starting a replacement") == 0  # not restarted forever
    assert "Traceback" not in log
    assert metrics_dirs(tmp_path) == []
    assert wal_bytes(gw.db_path) == 0  # migrated by the supervisor, closed cleanly


@pytest.mark.parametrize(
    ("settings", "named"),
    [({"WORKERS": "2"}, "WORKERS=2"), ({"DATABASE_URL": "postgresql://u:pw@127.0.0.1:9/db"}, "DATABASE_URL")],
)
async def test_several_processes_without_cursor_secret_exit_2(
    tmp_path: Path, settings: dict[str, str], named: str
) -> None:
    gw = GatewayProcess(tmp_path, "http://127.0.0.1:9")
    gw.env.update(settings)
    try:
        code = await run_to_exit(gw, "serve")
    finally:
        gw.close()
    lines = [line for line in gw.log_text().splitlines() if line.strip()]
    assert code == 2, gw.log_text()
    assert len(lines) == 1 and lines[0].startswith(f"configuration error: CURSOR_SECRET is required with {named}")
    assert "pw@" not in lines[0]
    assert not gw.db_path.exists()


async def test_a_schema_newer_than_this_build_exits_3_before_any_worker_starts(tmp_path: Path) -> None:
    gw = workers_gateway(tmp_path, "http://127.0.0.1:9")
    conn = sqlite3.connect(gw.db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    try:
        code = await run_to_exit(gw, "serve")
    finally:
        gw.close()
    lines = [line for line in gw.log_text().splitlines() if line.strip()]
    assert code == 3, gw.log_text()
    assert len(lines) == 1 and "start-up failed: cannot open the database DATABASE_PATH=" in lines[0], lines
    assert f"v{SCHEMA_VERSION + 1} is newer than this build" in lines[0]


async def test_the_port_in_use_exits_3_before_any_worker_starts(tmp_path: Path) -> None:
    gw = workers_gateway(tmp_path, "http://127.0.0.1:9")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", gw.port))
        taken.listen()
        try:
            code = await run_to_exit(gw, "serve")
        finally:
            gw.close()
    lines = [line for line in gw.log_text().splitlines() if line.strip()]
    assert code == 3, gw.log_text()
    assert f"start-up failed: cannot listen on 127.0.0.1:{gw.port}" in lines[-1]
    assert "worker 0 started" not in gw.log_text()
    assert metrics_dirs(tmp_path) == []


async def test_killing_the_supervisor_leaves_no_worker_behind(gw: GatewayProcess) -> None:
    pids = worker_pids(gw.pid)
    await gw.kill()  # SIGKILL: no drain by the supervisor

    def gone() -> bool:
        return not any(_alive(pid) for pid in pids)

    await eventually(gone, 20, "workers outlived their supervisor")
    with socket.socket() as probe:  # and the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", gw.port))
    assert free_port() > 0


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by whoever adopted it, is not)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (FileNotFoundError, IndexError):
        return False
    return "zombie" not in state.lower()
