"""Crash safety: SIGKILL the real server mid-load, restart it on the same file, and audit every write.

Writers run sessions through create -> events (with and without ``state``) -> RAG queries -> end, and keep a
ledger of what each acknowledged (2xx) write must have left in the database. The kill lands at a random moment
(seeded: ``RELIABILITY_SEED`` replays the random choices; the seed is in every failure message). After the restart:

* every acknowledged write is there: sessions exist, acknowledged events exist by id, acknowledged ends show
  their status, and the whole session equals the ledger's view of it;
* a write in flight at the kill (no answer) is all there or not at all: the session equals either the view
  before it or the view after it, never something in between;
* every session in the file (tracked or not) is internally consistent: one SESSION_STARTED first, the
  STATE_CHANGED chain goes from ``start_state`` to ``current_state``, SESSION_ENDED last and only when ended,
  ``counters.query_count`` equals the RAG_QUERY events; ``PRAGMA integrity_check`` is ok, no orphan events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import signal
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from reliability_kit import TRANSPORT_ERRORS, GatewayProcess, eventually, integrity, on_db, pick_seed

from support.servers import ServerThread

ADMIN = {"Authorization": "Bearer dev-admin-token"}
WRITERS = 16
END_STATUSES = ("COMPLETED", "CANCELLED", "FAULTED")


@dataclass(frozen=True, slots=True)
class View:
    """What a session must look like in the database after a given sequence of writes."""

    status: str
    current_state: int
    end_state: int | None
    events: tuple[tuple[str, int], ...]  # event type -> count, sorted
    query_count: int

    def adding(self, *types: str, **changes: Any) -> View:
        counts = Counter(dict(self.events))
        counts.update(types)
        return dataclasses.replace(self, events=tuple(sorted(counts.items())), **changes)


@dataclass(slots=True)
class Tracked:
    sid: str
    view: View
    acked_events: dict[int, str] = field(default_factory=dict)  # event id -> type
    # Set when a write got no answer (the kill): the session must match one of these exactly.
    candidates: tuple[View, ...] | None = None


@dataclass(slots=True)
class Ledger:
    sessions: dict[str, Tracked] = field(default_factory=dict)
    acked: Counter[str] = field(default_factory=Counter)
    unanswered: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total_acked(self) -> int:
        return sum(self.acked.values())


async def write_session(client: httpx.AsyncClient, ledger: Ledger, rng: random.Random, token: str) -> bool:
    """One session's life; False once the server stops answering (or answers wrongly)."""
    headers = {"Authorization": f"Bearer {token}"}
    start_state = rng.randrange(9)
    try:
        r = await client.post("/sessions", json={"name": "crash", "start_state": start_state}, headers=headers)
    except TRANSPORT_ERRORS:
        ledger.unanswered["create"] += 1  # may or may not exist: covered by the whole-file invariants
        return False
    if r.status_code != 201:
        ledger.failures.append(f"create -> {r.status_code} {r.text[:200]}")
        return False
    body = r.json()
    view = View("ACTIVE", start_state, None, (("SESSION_STARTED", 1),), 0)
    tracked = Tracked(body["session_id"], view, {body["events"][0]["id"]: "SESSION_STARTED"})
    ledger.sessions[tracked.sid] = tracked
    ledger.acked["create"] += 1

    for _ in range(rng.randrange(1, 7)):
        kind = rng.choice(("state", "state", "state_typed", "note", "rag"))
        v = tracked.view
        if kind == "rag":
            path, body = "/rag/query", {"session_id": tracked.sid, "query": "what is durability"}
            after = v.adding("RAG_QUERY", query_count=v.query_count + 1)
        elif kind == "note":
            path, body = f"/sessions/{tracked.sid}/events", {"event_type": "CLIENT_NOTE", "event_data": {"n": 1}}
            after = v.adding("CLIENT_NOTE")
        else:
            state = rng.randrange(9)
            payload: dict[str, Any] = {"state": state}
            types = ["STATE_CHANGED"]
            if kind == "state_typed":
                payload.update(event_type="CLIENT_STEP", event_data={"step": state})
                types.append("CLIENT_STEP")
            path, body = f"/sessions/{tracked.sid}/events", payload
            after = v.adding(*types, current_state=state)
        if not await _write(client, ledger, tracked, kind, path, body, headers, after):
            return False

    if rng.random() < 0.75:
        end_state, status = rng.randrange(9), rng.choice(END_STATUSES)
        v = tracked.view
        types = ["SESSION_ENDED"] + (["STATE_CHANGED"] if end_state != v.current_state else [])
        after = v.adding(*types, status=status, current_state=end_state, end_state=end_state)
        body = {"status": status, "end_state": end_state}
        if not await _write(client, ledger, tracked, "end", f"/sessions/{tracked.sid}/end", body, headers, after):
            return False
    return True


