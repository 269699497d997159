"""``python -m service`` fails fast: whatever stops a start-up, the process exits promptly, non-zero, with one line.

Exit codes (``python -m service --help``): 2 a bad setting, 3 the server could not start, 128 + N a signal during
start-up, 1 a maintenance command that failed. Each case below makes the failure really happen (a file where a
directory must be, a newer schema, an unreadable CA bundle, a port in use, a lock held by another process).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_kit import REPO, ChildProcess, GatewayProcess, eventually, wal_bytes

from service.app import StartupError, create_app
from service.settings import Settings
from service.storage.sqlite.migrations import SCHEMA_VERSION

DOWNSTREAM = "http://127.0.0.1:9"  # never called: every start-up here fails before a request
EXIT_WITHIN_S = 10.0  # generous for a loaded CI machine; a healthy run takes 1-2 s (mostly imports)
FORBIDDEN = ("Traceback", "ResourceWarning")


def lines_of(proc: ChildProcess) -> list[str]:
    return [line for line in proc.log_text().splitlines() if line.strip()]


async def run_to_exit(proc: ChildProcess, *args: str) -> tuple[int, float]:
    started = time.monotonic()
    proc.spawn(*args)
    code = await proc.wait_exit(EXIT_WITHIN_S)
    return code, time.monotonic() - started


def assert_one_cause_line(proc: ChildProcess, prefix: str, *needles: str) -> None:
    """Exactly one line names the cause (the last one), and no traceback anywhere."""
    log = proc.log_text()
    for forbidden in FORBIDDEN:
        assert forbidden not in log, log[-3000:]
    causes = [line for line in lines_of(proc) if prefix in line]
    assert len(causes) == 1, log[-3000:]
    assert lines_of(proc)[-1] == causes[0], log[-3000:]
    for needle in needles:
        assert needle in causes[0], causes[0]


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(tmp_path, DOWNSTREAM)
    yield proc
    proc.close()


# -- a bad setting: exit 2, the one line, nothing started --------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("PORT", "-1", "configuration error: PORT=-1 is invalid: must be an integer >= 1 and <= 65535"),
        ("LOG_JSON", "ture", "configuration error: LOG_JSON=ture is invalid: allowed values are true, false"),
        ("HTTP_TRANSPORT", "foo", "configuration error: HTTP_TRANSPORT=foo is invalid: allowed values are native"),
        ("DB_READ_CONNECTIONS", "-3", "configuration error: DB_READ_CONNECTIONS=-3 is invalid: must be an integer"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "migrate"])
async def test_a_bad_setting_exits_2_with_one_line(
    gw: GatewayProcess, command: str, name: str, value: str, line: str
) -> None:
    gw.env[name] = value
    code, took = await run_to_exit(gw, command)
    assert code == 2, gw.log_text()
    assert len(lines_of(gw)) == 1 and lines_of(gw)[0].startswith(line), gw.log_text()
    assert not gw.db_path.exists()  # nothing was opened
    print(f"{command} {name}={value}: exit {code} in {took:.2f} s")


@pytest.mark.parametrize("command", [["backup"], ["cleanup", "--keep-newest", "5"]])
async def test_the_maintenance_commands_refuse_a_bad_setting_the_same_way(
    gw: GatewayProcess, command: list[str]
) -> None:
    gw.env["DB_BUSY_TIMEOUT_MS"] = "-5"
    code, _ = await run_to_exit(gw, *command)
    assert code == 2
    assert lines_of(gw) == [
        "configuration error: DB_BUSY_TIMEOUT_MS=-5 is invalid: must be an integer >= 0 and <= 3600000"
    ]


# -- the server cannot start: exit 3 within seconds, never a hang --------------------------------------------------
async def test_a_database_path_under_a_regular_file_exits_3(gw: GatewayProcess, tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the database directory should be")
    gw.env["DATABASE_PATH"] = str(tmp_path / "not-a-dir" / "sessions.db")
    code, took = await run_to_exit(gw, "serve")
    assert code == 3, gw.log_text()
    assert_one_cause_line(gw, "start-up failed:", "cannot open the database", "not-a-dir")
    print(f"unusable DATABASE_PATH: exit {code} in {took:.2f} s")


async def test_a_database_file_that_is_not_sqlite_exits_3(gw: GatewayProcess) -> None:
    """The first PRAGMA fails on a connection already open: it must be closed, or its thread blocks the exit."""
    gw.db_path.write_text("this is not an SQLite database, it is only text " * 100)
    code, took = await run_to_exit(gw, "serve")
    assert code == 3, gw.log_text()
    assert_one_cause_line(gw, "start-up failed:", "file is not a database", str(gw.db_path))
    print(f"not a database: exit {code} in {took:.2f} s")


async def test_a_schema_newer_than_this_build_exits_3(gw: GatewayProcess) -> None:
    conn = sqlite3.connect(gw.db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    code, took = await run_to_exit(gw, "serve")
    assert code == 3, gw.log_text()
    assert_one_cause_line(gw, "start-up failed:", f"v{SCHEMA_VERSION + 1} is newer than this build")
    with sqlite3.connect(gw.db_path) as check:  # left as it was
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    print(f"newer schema: exit {code} in {took:.2f} s")


@pytest.mark.parametrize("transport", ["native", "aiohttp", "httpx"])
async def test_a_client_that_cannot_be_built_after_the_database_opened_exits_3(
    gw: GatewayProcess, tmp_path: Path, transport: str
) -> None:
    """The hang this suite was written for: the database is open when the client fails (a CA bundle that is no
    certificate). uvicorn gave up, but the open aiosqlite threads kept the process alive, SIGTERM included."""
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    gw.env.update(SSL_CERT_FILE=str(bundle), HTTP_TRANSPORT=transport)
    code, took = await run_to_exit(gw, "serve")
    assert code == 3, gw.log_text()
    assert_one_cause_line(gw, "start-up failed:", "cannot build the downstream HTTP client")
    assert gw.db_path.exists() and wal_bytes(gw.db_path) == 0  # it was opened (migrated), then closed cleanly
    print(f"client not buildable ({transport}): exit {code} in {took:.2f} s")


async def test_a_port_already_in_use_exits_3(gw: GatewayProcess) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", gw.port))
        taken.listen()
        code, took = await run_to_exit(gw, "serve")
    assert code == 3, gw.log_text()
    assert_one_cause_line(gw, "start-up failed:", f"cannot listen on 127.0.0.1:{gw.port}")
    assert any("address already in use" in line.lower() for line in lines_of(gw)), gw.log_text()
    assert wal_bytes(gw.db_path) == 0  # the lifespan had opened the database: shut down, checkpointed
    print(f"port in use: exit {code} in {took:.2f} s")


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS other_process (x)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO other_process VALUES (1)")
    return conn


async def test_sigterm_during_a_start_up_stuck_on_a_lock_stops_the_process(gw: GatewayProcess) -> None:
    """A migration waiting (DB_BUSY_TIMEOUT_MS=60000) for another process's lock: SIGTERM ends it now."""
    lock = _hold_write_lock(gw.db_path)
    try:
        gw.env.update(DB_BUSY_TIMEOUT_MS="60000", LOG_LEVEL="info")
        gw.spawn("serve")
        await eventually(lambda: "Waiting for application startup" in gw.log_text(), 15, "lifespan never started")
        await asyncio.sleep(0.5)  # inside the migration's wait for the lock
        assert gw.running, gw.log_text()
        sent = time.monotonic()
        gw.signal(signal.SIGTERM)
        code = await gw.wait_exit(EXIT_WITHIN_S)
        took = time.monotonic() - sent
    finally:
        lock.close()
    assert code == 128 + signal.SIGTERM, gw.log_text()
    assert_one_cause_line(gw, "start-up interrupted by SIGTERM")
    print(f"SIGTERM during start-up: exit {code} {took:.2f} s after the signal")


