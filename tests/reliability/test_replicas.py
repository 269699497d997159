"""Three real gateway replicas on one PostgreSQL database, concurrent clients spread across them, and faults.

Each test starts three ``python -m service serve`` processes on a fresh database (``pg_dsn``) of the session's
PostgreSQL server, with one shared ``CURSOR_SECRET``; clients send request ``k`` to replica ``k % 3``. What must
hold however the requests interleave across processes: exact counts, no lost merge-patch or counter update, a
cursor made by one replica valid on the others, one winner of racing ends; after a replica is SIGKILLed or
PostgreSQL restarts under load, every write a replica acknowledged is in the database, the live replicas never
answer a 5xx other than 503 + Retry-After, and they recover by themselves. Migrations are a one-off job
(``python -m service migrate``): replicas never migrate, report not-ready on an older schema, refuse a newer one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from reliability_kit import GatewayProcess, eventually
from replicas_kit import (
    Ledger,
    Replicas,
    assert_acknowledged_are_stored,
    load_until,
    pg_fetch,
    replica_env,
    replicas_on,
    run_cli,
    write_unit,
)

from service.storage.postgres import ddl
from service.storage.postgres.migrations import MIGRATIONS, SCHEMA_VERSION
from support.postgres import PostgresServer
from support.servers import ServerThread, auth

pytestmark = pytest.mark.slow

T = TypeVar("T")
IN_FLIGHT = 24  # requests in flight across the three replicas
RECOVER_WITHIN_S = 20.0


async def bounded(thunks: Iterable[Callable[[], Awaitable[T]]], limit: int = IN_FLIGHT) -> list[T]:
    slots = asyncio.Semaphore(limit)

    async def one(thunk: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await thunk()

    return list(await asyncio.gather(*(one(t) for t in thunks)))


@pytest.fixture
async def replicas(tmp_path: Path, devstack: ServerThread, pg_dsn: str) -> AsyncIterator[Replicas]:
    async with replicas_on(tmp_path, devstack.url, pg_dsn) as started:
        yield started


async def create_spread(replicas: Replicas, count: int, role: str = "teacher") -> list[str]:
    async def one(i: int) -> str:
        r = await replicas.client(i).post("/sessions", json={"name": f"s{i}", "metadata": {"i": i}}, headers=auth(role))
        assert r.status_code == 201, r.text
        sid: str = r.json()["session_id"]
        return sid

    return await bounded([partial(one, i) for i in range(count)])


# -- 1. exact counts, event ids in commit order ------------------------------------------------------------------
SESSIONS = 90
CHAIN = 4  # sequential appends per session, each on another replica than the one before
HOT_APPENDS = 90  # concurrent appends to one session from all three


async def test_exact_counts_and_event_ids_in_commit_order_across_replicas(replicas: Replicas) -> None:
    sids = await create_spread(replicas, SESSIONS)
    assert len(set(sids)) == SESSIONS
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def append(k: int, sid: str, body: dict[str, Any]) -> int:
        async with slots:
            r = await replicas.client(k).post(f"/sessions/{sid}/events", json=body, headers=auth("teacher"))
        assert r.status_code == 201, r.text
        (event,) = r.json()["events"]
        event_id: int = event["id"]
        return event_id

    async def chain(i: int, sid: str) -> list[int]:
        # each append starts after the previous one was acknowledged (committed): ids must follow that order
        return [await append(i + j + 1, sid, {"event_type": "CHAIN", "event_data": {"j": j}}) for j in range(CHAIN)]

    hot = (await create_spread(replicas, 1))[0]
    chains, hot_ids = await asyncio.gather(
        asyncio.gather(*(chain(i, sid) for i, sid in enumerate(sids))),
        asyncio.gather(*(append(k, hot, {"event_type": "HOT", "event_data": {"k": k}}) for k in range(HOT_APPENDS))),
    )
    for ids in chains:
        assert ids == sorted(ids) and len(set(ids)) == CHAIN, ids
    acked = [i for ids in chains for i in ids] + list(hot_ids)
    assert len(set(acked)) == len(acked) == SESSIONS * CHAIN + HOT_APPENDS

    dsn = replicas.dsn
    assert await pg_fetch(dsn, "SELECT count(*) FROM sessions") == [(SESSIONS + 1,)]
    by_type = dict(await pg_fetch(dsn, "SELECT event_type, count(*) FROM session_events GROUP BY event_type"))
    assert by_type == {"SESSION_STARTED": SESSIONS + 1, "CHAIN": SESSIONS * CHAIN, "HOT": HOT_APPENDS}
    stored = await pg_fetch(dsn, "SELECT session_id, id FROM session_events WHERE event_type = 'CHAIN' ORDER BY id")
    per_session: dict[str, list[int]] = {}
    for sid, event_id in stored:
        per_session.setdefault(sid, []).append(event_id)
    assert [per_session[sid] for sid in sids] == chains
    # the hot session's events, read through each replica, are its acknowledged ids in id order
    for k in range(len(replicas)):
        r = await replicas.client(k).get(f"/sessions/{hot}/events", params={"limit": 500}, headers=auth("teacher"))
        assert r.status_code == 200, r.text
        ids = [e["id"] for e in r.json()["events"] if e["event_type"] == "HOT"]
        assert ids == sorted(hot_ids)
    stats = (await replicas.client(0).get("/sessions/stats", headers=auth("admin"))).json()
    assert stats["total"] == SESSIONS + 1


# -- 2. no lost PATCH, no lost counter update -------------------------------------------------------------------
PATCHES = 60
RAG_QUERIES = 45


async def test_no_lost_patch_or_counter_update_across_replicas(replicas: Replicas, reset_devstack: None) -> None:
    sid = (await create_spread(replicas, 1))[0]

    async def patch(k: int) -> httpx.Response:
        body = {"metadata": {f"k{k}": k}}
        return await replicas.client(k).patch(f"/sessions/{sid}", json=body, headers=auth("teacher"))

    async def query(k: int) -> httpx.Response:
        body = {"session_id": sid, "query": f"question {k}"}
        return await replicas.client(k).post("/rag/query", json=body, headers=auth("teacher"))

    answers = await bounded(
        [*(partial(patch, k) for k in range(PATCHES)), *(partial(query, k) for k in range(RAG_QUERIES))]
    )
    assert [r.status_code for r in answers] == [200] * (PATCHES + RAG_QUERIES), [r.text for r in answers if r.is_error]

    expected = {"i": 0, **{f"k{k}": k for k in range(PATCHES)}}
    for k in range(len(replicas)):  # the same answer from every replica
        session = (await replicas.client(k).get(f"/sessions/{sid}", headers=auth("teacher"))).json()
        assert session["metadata"] == expected
        assert session["query_count"] == RAG_QUERIES
    by_type = dict(
        await pg_fetch(
            replicas.dsn, "SELECT event_type, count(*) FROM session_events WHERE session_id = $1 GROUP BY 1", sid
        )
    )
    assert by_type == {"SESSION_STARTED": 1, "METADATA_UPDATED": PATCHES, "RAG_QUERY": RAG_QUERIES}


# -- 3. a cursor walk across replicas ---------------------------------------------------------------------------
LISTED = 61
PAGE = 7


async def test_a_cursor_walk_with_pages_from_different_replicas_returns_every_session_once(
    replicas: Replicas,
) -> None:
    created = await create_spread(replicas, LISTED)
    seen: list[str] = []
    served_by: set[int] = set()
    params: dict[str, Any] = {"limit": PAGE}
    page = 0
    while True:
        k = page % len(replicas)  # the cursor of page k - 1 was signed by another replica
        r = await replicas.client(k).get("/sessions", params=params, headers=auth("admin"))
        assert r.status_code == 200, r.text
        seen.extend(s["session_id"] for s in r.json())
        served_by.add(k)
        page += 1
        cursor = r.headers.get("x-next-cursor")
        if cursor is None:
            break
        params = {"limit": PAGE, "cursor": cursor}
        assert page <= LISTED, "the walk does not end"
    assert Counter(seen) == Counter(created)
    assert page == -(-LISTED // PAGE) and served_by == {0, 1, 2}


# -- 4. racing ends ---------------------------------------------------------------------------------------------
RACES = 12


async def test_the_same_session_ended_from_three_replicas_has_one_winner(replicas: Replicas) -> None:
    sids = await create_spread(replicas, RACES)

    async def race(sid: str) -> list[int]:
        answers = await asyncio.gather(
            *(c.post(f"/sessions/{sid}/end", json={"end_state": 1}, headers=auth("teacher")) for c in replicas.clients)
        )
        return sorted(r.status_code for r in answers)

    outcomes = await asyncio.gather(*(race(sid) for sid in sids))
    assert outcomes == [[200, 409, 409]] * RACES
    ended = await pg_fetch(
        replicas.dsn,
        "SELECT s.status, count(e.id) FROM sessions s LEFT JOIN session_events e "
        "ON e.session_id = s.session_id AND e.event_type = 'SESSION_ENDED' GROUP BY s.session_id, s.status",
    )
    assert sorted(ended) == [("COMPLETED", 1)] * RACES


# -- 5. SIGKILL one replica under write load --------------------------------------------------------------------
WRITERS = 12
LOAD_MAX_S = 15.0


async def test_sigkill_of_one_replica_under_load_loses_no_acknowledged_write(replicas: Replicas) -> None:
    ledger = Ledger()
    stop = asyncio.Event()
    victim = replicas.procs[0]

    async def body(w: int, i: int) -> None:
        await write_unit(replicas, ledger, w + i, f"w{w}-{i}")

    async def kill_then_stop() -> None:
        await eventually(lambda: len(ledger.sessions) >= 60, 10, "no write load before the kill")
        await victim.kill()  # mid-load: requests in flight on it get no answer
        killed_at = len(ledger.sessions)
        await eventually(lambda: len(ledger.sessions) >= killed_at + 60, 10, "the live replicas stopped writing")
        stop.set()

    await asyncio.gather(load_until(stop, WRITERS, body, LOAD_MAX_S), kill_then_stop())
    assert victim.proc is not None and victim.proc.returncode == -signal.SIGKILL
    assert not ledger.bad, ledger.bad[:5]
    for k in (1, 2):  # the live replicas: every answer a 2xx, every connection answered
        assert set(ledger.statuses[k]) <= {201}, (k, ledger.statuses)
        assert not ledger.transport_errors[k], (k, ledger.transport_errors)
    assert ledger.statuses[0][201] > 0 and ledger.transport_errors[0], (ledger.statuses, ledger.transport_errors)
    await assert_acknowledged_are_stored(replicas.dsn, ledger)
    # and through a live replica: every acknowledged session is there (admin sees all)
    sample = sorted(ledger.sessions)[:: max(1, len(ledger.sessions) // 40)]
    got = await bounded([partial(replicas.client(1).get, f"/sessions/{sid}", headers=auth("admin")) for sid in sample])
    assert [r.status_code for r in got] == [200] * len(sample)
    print(f"acked {len(ledger.sessions)} sessions, {len(ledger.events)} events; statuses {ledger.statuses}")


# -- 6. restart PostgreSQL under load ---------------------------------------------------------------------------
DOWN_S = 2.0


def bounce(server: PostgresServer, down: threading.Event, hold_s: float) -> None:
    """Stop PostgreSQL (fast: connections terminated), keep it down ``hold_s``, start it on the same port."""
    server.stop()
    down.set()
    try:
        time.sleep(hold_s)
    finally:
        down.clear()
        server.start()


async def test_a_postgresql_restart_under_load_answers_503_then_recovers_by_itself(
    replicas: Replicas, postgres_server: PostgresServer
) -> None:
    ledger = Ledger()
    stop = asyncio.Event()
    down = threading.Event()
    probes: list[tuple[int, int, dict[str, Any], bool]] = []  # replica, status, body, Retry-After or not

    async def body(w: int, i: int) -> None:
        await write_unit(replicas, ledger, w + i, f"w{w}-{i}")

    async def probe() -> None:
        while not stop.is_set():
            if down.is_set():
                for k, c in enumerate(replicas.clients):
                    r = await c.get("/health/ready")
                    if down.is_set():  # answered while the server was surely down
                        probes.append((k, r.status_code, r.json(), "retry-after" in r.headers))
            await asyncio.sleep(0.1)

    async def restart_then_recover() -> None:
        try:
            await eventually(lambda: len(ledger.sessions) >= 30, 10, "no write load before the restart")
            before = len(ledger.sessions)
            await asyncio.to_thread(bounce, postgres_server, down, DOWN_S)

            async def all_ready() -> bool:
                return await replicas.ready_codes() == [200] * len(replicas)

            await eventually(all_ready, RECOVER_WITHIN_S, "the replicas did not become ready again")
            await eventually(
                lambda: len(ledger.sessions) >= before + 60, RECOVER_WITHIN_S, "writes did not resume after restart"
            )
        finally:
            stop.set()

    await asyncio.gather(load_until(stop, WRITERS, body, 3 * RECOVER_WITHIN_S), probe(), restart_then_recover())

    # every 5xx was a 503 with Retry-After: no 500, no hang (a timeout raises)
    if ledger.bad:
        print(replicas.logs())  # the replicas' stderr, shown with the failure
    assert not ledger.bad, ledger.bad[:5]
    assert not any(ledger.transport_errors), ledger.transport_errors
    for k in range(len(replicas)):
        assert set(ledger.statuses[k]) <= {201, 503}, (k, ledger.statuses)
    assert sum(c[503] for c in ledger.statuses) > 0, ledger.statuses  # the load did meet the outage
    assert {k for k, *_ in probes} == {0, 1, 2}, probes
    for k, status, ready, _ in probes:
        assert status == 503 and ready["status"] == "not_ready" and ready["database"] == "unavailable", (k, ready)
    # recovered, without restarting the replicas: a write through each succeeds
    for k in range(len(replicas)):
        assert replicas.procs[k].running
        r = await replicas.client(k).post("/sessions", json={"name": "after"}, headers=auth("teacher"))
        assert r.status_code == 201, r.text
    await assert_acknowledged_are_stored(replicas.dsn, ledger)
    print(f"acked {len(ledger.sessions)} sessions, {len(ledger.events)} events; statuses {ledger.statuses}")


# -- 7. migrations: a one-off job; replicas never migrate -------------------------------------------------------
def job_env(tmp_path: Path, devstack: ServerThread, dsn: str) -> dict[str, str]:
    """The environment a replica gets (no stray gateway settings from the developer's shell)."""
    return GatewayProcess(tmp_path, devstack.url, name="job", **replica_env(dsn)).env


async def versions(dsn: str) -> list[int]:
    if await pg_fetch(dsn, "SELECT to_regclass('schema_version')") == [(None,)]:
        return []
    return [r[0] for r in await pg_fetch(dsn, "SELECT version FROM schema_version ORDER BY version")]


async def migrate_part_way(dsn: str, steps: int) -> None:
    """The database as an older build left it: the first ``steps`` migrations, as ``migrate`` applies them."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(ddl.SCHEMA_VERSION_DDL)
            for number, (_, statements) in enumerate(MIGRATIONS[:steps], start=1):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
    finally:
        await conn.close()


async def test_migrate_is_a_one_off_job_that_reports_a_current_schema(
    tmp_path: Path, devstack: ServerThread, pg_empty_dsn: str
) -> None:
    env = job_env(tmp_path, devstack, pg_empty_dsn)
    first = await run_cli(env, "migrate")
    assert first.returncode == 0, first.stderr
    assert len(json.loads(first.stdout)["applied"]) == SCHEMA_VERSION
    second = await run_cli(env, "migrate")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"applied": ["schema already current"]}
    assert await versions(pg_empty_dsn) == list(range(1, SCHEMA_VERSION + 1))
    assert pg_empty_dsn not in first.stderr + second.stderr  # the URL holds the password


@pytest.mark.parametrize("steps", [0, SCHEMA_VERSION - 1], ids=["empty", "one-step-behind"])
async def test_replicas_on_an_older_schema_report_not_ready_until_the_job_ran(
    tmp_path: Path, devstack: ServerThread, pg_empty_dsn: str, steps: int
) -> None:
    await migrate_part_way(pg_empty_dsn, steps)
    async with replicas_on(tmp_path, devstack.url, pg_empty_dsn, path="/health") as replicas:
        for c in replicas.clients:
            r = await c.get("/health/ready")
            assert r.status_code == 503, r.text
            assert r.json() == {"status": "not_ready", "database": "ok", "schema_version": steps}
        assert await versions(pg_empty_dsn) == list(range(1, steps + 1))  # none of them migrated it

        job = await run_cli(job_env(tmp_path, devstack, pg_empty_dsn), "migrate")
        assert job.returncode == 0, job.stderr
        assert len(json.loads(job.stdout)["applied"]) == SCHEMA_VERSION - steps

        async def all_ready() -> bool:
            return await replicas.ready_codes() == [200] * len(replicas)

        await eventually(all_ready, RECOVER_WITHIN_S, "the replicas did not become ready after the migration job")
        for k in range(len(replicas)):
            r = await replicas.client(k).post("/sessions", json={"name": "migrated"}, headers=auth("teacher"))
            assert r.status_code == 201, r.text


async def test_a_schema_newer_than_the_build_stops_serve_with_exit_3_and_one_line(
    tmp_path: Path, devstack: ServerThread, pg_dsn: str
) -> None:
    await pg_fetch(pg_dsn, "INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    proc = GatewayProcess(tmp_path, devstack.url, **replica_env(pg_dsn))
    try:
        proc.spawn("serve")
        code = await proc.wait_exit(30)
        log = proc.log_text()
    finally:
        proc.close()
    assert code == 3, log
    lines = [line for line in log.splitlines() if line.strip()]
    causes = [line for line in lines if "start-up failed:" in line]
    assert len(causes) == 1 and lines[-1] == causes[0], log
    assert f"v{SCHEMA_VERSION + 1} is newer than this build" in causes[0], causes[0]
    assert "Traceback" not in log and pg_dsn not in log
    assert await versions(pg_dsn) == [*range(1, SCHEMA_VERSION + 1), SCHEMA_VERSION + 1]  # left as it was