async def _write(
    client: httpx.AsyncClient,
    ledger: Ledger,
    tracked: Tracked,
    kind: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    after: View,
) -> bool:
    try:
        r = await client.post(path, json=body, headers=headers)
    except TRANSPORT_ERRORS:
        tracked.candidates = (tracked.view, after)
        ledger.unanswered[kind] += 1
        return False
    if not r.is_success:
        ledger.failures.append(f"{kind} {path} -> {r.status_code} {r.text[:200]}")
        return False
    if kind in ("state", "state_typed", "note"):
        for event in r.json()["events"]:
            tracked.acked_events[event["id"]] = event["event_type"]
    tracked.view = after
    ledger.acked[kind] += 1
    return True


# -- the audit ------------------------------------------------------------------------------------------------
def read_file(conn: sqlite3.Connection) -> dict[str, Any]:
    sessions = {
        row[0]: {
            "start_state": row[1],
            "current_state": row[2],
            "status": row[3],
            "end_state": row[4],
            "end_time": row[5],
            "metadata": json.loads(row[6]),
        }
        for row in conn.execute(
            "SELECT session_id, start_state, current_state, status, end_state, end_time, metadata FROM sessions"
        )
    }
    events: dict[str, list[tuple[int, str, Any]]] = {sid: [] for sid in sessions}
    by_id: dict[int, tuple[str, str]] = {}
    for eid, sid, etype, data in conn.execute(
        "SELECT id, session_id, event_type, event_data FROM session_events ORDER BY id"
    ):
        events.setdefault(sid, []).append((eid, etype, None if data is None else json.loads(data)))
        by_id[eid] = (sid, etype)
    checks, orphans = integrity(conn)
    return {"sessions": sessions, "events": events, "by_id": by_id, "integrity": checks, "orphans": orphans}


def file_view(session: dict[str, Any], events: list[tuple[int, str, Any]]) -> View:
    counters = session["metadata"].get("counters") or {}
    return View(
        session["status"],
        session["current_state"],
        session["end_state"],
        tuple(sorted(Counter(e[1] for e in events).items())),
        int(counters.get("query_count") or 0),
    )


def consistency_problems(sid: str, session: dict[str, Any], events: list[tuple[int, str, Any]]) -> list[str]:
    """Invariants every session must satisfy, whatever was acknowledged: nothing half-written."""
    out: list[str] = []
    if not events or events[0][1] != "SESSION_STARTED":
        out.append("first event is not SESSION_STARTED")
    if sum(1 for e in events if e[1] == "SESSION_STARTED") != 1:
        out.append("not exactly one SESSION_STARTED")
    state = session["start_state"]
    for i, (eid, etype, data) in enumerate(events):
        if etype == "STATE_CHANGED":
            if data["from"] != state:
                out.append(f"STATE_CHANGED {eid} from {data['from']} but state was {state}")
            state = data["to"]
        elif etype == "SESSION_ENDED":
            if i != len(events) - 1:
                out.append("SESSION_ENDED is not the last event")
            if data["status"] != session["status"] or data["end_state"] != session["end_state"]:
                out.append(f"SESSION_ENDED {data} disagrees with the row")
    if state != session["current_state"]:
        out.append(f"current_state {session['current_state']} != last STATE_CHANGED to {state}")
    ended = sum(1 for e in events if e[1] == "SESSION_ENDED")
    if (session["status"] != "ACTIVE") != (ended == 1) or ended > 1:
        out.append(f"status {session['status']} with {ended} SESSION_ENDED events")
    if session["status"] != "ACTIVE" and (session["end_time"] is None or session["end_state"] != state):
        out.append("ended session without end_time or with end_state != current_state")
    counters = session["metadata"].get("counters") or {}
    rag_events = sum(1 for e in events if e[1] == "RAG_QUERY")
    if int(counters.get("query_count") or 0) != rag_events:
        out.append(f"counters.query_count {counters.get('query_count')} != {rag_events} RAG_QUERY events")
    for name in ("document_count", "total_chunks", "questions_generated"):
        if int(counters.get(name) or 0) != 0:
            out.append(f"counters.{name} is {counters.get(name)} with no such operation")
    return [f"{sid}: {p}" for p in out]


