"""The PostgreSQL server of the scale-out runs: one fresh cluster per bench invocation, one fresh database per run.

Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, package ``postgresql``; ``make bench`` installs
it when missing) run as the ``postgres`` OS user when the bench runs as root (``initdb`` refuses root), on a free
loopback port, the data directory and unix socket inside the bench's work directory. Where the binaries (or
asyncpg, which the gateway needs for ``DATABASE_URL``) are missing, ``unavailable()`` says why and the runner skips
the PostgreSQL runs.

Data: the seeded SQLite file is copied into a template database once, by the service's own
``python -m service copy-to-postgres`` (so both engines hold identical rows), then ``VACUUM (ANALYZE)``. Each run
gets ``CREATE DATABASE ... TEMPLATE`` of it, and the server is restarted for each run pinned to that run's server
CPUs (``taskset`` on ``pg_ctl``: the postmaster and every backend inherit it), so the engine shares the gateway's
CPUs exactly as SQLite, inside the gateway's process, does.

Settings (``SETTINGS``), for a benchmark of the gateway rather than of the disk: ``fsync`` stays on (checkpoints
and WAL are really flushed); ``synchronous_commit=off`` by default, the nearest to the gateway's SQLite default
(``DB_SYNCHRONOUS=NORMAL`` in WAL mode: a commit is not flushed to disk before it is acknowledged; a power cut may
lose the last moments of commits, never corrupt); ``--pg-synchronous-commit on`` measures flushed commits.
``shared_buffers`` holds the whole seeded database, and checkpoints are spaced so none falls inside a 15 s run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import servers

BIN_ROOT = Path("/usr/lib/postgresql")
PACKAGE = "postgresql"
TEMPLATE = "bench_template"
PASSWORD = "bench"  # ignored (trust authentication); given so libpq-style clients read no ~/.pgpass
SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "off",
    "full_page_writes": "on",
    "shared_buffers": "256MB",
    "max_connections": "100",
    "checkpoint_timeout": "30min",
    "max_wal_size": "4GB",
    "jit": "off",
    "log_min_messages": "warning",
    "log_checkpoints": "off",
}


def find_bindir(root: Path | None = None) -> Path | None:
    """The newest installed server's bin directory (under ``root``, default ``BIN_ROOT``)."""
    root = BIN_ROOT if root is None else root
    if not root.is_dir():
        return None
    found = [d / "bin" for d in root.iterdir() if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def unavailable(root: Path | None = None) -> str | None:
    """Why the PostgreSQL runs cannot happen here, or None."""
    root = BIN_ROOT if root is None else root
    bindir = find_bindir(root)
    if bindir is None:
        return f"no PostgreSQL server binaries under {root} (Debian package {PACKAGE!r}; `make bench` installs it)"
    if not (bindir / "psql").is_file():
        return f"no psql beside the server binaries in {bindir}"
    if importlib.util.find_spec("asyncpg") is None:
        return "asyncpg is not installed (pip install '.[postgres]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run the server as (initdb refuses root)"
    return None


@dataclass
class BenchPostgres:
    bindir: Path
    root: Path  # owned by the server's user; data/, sock/ and server.log inside
    synchronous_commit: str = "off"
    port: int = 0
    user: str | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def version(self) -> int:
        name = self.bindir.parent.name
        return int(name) if name.isdigit() else 0

    def settings(self) -> dict[str, str]:
        return SETTINGS | {"synchronous_commit": self.synchronous_commit}

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres:{PASSWORD}@{servers.LOCALHOST}:{self.port}/{database}?sslmode=disable"

    def _run(self, *args: str, timeout: float = 120, core: servers.CoreSet = None) -> str:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if core is not None:  # taskset only: as the postgres user ``nice`` could not lower the niceness (see start)
            cmd = ["taskset", "-c", ",".join(str(c) for c in servers.core_list(core)), *cmd]
        try:
            out = subprocess.run(
                cmd,
                user=self.user,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.root,
                start_new_session=True,  # the postmaster in a session (and scheduler autogroup) of its own
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"{args[0]} failed ({exc.returncode}): {exc.stderr.strip()}\n{self.tail()}") from exc
        return out.stdout

    def tail(self, lines: int = 20) -> str:
        return servers.tail(self.log, lines)

    def init(self) -> None:
        """``initdb`` a new cluster (C locale: session ids compare bytewise, as the schema's COLLATE "C" does)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        # --no-sync: a throw-away cluster need not survive a power cut during initdb (the runs keep fsync on)
        initdb = ["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]
        self._run(*initdb, "--no-sync")
        (self.root / "sock").mkdir(exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root / "sock", entry.pw_uid, entry.pw_gid)

    def start(self, core: servers.CoreSet = None) -> int:
        """Start the server pinned to ``core`` (same port every time); returns the postmaster's pid."""
        self.port = self.port or servers.free_port()
        options = f"-p {self.port} -h {servers.LOCALHOST} -k {self.root / 'sock'} " + " ".join(
            f"-c {k}={v}" for k, v in self.settings().items()
        )
        ctl = ["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"]
        self._run(*ctl, core=core)
        pid = self.postmaster_pid()
        servers.prioritize(pid)  # --nice: the postmaster's autogroup (backends are forked inside it)
        if servers.NICE:
            for p in servers.process_tree(pid):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, p, servers.NICE)
        return pid

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement through psql (names in statements are the bench's own constants, never input)."""
        args = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", servers.LOCALHOST]
        return self._run(*args, "-p", str(self.port), "-U", "postgres", "-d", database, "-c", statement).strip()

    def seed_template(self, sqlite_db: Path, code: Path, env: dict[str, str]) -> dict[str, object]:
        """Copy the seeded SQLite file into the template database with the service's copy-to-postgres (``env``:
        the runner's clean environment)."""
        started = time.perf_counter()
        self.sql(f'CREATE DATABASE "{TEMPLATE}" TEMPLATE template0')
        env = env | {"DATABASE_PATH": str(sqlite_db), "DATABASE_URL": self.dsn(TEMPLATE)}
        out = subprocess.run(
            [sys.executable, "-m", "service", "copy-to-postgres"],
            cwd=code,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"copy-to-postgres failed ({out.returncode}): {out.stdout[-1000:]}{out.stderr[-2000:]}")
        self.sql("VACUUM (ANALYZE)", TEMPLATE)  # statistics and visibility map, copied into every run's database
        self.sql("CHECKPOINT")
        size = int(self.sql(f"SELECT pg_database_size('{TEMPLATE}')"))
        return {"seconds": round(time.perf_counter() - started, 2), "bytes": size, "copy": out.stdout.strip()[-500:]}

    def create_database(self, name: str) -> str:
        """A fresh database for one run, copied from the seeded template; its DSN."""
        strategy = " STRATEGY FILE_COPY" if self.version >= 15 else ""  # a file copy, not WAL-logged page by page
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"{strategy}')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}"' + (" WITH (FORCE)" if self.version >= 13 else ""))

    def describe(self) -> dict[str, object]:
        return {"version": self.version, "bindir": str(self.bindir), "settings": self.settings()}

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, OSError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