# -- in process: the lifespan releases what it opened --------------------------------------------------------------
def _threads() -> set[str]:
    """Live threads but the loop's default executor (``asyncio.to_thread``), which idles for the next call."""
    return {f"{t.name}-{t.ident}" for t in threading.enumerate() if t.is_alive() and not t.name.startswith("asyncio_")}


async def test_the_lifespan_closes_the_database_when_the_client_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_text("garbage\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    settings = Settings(database_path=str(tmp_path / "gw.db"), log_level="warning")
    app = create_app(settings)
    before = _threads()
    with pytest.raises(StartupError, match="^cannot build the downstream HTTP client: "):
        async with app.router.lifespan_context(app):
            pytest.fail("the lifespan must not start")
    await eventually(lambda: not (_threads() - before), 5, "a database thread outlived the failed start-up")
    assert (tmp_path / "gw.db").exists() and wal_bytes(tmp_path / "gw.db") == 0


async def test_the_lifespan_leaves_no_thread_when_the_database_cannot_open(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"\x00not sqlite\x00" * 512)
    app = create_app(Settings(database_path=str(path), db_read_connections=4))
    before = _threads()
    with pytest.raises(StartupError, match="file is not a database"):
        async with app.router.lifespan_context(app):
            pytest.fail("the lifespan must not start")
    await eventually(lambda: not (_threads() - before), 5, "a database thread outlived the failed start-up")


# -- the CLI uses the database settings too -----------------------------------------------------------------------
def _thread_count(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    except FileNotFoundError:
        return 0


async def _migrated(gw: GatewayProcess) -> None:
    code, _ = await run_to_exit(gw, "migrate")
    assert code == 0, gw.log_text()


async def test_the_cli_waits_for_a_lock_as_long_as_db_busy_timeout_ms_says(gw: GatewayProcess) -> None:
    """DB_BUSY_TIMEOUT_MS=60000: the cleanup outwaits a lock held 6 s, past the 5 s default it used to apply."""
    await _migrated(gw)
    lock = _hold_write_lock(gw.db_path)
    try:
        gw.env["DB_BUSY_TIMEOUT_MS"] = "60000"
        gw.spawn("cleanup", "--keep-newest", "0")
        # main thread, the writer's thread (and the one for mkdir): it is at, or about to be at, the lock
        await eventually(lambda: _thread_count(gw.pid) >= 3 or not gw.running, 15, "the CLI never opened the db")
        await asyncio.sleep(6.0)
        assert gw.running, f"the CLI gave up while the lock was held:\n{gw.log_text()}"
    finally:
        lock.close()
    code = await gw.wait_exit(EXIT_WITHIN_S)
    assert code == 0, gw.log_text()


async def test_the_cli_gives_up_on_a_lock_after_db_busy_timeout_ms_with_one_line(gw: GatewayProcess) -> None:
    await _migrated(gw)
    lock = _hold_write_lock(gw.db_path)
    try:
        gw.env["DB_BUSY_TIMEOUT_MS"] = "100"
        gw.spawn("cleanup", "--keep-newest", "0")
        await eventually(lambda: _thread_count(gw.pid) >= 3 or not gw.running, 15, "the CLI never opened the db")
        seen = time.monotonic()
        code = await gw.wait_exit(EXIT_WITHIN_S)
        took = time.monotonic() - seen
    finally:
        lock.close()
    assert code == 1, gw.log_text()
    assert lines_of(gw)[-1] == "cleanup failed: OperationalError: database is locked", gw.log_text()
    assert "Traceback" not in gw.log_text()
    assert took < 4.0, f"gave up {took:.1f} s after opening the database: the 5 s default, not 100 ms"


def test_the_exit_codes_are_documented_in_the_cli_help() -> None:
    result = subprocess.run(  # our own interpreter and module
        [sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for needle in ("2 configuration error", "3 the server could not start", "1 a maintenance command failed"):
        assert needle in text, result.stdout
