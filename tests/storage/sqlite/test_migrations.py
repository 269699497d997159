"""Migrations on real files: several processes racing to migrate one fresh database, and the module layout."""

from __future__ import annotations

import ast
import multiprocessing
import re
import sqlite3
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from service.storage.sqlite import ddl, legacy, migrations

PROCESSES = 4
ROUNDS = 8
Outcome = tuple[str, str, list[str] | str]  # (path, "ok" | "error", what migrate() reported | the error)


def _race_worker(paths: list[str], barrier: Barrier, out: Connection) -> None:
    """Migrate each path in turn, all processes released together by ``barrier`` (runs in a spawned process)."""
    for path in paths:
        # connected and configured like the service's writer before the barrier: the race is migrate() itself
        conn = sqlite3.connect(path, isolation_level=None, timeout=20)  # busy timeout: losers wait for the lock
        barrier.wait(timeout=60)
        try:
            out.send((path, "ok", migrations.migrate(conn)))
        except Exception as exc:  # reported to the parent, which fails the test with it
            out.send((path, "error", f"{type(exc).__name__}: {exc}"))
        finally:
            conn.close()
    out.close()


def test_processes_racing_to_migrate_a_fresh_file_all_succeed_and_one_applies(tmp_path: Path) -> None:
    """Each round: a file, ``PROCESSES`` processes calling migrate() at once; ``ROUNDS`` fresh files, 2 legacy."""
    ctx = multiprocessing.get_context("spawn")
    paths = [str(tmp_path / f"race-{n}.db") for n in range(ROUNDS)]
    legacy_paths = [str(tmp_path / f"legacy-race-{n}.db") for n in range(2)]
    for path in paths + legacy_paths:  # WAL up front, as the service's first open does (a mode switch locks)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        if path in legacy_paths:
            conn.execute(ddl.LEGACY_SESSIONS_DDL)
            conn.execute(
                "INSERT INTO sessions (session_id, start_time, start_state, status)"
                " VALUES ('s', '2024-01-01T00:00', 0, 'ACTIVE')"
            )
        conn.close()
    paths += legacy_paths
    barrier = ctx.Barrier(PROCESSES)
    pipes = [ctx.Pipe(duplex=False) for _ in range(PROCESSES)]
    workers = [ctx.Process(target=_race_worker, args=(paths, barrier, send)) for _, send in pipes]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    outcomes: list[Outcome] = []
    try:
        for receive, send in pipes:
            send.close()
            for _ in paths:
                assert receive.poll(60), "a migrating process did not answer"
                outcomes.append(receive.recv())
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
    elapsed = time.monotonic() - started

    errors = [o for o in outcomes if o[1] != "ok"]
    assert not errors, f"{len(errors)} of {len(outcomes)} migrations failed, e.g. {errors[0]}"
    for path in paths:
        reports = [done for p, _, done in outcomes if p == path and isinstance(done, list)]
        assert len(reports) == PROCESSES
        assert sorted(reports, key=len)[:-1] == [[]] * (PROCESSES - 1), reports  # the losers: already current
        applied = max(reports, key=len)
        steps = [f"applied schema migration v{n}" for n in range(1, migrations.SCHEMA_VERSION + 1)]
        if path in legacy_paths:  # converted straight to legacy.CREATES_VERSION, then the later steps
            assert applied[0].startswith("migrated legacy database: 1 legacy rows -> 1 sessions"), applied
            assert applied[1:] == steps[legacy.CREATES_VERSION :]
        else:
            assert applied == steps
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
            assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sessions'").fetchone()[0] == 1
        finally:
            conn.close()
    assert elapsed < 60, f"the race took {elapsed:.1f}s"


# -- layout: the DDL imports nothing, the pure legacy half no SQL, no module imports one that imports it back ----------
ROOT = Path(__file__).resolve().parents[3]
LAYOUT = (
    "service.storage.sqlite.ddl",
    "service.storage.sqlite.migrations",
    "service.storage.sqlite.legacy",
    "service.storage.sqlite.legacy_rows",
    "service.storage.sqlite.database",
    "service.sessions.domain",
)