async def audit(gw: GatewayProcess, ledger: Ledger, seed: int, label: str) -> dict[str, int]:
    snap = await on_db(gw.db_path, read_file)
    where = f"[seed {seed}, {label}]"
    assert snap["integrity"] == ["ok"], f"{where} integrity_check: {snap['integrity']}"
    assert snap["orphans"] == [], f"{where} orphan events: {snap['orphans'][:5]}"
    problems: list[str] = []
    for sid, session in snap["sessions"].items():
        problems += consistency_problems(sid, session, snap["events"].get(sid, []))
    missing_events = 0
    for sid, t in ledger.sessions.items():
        if sid not in snap["sessions"]:
            problems.append(f"{sid}: acknowledged session missing")
            continue
        for eid, etype in t.acked_events.items():
            if snap["by_id"].get(eid) != (sid, etype):
                missing_events += 1
                problems.append(f"{sid}: acknowledged event {eid} {etype} is {snap['by_id'].get(eid)}")
        found = file_view(snap["sessions"][sid], snap["events"][sid])
        allowed = t.candidates or (t.view,)
        if found not in allowed:
            problems.append(f"{sid}: file has {found}, expected one of {allowed}")
    assert not problems, f"{where} {len(problems)} problems:\n" + "\n".join(problems[:40])

    # The restarted server serves what the file holds.
    sids = list(ledger.sessions)
    async with httpx.AsyncClient(base_url=gw.url, timeout=15) as client:
        slots = asyncio.Semaphore(16)

        async def check(sid: str) -> str | None:
            async with slots:
                r = await client.get(f"/sessions/{sid}", headers=ADMIN)
            if r.status_code != 200:
                return f"{sid}: GET -> {r.status_code}"
            row = snap["sessions"][sid]
            got = r.json()
            if (got["status"], got["current_state"]) != (row["status"].lower(), row["current_state"]):
                return f"{sid}: served {got['status']}/{got['current_state']}, file {row['status']}"
            return None

        served = [p for p in await asyncio.gather(*(check(s) for s in sids)) if p]
    assert not served, f"{where} restarted server disagrees:\n" + "\n".join(served[:20])
    return {
        "sessions_in_file": len(snap["sessions"]),
        "events_in_file": len(snap["by_id"]),
        "acked_events_checked": sum(len(t.acked_events) for t in ledger.sessions.values()),
        "missing": missing_events,
    }


async def load_until_killed(gw: GatewayProcess, ledger: Ledger, rng: random.Random, round_no: int, seed: int) -> None:
    limits = httpx.Limits(max_connections=WRITERS * 2, max_keepalive_connections=WRITERS * 2)
    async with httpx.AsyncClient(base_url=gw.url, timeout=20, limits=limits) as client:

        async def writer(n: int) -> None:
            wrng = random.Random(rng.random())
            token = f"dev:teacher:crash-r{round_no}-w{n}"
            while await write_session(client, ledger, wrng, token):
                pass

        tasks = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
        try:
            # Let the load build up (40 more acknowledged writes, ends and RAG queries among them), then kill.
            floor = (ledger.total_acked + 40, ledger.acked["end"] + 2, ledger.acked["rag"] + 2)

            def built_up() -> bool:
                progress = (ledger.total_acked, ledger.acked["end"], ledger.acked["rag"])
                return all(a >= b for a, b in zip(progress, floor, strict=True)) or bool(ledger.failures)

            await eventually(built_up, 30, f"[seed {seed}] no write progress")
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            await gw.kill()
            # Writers end on their own: every request to the dead server fails at once.
            done, pending = await asyncio.wait(tasks, timeout=30)
            assert not pending, f"[seed {seed}] writers did not stop after the kill"
            for t in done:
                t.result()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert not ledger.failures, f"[seed {seed}] unexpected answers under load:\n" + "\n".join(ledger.failures[:20])


