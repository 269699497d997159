"""``python -m bench.run``: the gateway, the legacy baseline and its naive async port under the same load, same
machine, same run.

Per run (one scenario, one server, one configuration): a fresh copy of the seeded database, a fresh server
process pinned to its own CPU, set-up through the API, a warm-up, then a measured ``wrk`` run of fixed
duration while /proc is sampled; the gateway's /metrics is scraped before and after for the event-loop lag.
Results go to ``<out>/bench.{json,md,png}`` (``--soak``: ``<out>/soak.{json,md,png}``).

    python -m bench.run                       # everything, ~35 min on 2 cores
    python -m bench.run --quick --scenarios ceiling,read --out /tmp/b   # smoke run, seconds per scenario
    python -m bench.run --soak                # mixed scenario for 10 minutes: RSS / fds over time
    python -m bench.run --scenarios scale     # SQLite and PostgreSQL, WORKERS=1 and 2: the Scale-out table

The ``scale`` group's PostgreSQL runs need Debian's server binaries (skipped, saying so, where they are missing).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import postgres, report, scenarios, seed, servers, sqlite_stats
from bench.postgres import BenchPostgres
from bench.scenarios import BASELINE, GATEWAY, NAIVE, POSTGRES, SQLITE, Run, Scale, Setup
from bench.wrk import run_wrk

DEFAULT_OUT = servers.REPO_ROOT / "bench" / "results"
# the peers' server modules (same flags: --host --port --db --log-level --access-log)
PEER_MODULES = {BASELINE: "bench.baseline", NAIVE: "bench.naive"}
SESSION_ID = re.compile(r"[0-9a-f]{32}")
# Settings the runner controls: inherited values would make runs irreproducible.
GATEWAY_ENV_PREFIXES = (
    "HOST",
    "PORT",
    "DATABASE_",
    "WORKERS",
    "PROMETHEUS_",
    "AUTH_",
    "RAG_",
    "QUESTION_",
    "LOG_",
    "ACCESS_LOG",
    "DB_",
    "HTTP_",
    "DOWNSTREAM_",
    "MAX_",
    "SHUTDOWN_",
    "BACKUP_",
    "CURSOR_",
    "LOOP_",
    "METRICS_",
    "FORWARD_",
    "DEVSTACK_",
    "LIBRARY_",
    "INGESTION_",
    "BODY_",
)


@dataclass
class Options:
    groups: list[str]
    duration_s: float
    warmup_s: float
    sessions: int
    scale: Scale
    out: Path
    baseline: bool
    timeout_s: float
    lag_interval_s: float
    keep_workdir: bool
    quick: bool
    soak: bool
    soak_duration_s: float
    track_status: bool
    nice: int
    quiet_busy_pct: float
    quiet_wait_s: float
    command: str
    pg_synchronous_commit: str = "off"
    scale_scenarios: tuple[str, ...] = scenarios.SCALE_SCENARIOS
    naive: bool = True  # with baseline: the naive async port too (--no-naive leaves it out)


def say(msg: str) -> None:
    print(msg, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(GATEWAY_ENV_PREFIXES)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def post_json(url: str, body: dict[str, Any]) -> Any:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


class Bench:
    """Owns the work directory, the seeded databases and the reference downstream for one invocation."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        servers.NICE = opts.nice
        self.cores = servers.plan_cores()
        self.work = Path(tempfile.mkdtemp(prefix="bench-"))
        (self.work / "logs").mkdir()
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.raw = opts.out / "raw" / stamp
        self.devstack_url = ""
        self.devstack_pid = 0
        self.devstack_proc: Any = None
        self.pristine: dict[str, Path] = {}
        self.seeds: dict[str, Any] = {}
        self.code = self.work / "code"
        self.code_info = servers.snapshot_code(self.code)
        # the scale-out runs' PostgreSQL (a cluster of its own, seeded once) and their shared cursor key:
        # required with WORKERS > 1 or DATABASE_URL, given to every scale run so only WORKERS / DATABASE_URL differ
        self.pg: BenchPostgres | None = None
        self.pg_skipped: str | None = None
        self.cursor_secret = secrets.token_hex(32)

    # -- fixtures ----------------------------------------------------------------------------------------
    def start_devstack(self) -> None:
        port = servers.free_port()
        log = self.work / "logs" / "devstack.log"
        env = clean_env(DEVSTACK_HOST=servers.LOCALHOST, DEVSTACK_PORT=str(port), DEVSTACK_SEED="1")
        proc = servers.spawn(
            [sys.executable, "-m", "devstack"], env=env, log=log, core=self.cores.downstream, cwd=self.code
        )
        self.devstack_url = f"http://{servers.LOCALHOST}:{port}"
        servers.wait_http(self.devstack_url + "/health", proc, log=log)
        self.devstack_pid = proc.pid
        self.devstack_proc = proc

    def watchdog(self, server: Any, log: Path) -> Any:
        """A ``watch`` for run_wrk: abort the measurement as soon as the server or the downstream is gone
        (crashed, or killed by something else on a shared machine) instead of measuring connection errors."""

        def check() -> None:
            for name, proc in (("server under test", server), ("reference downstream", self.devstack_proc)):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(
                        f"the {name} (pid {proc.pid}) exited with {proc.returncode} during the measurement; "
                        f"server log tail:\n{servers.tail(log, 15)}"
                    )

        return check

    def devstack_control(self, latency_ms: int, *, clear: bool = False) -> None:
        post_json(self.devstack_url + "/_control/reset", {"clear_data": clear})
        post_json(self.devstack_url + "/_control", {"latency_ms": latency_ms})

    def seed(self, targets: Sequence[str]) -> None:
        n = self.opts.sessions
        if GATEWAY in targets:
            path = self.work / "gateway-seed.db"
            say(f"  seeding the gateway database: {n:,} sessions ...")
            self.seeds[GATEWAY] = seed.seed_gateway(path, n, code=self.code)
            self.pristine[GATEWAY] = path
            say(f"    done in {self.seeds[GATEWAY]['seconds']} s ({self.seeds[GATEWAY]['bytes'] / 2**20:.0f} MB)")
        if BASELINE in targets or NAIVE in targets:
            path = self.work / "baseline-seed.db"
            say(f"  seeding the baseline (legacy) database: {n:,} sessions ...")
            self.seeds[BASELINE] = seed.seed_baseline(path, n)
            self.pristine[BASELINE] = path
            say(f"    done in {self.seeds[BASELINE]['seconds']} s ({self.seeds[BASELINE]['bytes'] / 2**20:.0f} MB)")
        if NAIVE in targets:  # the same legacy file: each naive run gets a fresh copy of it, as the baseline does
            self.pristine[NAIVE] = self.pristine[BASELINE]
            self.seeds[NAIVE] = {"same_as": BASELINE}

    def drop_postgres_runs(self, runs: list[Run]) -> list[Run]:
        """Where PostgreSQL cannot run here, say so once and leave its runs out (the report names the reason)."""
        if not any(r.engine == POSTGRES for r in runs):
            return runs
        self.pg_skipped = postgres.unavailable()
        if self.pg_skipped is None:
            return runs
        left_out = sum(r.engine == POSTGRES for r in runs)
        say(f"  PostgreSQL runs skipped ({left_out}): {self.pg_skipped}")
        return [r for r in runs if r.engine != POSTGRES]

    def seed_postgres(self) -> None:
        """A fresh cluster for this invocation; the seeded SQLite file copied into its template database."""
        bindir = postgres.find_bindir()
        assert bindir is not None  # drop_postgres_runs checked
        self.pg = BenchPostgres(
            bindir, Path(tempfile.mkdtemp(prefix="bench-pg-")), synchronous_commit=self.opts.pg_synchronous_commit
        )
        say(f"  PostgreSQL {self.pg.version}: initdb, then copy-to-postgres of the seeded database ...")
        self.pg.init()
        self.pg.start()
        try:
            env = clean_env(CURSOR_SECRET=self.cursor_secret)
            self.seeds[POSTGRES] = self.pg.seed_template(self.pristine[GATEWAY], self.code, env)
        finally:
            self.pg.stop()
        info = self.seeds[POSTGRES]
        say(f"    done in {info['seconds']} s ({int(info['bytes']) / 2**20:.0f} MB)")

    # -- servers -----------------------------------------------------------------------------------------
    def start_server(
        self, target: str, env_extra: dict[str, str], db: Path | None, log: Path, cores: servers.CoreSet
    ) -> tuple[Any, str]:
        """``db``: the run's SQLite file (None: ``env_extra`` holds the DATABASE_URL of its PostgreSQL database)."""
        port = servers.free_port()
        url = f"http://{servers.LOCALHOST}:{port}"
        if target == GATEWAY:
            if db is not None:
                env_extra = {"DATABASE_PATH": str(db), **env_extra}
            env = clean_env(
                HOST=servers.LOCALHOST,
                PORT=str(port),
                AUTH_SERVICE_URL=self.devstack_url,
                RAG_SERVICE_URL=self.devstack_url,
                QUESTION_SERVICE_URL=self.devstack_url,
                BACKUP_DIR=str(self.work / "backups"),
                LOOP_LAG_INTERVAL_S=str(self.opts.lag_interval_s),
                **env_extra,
            )
            cmd = [sys.executable, "-m", "service", "serve"]
            ready = url + "/health/ready"
        else:  # a peer (baseline or naive port): same downstream, same flags, a copy of the same legacy file
            env = clean_env(RAG_SERVICE_URL=self.devstack_url, AUTH_SERVICE_URL=self.devstack_url, **env_extra)
            cmd = [
                sys.executable,
                "-m",
                PEER_MODULES[target],
                "--host",
                servers.LOCALHOST,
                "--port",
                str(port),
                "--db",
                str(db),
                "--log-level",
                "info",
                "--access-log",
            ]
            ready = url + "/health"
        proc = servers.spawn(cmd, env=env, log=log, core=cores, cwd=self.code)
        servers.wait_http(ready, proc, timeout=60, log=log)
        return proc, url

    def fresh_db(self, target: str, name: str) -> Path:
        db = self.db_file(name)
        shutil.copyfile(self.pristine[target], db)
        return db

    def db_file(self, name: str) -> Path:
        """The SQLite file of the run called ``name`` (its WAL is this path + ``-wal``)."""
        return self.work / f"{name}.db"

    def wal_file(self, run: Run, name: str) -> Path | None:
        """The ``-wal`` file sampled during a gateway SQLite run (None for other runs)."""
        if run.target != GATEWAY or run.engine != SQLITE:
            return None
        return Path(str(self.db_file(name)) + "-wal")

    @staticmethod
    def drop_db(db: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(db) + suffix).unlink(missing_ok=True)

    # -- one measured run --------------------------------------------------------------------------------
    def execute(self, index: int, total: int, run: Run, done: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        opts = self.opts
        pace_ms, target_rps = self.pace(run, done)
        name = f"{index:02d}-{run.scenario.name}-{run.target}-{run.variant}".replace(" ", "_").replace("=", "")
        name = "".join(c for c in name if c.isalnum() or c in "-_.")
        cores = self.cores.server_cores(run.workers)
        say(f"[{index:2d}/{total}] {run.label}  ({run.scenario.connections} connections)")
        log = self.work / "logs" / f"{name}.log"
        background = servers.wait_for_quiet(opts.quiet_busy_pct, opts.quiet_wait_s, say)
        record: dict[str, Any] = {
            "scenario": run.scenario.name,
            "group": run.group,
            "title": run.scenario.title,
            "target": run.target,
            "variant": run.variant,
            "env": dict(run.env),
            "engine": run.engine,
            "workers": run.workers,
            "server_cores": list(servers.core_list(cores)),
            "server_shares_client_core": self.cores.shares_client(cores) if run.workers > 1 else False,
            "connections": run.scenario.connections,
            "downstream_latency_ms": run.scenario.downstream_latency_ms,
            "machine_busy_pct_before": background,
            "paced": run.paced,
        }
        if run.paced:
            record.update({"pace_ms": pace_ms, "target_rps": target_rps})
            say(f"      paced: each connection waits {pace_ms} ms before each request (~{target_rps:,.0f} req/s)")
        db: Path | None = None
        pg_db: str | None = None
        proc: Any = None
        env = dict(run.env)
        try:
            if run.group == "scale":
                env["CURSOR_SECRET"] = self.cursor_secret  # not in the record: only WORKERS / DATABASE_URL differ
            if run.engine == POSTGRES:
                assert self.pg is not None
                pg_pid = self.pg.start(cores)  # restarted per run, on this run's server CPUs
                pg_db = f"run_{index:02d}"
                env["DATABASE_URL"] = self.pg.create_database(pg_db)
            else:
                pg_pid = 0
                db = self.fresh_db(run.target, name)
            self.devstack_control(0, clear=True)
            proc, url = self.start_server(run.target, env, db, log, cores)
            if run.workers > 1:
                servers.wait_workers(url + "/metrics", run.workers, proc, log=log)
            self._measure(run, name, url, proc, pg_pid, log, pace_ms, record)
        finally:
            if proc is not None:
                record["server_exit_code"] = servers.stop(proc)
                record["server_log_error_lines"] = servers.count_lines(log, ("Traceback", " ERROR ", "ERROR:"))
                if record["server_log_error_lines"]:
                    (self.raw / f"{name}.log-tail.txt").write_text(servers.tail(log, 200))
            if db is not None:
                self.drop_db(db)
            if self.pg is not None and run.engine == POSTGRES:
                if pg_db is not None:
                    self.pg.drop_database(pg_db)
                self.pg.stop()
            log.unlink(missing_ok=True)  # access logs are large; tails of failing runs are kept in raw/
        lag = record.get("lag") or {}
        lag_text = ""
        if lag:
            lag_text = f"  loop lag p99<={fmt_ms(lag.get('p99_le_s'))} max {fmt_ms(lag.get('max_s'))}"
        pg_text = ""
        if record.get("postgres"):
            pg_text = f" postgres {record['postgres']['cpu_pct']:.0f}%"
        say(
            f"      => {record['rps']:,.0f} req/s  p50 {record['latency_ms']['p50']:.1f} ms  "
            f"p99 {record['latency_ms']['p99']:.1f} ms  errors {record['errors_total']}{lag_text}  "
            f"peak RSS {record['server']['peak_rss_mb']:.0f} MB  CPU server {record['server']['cpu_pct']:.0f}% "
            f"(waited {record['server']['runqueue_wait_pct']:.0f}%){pg_text} wrk {record['client']['cpu_pct']:.0f}% "
            f"(waited {record['client']['runqueue_wait_pct']:.0f}%)"
        )
        return record

    def _measure(
        self, run: Run, name: str, url: str, proc: Any, pg_pid: int, log: Path, pace_ms: int, record: dict[str, Any]
    ) -> None:
        """Set-up, warm-up, settle, then the measured wrk run; fills ``record``."""
        opts = self.opts
        plan = asyncio.run(self._setup(run, url))
        plan_path = scenarios.write_plan(plan, self.raw / f"{name}.plan.tsv")
        record["plan_requests"] = len(plan)
        self.devstack_control(run.scenario.downstream_latency_ms)
        say(f"      set-up done ({len(plan)} distinct requests); warm-up {opts.warmup_s:g} s ...")
        warm = run_wrk(
            url,
            plan_path,
            connections=run.scenario.connections,
            # paced: long enough for the connections' cycles to spread out
            duration_s=max(opts.warmup_s, 3 * (pace_ms + run.scenario.light_load_latency_ms) / 1000),
            timeout_s=opts.timeout_s,
            core=self.cores.client,
            track_status=opts.track_status,
            pace_ms=pace_ms,
        )
        record["warmup"] = {"rps": warm.rps, "errors": warm.errors_total}
        record["settle_s"] = self.settle(url, proc.pid, run.target)
        before = servers.scrape(url + "/metrics") if run.target == GATEWAY else {}
        # the server with its workers (WORKERS > 1) and PostgreSQL with its backends are sampled as trees
        pids = {"server": proc.pid, "devstack": self.devstack_pid, "runner": os.getpid()}
        if pg_pid:
            pids["postgres"] = pg_pid
        with (
            servers.Sampler(pids, interval=0.5, trees=("server", "postgres")) as sampler,
            sqlite_stats.WalWatch(self.wal_file(run, name), interval=0.25) as wal,
        ):

            def tick(elapsed: float) -> None:
                rss, fds = sampler.latest("server")
                say(f"      measuring {elapsed:4.0f}/{opts.duration_s:g} s  server RSS {rss:6.1f} MB  fds {fds}")

            say(f"      measuring {opts.duration_s:g} s ...")
            result = run_wrk(
                url,
                plan_path,
                connections=run.scenario.connections,
                duration_s=opts.duration_s,
                timeout_s=opts.timeout_s,
                core=self.cores.client,
                track_status=opts.track_status,
                on_tick=tick,
                pace_ms=pace_ms,
                watch=self.watchdog(proc, log),
            )
        after = servers.scrape(url + "/metrics") if run.target == GATEWAY else {}
        series = sampler.series["server"]
        server_cpu = sampler.cpu_pct("server")
        pg_cpu = sampler.cpu_pct("postgres") if pg_pid else 0.0
        known = server_cpu + pg_cpu + sampler.cpu_pct("devstack") + sampler.cpu_pct("runner") + result.client_cpu_pct
        record.update(
            {
                "rps": result.rps,
                "requests": result.requests,
                "duration_s": result.duration_s,
                "latency_ms": result.latency_ms,
                "errors": result.errors,
                "errors_total": result.errors_total,
                "statuses": result.statuses,
                "lag": servers.lag_window(before, after) if run.target == GATEWAY else None,
                "server": {
                    "processes": series.processes,
                    "peak_rss_mb": round(series.hwm_mb, 1),
                    "rss_end_mb": series.rss_mb[-1] if series.rss_mb else None,
                    "fds_end": series.fds[-1] if series.fds else None,
                    "threads_end": series.threads[-1] if series.threads else None,
                    "cpu_pct": round(server_cpu, 1),
                    "runqueue_wait_pct": round(sampler.wait_pct("server"), 1),
                },
                "devstack_cpu_pct": round(sampler.cpu_pct("devstack"), 1),
                "devstack_runqueue_wait_pct": round(sampler.wait_pct("devstack"), 1),
                "runner_cpu_pct": round(sampler.cpu_pct("runner"), 1),
                "cpu_busy_pct": sampler.core_busy,
                "server_core_other_pct": self._other_load(sampler, pg_cpu) if run.workers == 1 else None,
                # CPU used by processes outside the bench (other work on a shared machine), in % of one core
                "other_cpu_pct": round(max(0.0, sum(sampler.core_busy.values()) - known), 1),
                "client": {
                    "cpu_pct": result.client_cpu_pct,
                    "runqueue_wait_pct": result.client_runqueue_wait_pct,
                    "cpu_s": result.client_cpu_s,
                    "wall_s": result.client_wall_s,
                    "command": result.command,
                },
            }
        )
        record.update(wal.record())  # None unless a gateway SQLite run
        record["batches"] = sqlite_stats.batch_window(before, after) if run.target == GATEWAY else None
        record["postgres"] = None  # the PostgreSQL server with its backends (scale runs on PostgreSQL)
        if pg_pid:
            record["postgres"] = {
                "cpu_pct": round(pg_cpu, 1),
                "runqueue_wait_pct": round(sampler.wait_pct("postgres"), 1),
                "processes": sampler.series["postgres"].processes,
            }

    @staticmethod
    def pace(run: Run, done: Sequence[dict[str, Any]]) -> tuple[int, float]:
        """Per-connection delay giving about LAG_LOAD_FRACTION of the saturated run's throughput."""
        if not run.paced:
            return 0, 0.0
        saturated = next(
            (
                r
                for r in done
                if r["scenario"] == run.scenario.name and r["target"] == run.target and r["variant"] == "default"
            ),
            None,
        )
        if saturated is None or not saturated.get("rps"):
            raise RuntimeError(f"{run.label}: no saturated run to pace from")
        target = scenarios.LAG_LOAD_FRACTION * saturated["rps"]
        cycle_ms = 1000.0 * run.scenario.connections / target
        # a connection's cycle is its pause plus the response time at this lower load (~ the downstream's)
        pace = max(1, round(cycle_ms - run.scenario.light_load_latency_ms))
        return pace, target

    @staticmethod
    def settle(url: str, pid: int, target: str, timeout_s: float = 60.0) -> float:
        """Wait until the server has finished the warm-up's abandoned requests (wrk closes its connections,
        but queued work still runs): in-flight gauge back to the scrape itself (gateway) and the process
        idle for two consecutive half-second windows. Bounded."""
        started = time.monotonic()
        prev = servers.tree_cpu_s(pid) or 0.0  # with WORKERS > 1: the supervisor and its workers
        idle = 0
        while time.monotonic() - started < timeout_s:
            time.sleep(0.5)
            cpu_s = servers.tree_cpu_s(pid)
            if cpu_s is None:
                break
            busy = (cpu_s - prev) / 0.5
            prev = cpu_s
            drained = True
            if target == GATEWAY:
                drained = servers.scrape(url + "/metrics").get("http_requests_in_flight", 0.0) <= 1
            idle = idle + 1 if busy < 0.05 and drained else 0
            if idle >= 2:
                break
        return round(time.monotonic() - started, 1)

    def _other_load(self, sampler: servers.Sampler, pg_cpu: float) -> float | None:
        """CPU time on the server's core not used by the server (or its PostgreSQL): other processes on a shared
        machine. One server CPU only (several are shared with the client: see ``other_cpu_pct``)."""
        if self.cores.server is None:
            return None
        busy = sampler.core_busy.get(self.cores.server, 0.0)
        return round(max(0.0, busy - sampler.cpu_pct("server") - pg_cpu), 1)

    async def _setup(self, run: Run, url: str) -> list[scenarios.PlanLine]:
        async with Setup(url, self.devstack_url, self.opts.scale) as setup:
            plan = await run.scenario.build(setup)
            # one request of each kind must succeed before anything is measured
            seen: set[tuple[str, str, str]] = set()
            for line in plan:
                kind = (line.method, SESSION_ID.sub("{id}", line.path), line.token or "")
                if kind[:2] not in {k[:2] for k in seen}:
                    seen.add(kind)
                    await setup.check(line)
            return plan

    def cleanup(self) -> None:
        servers.stop_all()
        if self.pg is not None:
            self.pg.remove()  # stops the server if a run left it up
        if self.opts.keep_workdir:
            say(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


# --------------------------------------------------------------------------------------------- entry points


def run_bench(opts: Options) -> dict[str, Any]:
    runs = scenarios.plan_runs(
        opts.groups, baseline=opts.baseline, naive=opts.naive, scale_scenarios=opts.scale_scenarios
    )
    if not runs:
        raise SystemExit("nothing to run")
    bench = Bench(opts)
    runs = bench.drop_postgres_runs(runs)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        bench.raw.mkdir(parents=True, exist_ok=True)
        say(
            f"bench: {len(runs)} runs, {opts.duration_s:g} s each after {opts.warmup_s:g} s warm-up; "
            f"{bench.cores.describe()}; fd limit {servers.raise_fd_limit()}"
        )
        machine = servers.machine_info()  # before pinning the runner: its usable CPUs are the machine's
        servers.pin_self(bench.cores.client)
        bench.start_devstack()
        bench.seed(sorted({r.target for r in runs}))
        if any(r.engine == POSTGRES for r in runs):
            bench.seed_postgres()
        for i, run in enumerate(runs, 1):
            results.append(bench.execute(i, len(runs), run, results))
    finally:
        bench.cleanup()
    data = {
        "kind": "bench",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": opts.command,
        "machine": machine,
        "code": bench.code_info,
        "pinning": dataclasses.asdict(bench.cores) | {"description": bench.cores.describe()},
        "config": {
            "duration_s": opts.duration_s,
            "warmup_s": opts.warmup_s,
            "sessions_seeded": opts.sessions,
            "seeds": bench.seeds,
            "wrk_timeout_s": opts.timeout_s,
            "wrk_threads": 1,
            "loop_lag_interval_s": opts.lag_interval_s,
            "nice": opts.nice,
            "quick": opts.quick,
            "groups": opts.groups,
            "scale_scenarios": list(opts.scale_scenarios),
            "pg_synchronous_commit": opts.pg_synchronous_commit,
        },
        "elapsed_s": round(time.monotonic() - started, 1),
        "runs": results,
    }
    if "scale" in opts.groups:
        pg_info: dict[str, Any] = {"skipped": bench.pg_skipped} if bench.pg_skipped else {}
        if bench.pg is not None:
            pg_info = bench.pg.describe()
        data["scale_info"] = {"pinning": bench.cores.describe_scale(), "postgres": pg_info}
    data = report.summarize(data)
    paths = report.write_bench(data, opts.out)
    say("\n" + report.bench_markdown(data))
    say("written: " + ", ".join(str(p) for p in paths))
    return data


def run_soak(opts: Options) -> dict[str, Any]:
    from bench.soak import soak

    bench = Bench(opts)
    try:
        bench.raw.mkdir(parents=True, exist_ok=True)
        say(
            f"soak: mixed scenario for {opts.soak_duration_s:g} s; {bench.cores.describe()}; "
            f"fd limit {servers.raise_fd_limit()}"
        )
        servers.pin_self(bench.cores.client)
        bench.start_devstack()
        bench.seed([GATEWAY])
        data = soak(bench, opts)
    finally:
        bench.cleanup()
    paths = report.write_soak(data, opts.out)
    say("\n" + report.soak_markdown(data))
    say("written: " + ", ".join(str(p) for p in paths))
    return data


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per run, 1 s warm-up, small data")
    parser.add_argument(
        "--scenarios",
        default=",".join(scenarios.GROUPS),
        help=f"comma-separated groups (default: all): {', '.join(scenarios.GROUPS)}",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 15; quick 2)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (default 3; quick 1)")
    parser.add_argument("--sessions", type=int, help="sessions seeded for the list scenario (default 100000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default bench/results)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="measure the gateway only (no baseline, no naive async port)"
    )
    parser.add_argument(
        "--no-naive", action="store_true", help="leave the naive async port (bench/naive) out; the baseline stays"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk per-request timeout, s (default 10)")
    parser.add_argument(
        "--lag-interval",
        type=float,
        default=0.025,
        help="gateway LOOP_LAG_INTERVAL_S during the bench (default 0.025: 40 samples/s)",
    )
    parser.add_argument(
        "--no-status-tracking",
        action="store_true",
        help="do not count status codes in wrk's Lua (saves client CPU; errors still counted)",
    )
    parser.add_argument(
        "--quiet-busy",
        type=float,
        default=15.0,
        help="before each run, wait while other processes keep the machine busier than this %% (default 15)",
    )
    parser.add_argument("--quiet-wait", type=float, help="longest wait for quiet, s (default 15; quick 3)")
    parser.add_argument(
        "--nice",
        type=int,
        default=-10 if os.geteuid() == 0 else 0,
        help="niceness of servers, downstream and wrk, applied to their scheduler autogroups too, so other work on "
        "a shared machine cannot starve them (default: -10 as root, else 0)",
    )
    parser.add_argument(
        "--scale-scenarios",
        default=",".join(scenarios.SCALE_SCENARIOS),
        help=f"scenarios of the scale group (default {','.join(scenarios.SCALE_SCENARIOS)}; any of "
        f"{', '.join(scenarios.SCENARIOS)})",
    )
    parser.add_argument(
        "--pg-synchronous-commit",
        choices=("off", "on"),
        default="off",
        help="synchronous_commit of the scale group's PostgreSQL (default off, the nearest to the gateway's SQLite "
        "default DB_SYNCHRONOUS=NORMAL: commits acknowledged before they are flushed; fsync stays on either way)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep databases and logs (in /tmp)")
    parser.add_argument("--soak", action="store_true", help="run the soak test instead of the benchmark")
    parser.add_argument("--soak-duration", type=float, default=600.0, help="soak seconds (default 600)")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    groups = [g.strip() for g in args.scenarios.split(",") if g.strip()]
    scale_scenarios = tuple(n.strip() for n in args.scale_scenarios.split(",") if n.strip())
    try:
        scenarios.plan_runs(groups, scale_scenarios=scale_scenarios)  # validates names early
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        groups=groups,
        duration_s=args.duration if args.duration is not None else (2.0 if quick else 15.0),
        warmup_s=args.warmup if args.warmup is not None else (1.0 if quick else 3.0),
        sessions=args.sessions if args.sessions is not None else (2_000 if quick else 100_000),
        scale=Scale.quick() if quick else Scale(),
        out=args.out.resolve(),
        baseline=not args.no_baseline,
        naive=not args.no_naive,
        timeout_s=args.timeout,
        lag_interval_s=args.lag_interval,
        keep_workdir=args.keep_workdir,
        quick=quick,
        soak=args.soak,
        soak_duration_s=args.soak_duration,
        track_status=not args.no_status_tracking,
        nice=args.nice,
        quiet_busy_pct=args.quiet_busy,
        quiet_wait_s=args.quiet_wait if args.quiet_wait is not None else (3.0 if quick else 15.0),
        pg_synchronous_commit=args.pg_synchronous_commit,
        scale_scenarios=scale_scenarios,
        command="python -m bench.run"
        + ("" if argv is None and len(sys.argv) <= 1 else " " + " ".join(argv if argv is not None else sys.argv[1:])),
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if opts.soak:
            data = run_soak(opts)
            return 0 if data.get("verdict", {}).get("ok", False) else 1
        run_bench(opts)
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted: all child processes stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        servers.stop_all()


if __name__ == "__main__":
    sys.exit(main())