def imports_of(module: str) -> set[str]:
    """The modules ``module`` imports (``from a import b`` counts as both ``a`` and ``a.b``)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():  # a package
        path = ROOT / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_ddl_and_domain_import_nothing_and_legacy_rows_no_sql() -> None:
    assert imports_of("service.storage.sqlite.ddl") == set()
    assert imports_of("service.sessions.domain") <= {"typing", "typing.Final", "typing.Literal", "typing.get_args"}
    rows = imports_of("service.storage.sqlite.legacy_rows")
    assert "sqlite3" not in rows and not any(name.startswith("service.storage.sqlite") for name in rows), rows


def test_no_import_cycle_among_the_db_modules() -> None:
    graph = {module: {m for m in imports_of(module) if m in LAYOUT} for module in LAYOUT}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(m == target or (m not in seen and reaches(m, target, seen | {m})) for m in graph[start])

    assert [m for m in LAYOUT if reaches(m, m, set())] == [], graph


# -- layering: SQL and drivers only inside an engine's package (service/storage/<engine>/) ------------------------
DRIVERS = ("sqlite3", "aiosqlite", "asyncpg", "psycopg", "psycopg2")
SQL = re.compile(r"\bSELECT\s|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bPRAGMA\s")


def outside_the_engines() -> list[Path]:
    """Every module of the service except those of an engine package (a directory under service/storage/)."""
    storage = ROOT / "service" / "storage"
    files = sorted((ROOT / "service").rglob("*.py"))
    return [f for f in files if not (f.is_relative_to(storage) and f.parent != storage)]


def test_the_layering_scan_sees_the_domain_the_api_and_the_interface() -> None:
    seen = {f.relative_to(ROOT).as_posix() for f in outside_the_engines()}
    assert {"service/storage/base.py", "service/api/sessions.py", "service/rag/operations.py"} <= seen
    assert not any(name.startswith("service/storage/sqlite/") for name in seen)
    assert SQL.search("SELECT 1 FROM t") and SQL.search("UPDATE ingestion_jobs SET x = 1") and not SQL.search("select")


def test_no_driver_imported_outside_the_engines() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in outside_the_engines()
        for name in imports_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if name.split(".")[0] in DRIVERS
    }
    assert found == set()


def test_no_sql_in_the_string_literals_outside_the_engines() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:80]!r}"
        for path in outside_the_engines()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value)
    ]
    assert found == []


@pytest.mark.parametrize("module", LAYOUT)
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_v1_file_with_data_takes_the_library_step_with_its_data_intact(tmp_path: Path) -> None:
    """A database written by the v1 build (schema v1 only, rows in it) migrates to the current version."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrations.MIGRATIONS[0](conn)  # the v1 build's schema, exactly
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO sessions (session_id, user_id, start_time, start_state, current_state, status, metadata,"
            " created_at, updated_at) VALUES ('s1', 'u1', 10, 0, 2, 'ACTIVE', '{\"name\": \"kept\"}', 10, 11)"
        )
        conn.execute(
            "INSERT INTO session_events (session_id, event_type, timestamp) VALUES ('s1', 'SESSION_STARTED', 10)"
        )
        before = (
            conn.execute("SELECT * FROM sessions").fetchall(),
            conn.execute("SELECT * FROM session_events").fetchall(),
        )
        done = migrations.migrate(conn)
        assert done == [f"applied schema migration v{n}" for n in range(2, migrations.SCHEMA_VERSION + 1)]
        assert migrations.current_version(conn) == migrations.SCHEMA_VERSION
        after = (
            conn.execute("SELECT * FROM sessions").fetchall(),
            conn.execute("SELECT * FROM session_events").fetchall(),
        )
        assert after == before
        conn.execute(
            "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) "
            "VALUES ('u1', 'a.md', 'é', 2, 1)"
        )
        with pytest.raises(sqlite3.IntegrityError):  # UNIQUE per owner
            conn.execute(
                "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) "
                "VALUES ('u1', 'a.md', 'x', 1, 1)"
            )
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # the size must be the content's bytes
            conn.execute(
                "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) "
                "VALUES ('u1', 'b.md', 'é', 1, 1)"
            )
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # only .md names
            conn.execute(
                "INSERT INTO library_files (owner_id, filename, content, size_bytes, created_at) "
                "VALUES ('u1', 'b.txt', 'x', 1, 1)"
            )
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def _v1_file(path: Path) -> None:
    """A schema-v1 database with data: open and ended sessions, events (one deleted, so the id high-water mark
    is above the largest id)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in ddl.V1:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.executemany(
        "INSERT INTO sessions VALUES (?, 'u-1', 1000, ?, 0, ?, ?, ?, ?, 1000, 2000)",
        [
            ("open", None, None, 2, "ACTIVE", '{"name": "open", "tags": ["a"]}'),
            ("done", 5000, 3, 3, "COMPLETED", '{"name": "done"}'),
            ("gone", 4000, 0, 0, "FAULTED", "{}"),
        ],
    )
    for n in range(7):
        conn.execute(
            "INSERT INTO session_events (session_id, event_type, timestamp, event_data) VALUES (?, 'E', ?, ?)",
            (("open", "done", "gone")[n % 3], n, f'{{"n": {n}}}'),
        )
    conn.execute("DELETE FROM session_events WHERE id = 7")
    conn.execute("COMMIT")
    conn.close()


def _contents(conn: sqlite3.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    return (
        conn.execute("SELECT * FROM sessions ORDER BY session_id").fetchall(),
        conn.execute("SELECT * FROM session_events ORDER BY id").fetchall(),
    )


def test_v2_rebuilds_a_v1_file_keeping_every_row_and_enforcing_the_new_checks(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_file(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")  # as the service's connections: the rebuild must not cascade
    try:
        before = _contents(conn)
        indexes_before = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('sessions', 'session_events') "
            "ORDER BY name"
        )
        indexes = indexes_before.fetchall()
        assert migrations.migrate(conn) == [
            f"applied schema migration v{n}" for n in range(2, migrations.SCHEMA_VERSION + 1)
        ]
        assert migrations.current_version(conn) == migrations.SCHEMA_VERSION
        assert _contents(conn) == before and (len(before[0]), len(before[1])) == (3, 6)
        assert conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('sessions', 'session_events') "
            "ORDER BY name"
        ).fetchall() == (indexes)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%v2'").fetchall() == []
        # event ids are never reused: the AUTOINCREMENT mark (7, above the largest id 6) survived
        conn.execute("INSERT INTO session_events (session_id, event_type, timestamp) VALUES ('open', 'E', 9)")
        assert conn.execute("SELECT max(id) FROM session_events").fetchone()[0] == 8

        # the new CHECKs: INACTIVE is open (no end time), anything else still refused
        conn.execute("UPDATE sessions SET status = 'INACTIVE' WHERE session_id = 'open'")
        for bad in (
            "UPDATE sessions SET status = 'INACTIVE' WHERE session_id = 'done'",
            "UPDATE sessions SET end_time = 6000, end_state = 1 WHERE session_id = 'open'",
            "UPDATE sessions SET status = 'inactive' WHERE session_id = 'open'",
            "UPDATE sessions SET status = 'PAUSED' WHERE session_id = 'open'",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
                conn.execute(bad)
        # the foreign key and its cascade point at the new sessions table
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            conn.execute("INSERT INTO session_events (session_id, event_type, timestamp) VALUES ('nope', 'E', 1)")
        conn.execute("DELETE FROM sessions WHERE session_id = 'gone'")
        assert conn.execute("SELECT count(*) FROM session_events WHERE session_id = 'gone'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM session_events").fetchone()[0] == 5
    finally:
        conn.close()


def test_failed_v2_leaves_the_v1_file_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.db"
    _v1_file(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        before = _contents(conn), conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
        monkeypatch.setattr(ddl, "V2_INDEXES", (*ddl.V2_INDEXES, "CREATE INDEX broken ON no_such_table (x)"))
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            migrations.migrate(conn)
        assert (_contents(conn), conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()) == before
        assert migrations.current_version(conn) == 1
    finally:
        conn.close()
