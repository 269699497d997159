"""``python -m bench.run --soak``: the mixed scenario against the gateway for a long while (10 min by default).

Samples the gateway's RSS, open file descriptors and threads every few seconds, then stops it gracefully and
runs ``PRAGMA integrity_check`` / ``foreign_key_check`` on its database. "No growth" is judged on the second
half of the run (during the first, SQLite's page caches - bounded by DB_CACHE_SIZE_KIB per connection - fill
while the load adds rows): the median of the last tenth against the median of the 40-50% tenth, and the
least-squares slope over the second half.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import TYPE_CHECKING, Any

from bench import scenarios, seed, servers
from bench.scenarios import GATEWAY, SCENARIOS, Run
from bench.wrk import run_wrk

if TYPE_CHECKING:
    from bench.run import Bench, Options

RSS_NOISE_MB = 10.0
RSS_NOISE_FRACTION = 0.05
FD_NOISE = 5


def _window(t: list[float], values: list[float], lo: float, hi: float) -> list[float]:
    return [v for ti, v in zip(t, values, strict=True) if lo <= ti <= hi]


def _slope_per_min(t: list[float], values: list[float]) -> float:
    if len(t) < 3:
        return 0.0
    mt, mv = statistics.fmean(t), statistics.fmean(values)
    den = sum((ti - mt) ** 2 for ti in t)
    if den == 0:
        return 0.0
    return 60.0 * sum((ti - mt) * (vi - mv) for ti, vi in zip(t, values, strict=True)) / den


def growth(t: list[float], values: list[float], duration: float) -> dict[str, float]:
    """Second half of the run: median of 40-50% vs median of the last 10%, and the slope over 50-100%.
    (The first half is left out: SQLite's page caches, bounded by DB_CACHE_SIZE_KIB per connection, fill
    while the load adds rows.) Samples after the load stopped are ignored."""
    early = _window(t, values, 0.4 * duration, 0.5 * duration) or values[:1]
    late = _window(t, values, 0.9 * duration, duration) or values[-1:]
    settled_t = [ti for ti in t if 0.5 * duration <= ti <= duration]
    settled_v = _window(t, values, 0.5 * duration, duration)
    return {
        "early_median": round(statistics.median(early), 2),
        "late_median": round(statistics.median(late), 2),
        "growth": round(statistics.median(late) - statistics.median(early), 2),
        "slope_per_min": round(_slope_per_min(settled_t, settled_v), 3),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


def soak(bench: Bench, opts: Options) -> dict[str, Any]:
    say = print
    run = Run(SCENARIOS["mixed"], GATEWAY, group="soak")
    duration = opts.soak_duration_s
    db = bench.fresh_db(GATEWAY, "soak")
    log = bench.work / "logs" / "soak.log"
    bench.devstack_control(0, clear=True)
    proc, url = bench.start_server(GATEWAY, {}, db, log, bench.cores.server)
    interval = max(1.0, min(5.0, duration / 120))
    try:
        plan = asyncio.run(bench._setup(run, url))
        plan_path = scenarios.write_plan(plan, bench.raw / "soak.plan.tsv")
        bench.devstack_control(run.scenario.downstream_latency_ms)
        warmup = max(opts.warmup_s, 5.0)
        say(f"  warm-up {warmup:g} s ...", flush=True)
        run_wrk(
            url,
            plan_path,
            connections=run.scenario.connections,
            duration_s=warmup,
            timeout_s=opts.timeout_s,
            core=bench.cores.client,
            track_status=opts.track_status,
        )
        before = servers.scrape(url + "/metrics")
        with servers.Sampler({"server": proc.pid, "devstack": bench.devstack_pid}, interval=interval) as sampler:

            def tick(elapsed: float) -> None:
                rss, fds = sampler.latest("server")
                threads = sampler.series["server"].threads[-1] if sampler.series["server"].threads else 0
                say(f"  {elapsed:5.0f}/{duration:g} s  RSS {rss:6.1f} MB  fds {fds}  threads {threads}", flush=True)

            result = run_wrk(
                url,
                plan_path,
                connections=run.scenario.connections,
                duration_s=duration,
                timeout_s=opts.timeout_s,
                core=bench.cores.client,
                track_status=opts.track_status,
                on_tick=tick,
                watch=bench.watchdog(proc, log),
                tick_s=30.0 if duration >= 120 else 5.0,
            )
        after = servers.scrape(url + "/metrics")
    finally:
        exit_code = servers.stop(proc)
        error_lines = servers.count_lines(log, ("Traceback", " ERROR ", "ERROR:"))
        if error_lines:
            (bench.raw / "soak.log-tail.txt").write_text(servers.tail(log, 200))
        log.unlink(missing_ok=True)
    say("  integrity check ...", flush=True)
    integrity = seed.integrity_check(db)
    bench.drop_db(db)
    s = sampler.series["server"]
    rss = growth(s.t, s.rss_mb, duration)
    fds = growth(s.t, [float(x) for x in s.fds], duration)
    threads = growth(s.t, [float(x) for x in s.threads], duration)
    rss_limit = max(RSS_NOISE_MB, RSS_NOISE_FRACTION * rss["early_median"])
    verdict = {
        "rss_ok": rss["growth"] <= rss_limit,
        "rss_growth_limit_mb": round(rss_limit, 1),
        "fds_ok": fds["growth"] <= FD_NOISE,
        "fd_growth_limit": FD_NOISE,
        "integrity_ok": integrity["ok"],
        "errors_ok": result.errors_total == 0,
        "clean_exit": exit_code in (0, -15),  # uvicorn may re-raise SIGTERM after a graceful shutdown
    }
    verdict["ok"] = all(v for k, v in verdict.items() if k.endswith("_ok") or k == "clean_exit")
    return {
        "kind": "soak",
        "command": opts.command,
        "machine": servers.machine_info(),
        "code": bench.code_info,
        "pinning": bench.cores.describe(),
        "scenario": run.scenario.title,
        "connections": run.scenario.connections,
        "duration_s": duration,
        "sample_interval_s": interval,
        "sessions_seeded": opts.sessions,
        "wrk": {
            "rps": result.rps,
            "requests": result.requests,
            "latency_ms": result.latency_ms,
            "errors": result.errors,
            "errors_total": result.errors_total,
            "statuses": result.statuses,
            "client_cpu_pct": result.client_cpu_pct,
        },
        "lag": servers.lag_window(before, after),
        "server_cpu_pct": round(sampler.cpu_pct("server"), 1),
        "peak_rss_mb": round(s.hwm_mb, 1),
        "rss_mb": rss,
        "fds": fds,
        "threads": threads,
        "series": {"t": s.t, "rss_mb": s.rss_mb, "fds": s.fds, "threads": s.threads},
        "integrity": integrity,
        "server_exit_code": exit_code,
        "server_log_error_lines": error_lines,
        "verdict": verdict,
    }