@pytest.mark.slow
@pytest.mark.parametrize(("synchronous", "rounds"), [("NORMAL", 4), ("FULL", 1)])
async def test_sigkill_mid_load_loses_no_acknowledged_write(
    tmp_path: Path, devstack: ServerThread, synchronous: str, rounds: int
) -> None:
    seed = pick_seed()
    rng = random.Random(seed)
    ledger = Ledger()
    gw = GatewayProcess(tmp_path, devstack.url, db_synchronous=synchronous, auth_cache_ttl_s=600)
    summary: list[dict[str, Any]] = []
    try:
        await gw.start()
        for round_no in range(rounds):
            await load_until_killed(gw, ledger, rng, round_no, seed)
            assert gw.proc is not None and gw.proc.returncode == -signal.SIGKILL
            await gw.start()  # same database file: recovery from the WAL happens here
            stats = await audit(gw, ledger, seed, f"synchronous={synchronous} round {round_no + 1}")
            summary.append({"round": round_no + 1, **stats, "acked": dict(ledger.acked)})
        assert ledger.acked["end"] > 0 and ledger.acked["rag"] > 0, "the load must have covered every write kind"
    finally:
        gw.close()
    print(
        f"\ncrash-safety synchronous={synchronous} seed={seed}: acked={dict(ledger.acked)} "
        f"unanswered-at-kill={dict(ledger.unanswered)} tracked={len(ledger.sessions)} rounds={summary}"
    )


def test_the_audit_itself_flags_half_written_sessions(tmp_path: Path) -> None:
    """Guard against a vacuous audit: hand-made half-written rows must be reported."""
    from service.storage.sqlite import migrations

    path = tmp_path / "bad.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrations.migrate(conn)
        meta = json.dumps({"name": "x", "counters": {"query_count": 1}})
        rows = [  # (session_id, current_state, status, end_state, end_time)
            ("no-start-event", 0, "ACTIVE", None, None),
            ("state-mismatch", 5, "ACTIVE", None, None),
            ("ended-without-event", 2, "COMPLETED", 2, 2),
        ]
        for sid, state, status, end_state, end_time in rows:
            conn.execute(
                "INSERT INTO sessions (session_id, user_id, start_time, end_time, start_state, end_state, "
                "current_state, status, metadata, created_at, updated_at) VALUES (?, 'u', 1, ?, 0, ?, ?, ?, ?, 1, 1)",
                (sid, end_time, end_state, state, status, meta),
            )
        for sid in ("state-mismatch", "ended-without-event"):
            conn.execute(
                "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, ?, 1, ?)",
                (sid, "SESSION_STARTED", "{}"),
            )
        conn.execute(
            "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, ?, 1, ?)",
            ("ended-without-event", "STATE_CHANGED", json.dumps({"from": 0, "to": 2})),
        )
        snap = read_file(conn)
    finally:
        conn.close()
    found = {sid: consistency_problems(sid, s, snap["events"][sid]) for sid, s in snap["sessions"].items()}
    assert any("SESSION_STARTED" in p for p in found["no-start-event"]), found
    assert any("current_state 5" in p for p in found["state-mismatch"]), found
    assert any("SESSION_ENDED" in p for p in found["ended-without-event"]), found
    assert all(any("query_count" in p for p in problems) for problems in found.values()), found
    tracked = Tracked("state-mismatch", View("ACTIVE", 0, None, (("SESSION_STARTED", 1),), 0))
    assert file_view(snap["sessions"]["state-mismatch"], snap["events"]["state-mismatch"]) != tracked.view


@pytest.mark.parametrize(("setting", "level"), [("NORMAL", 1), ("FULL", 2)])
async def test_db_synchronous_setting_reaches_every_connection(
    tmp_path: Path, setting: Literal["NORMAL", "FULL"], level: int
) -> None:
    """DB_SYNCHRONOUS is applied to the writer (the connection whose commits it governs) and to the readers."""
    from service.settings import DatabaseSettings
    from service.storage.sqlite import Database

    db = Database(str(tmp_path / "sync.db"), DatabaseSettings(db_synchronous=setting, db_read_connections=2))
    await db.open()
    try:
        writer = await db.run_on_writer(
            lambda c: (c.execute("PRAGMA synchronous").fetchone()[0], c.execute("PRAGMA journal_mode").fetchone()[0])
        )
        readers = {(await db.read("PRAGMA synchronous"))[0][0] for _ in range(4)}
    finally:
        await db.close()
    assert writer == (level, "wal")
    assert readers == {level}
