"""Pure parts of the bench: wrk output parsing, lag windows from two /metrics scrapes, run planning, the scale-out
report, CPU plans for several workers, process-tree sampling."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import postgres, report, scenarios, servers
from bench.wrk import parse_output, summarize

WRK_STDOUT = """Running 2s test @ http://127.0.0.1:1
  1 threads and 10 connections
WRK_JSON {"duration_us": 2000000, "requests": 1000, "bytes": 5000, "errors": {"connect": 0, "read": 1, "write": 0, \
"status": 3, "timeout": 2}, "latency_us": {"min": 100, "max": 90000, "mean": 1500.5, "stdev": 10.0, "percentiles": \
{"50": 1000, "75": 1200, "90": 1500, "95": 2000, "99": 5000, "99.9": 80000}}, "statuses": {"200": 997, "503": 3}, \
"threads": 1}
"""


def test_wrk_json_line_is_parsed_and_summarized() -> None:
    result = summarize(parse_output(WRK_STDOUT), connections=10, cpu_s=0.5, wall_s=2.0)
    assert result.rps == 500.0
    assert result.latency_ms["p50"] == 1.0 and result.latency_ms["p99"] == 5.0 and result.latency_ms["max"] == 90.0
    assert result.non_2xx == 3
    assert result.errors_total == 1 + 2 + 3  # read + timeout + status
    assert result.client_cpu_pct == 25.0


def test_missing_result_line_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="WRK_JSON"):
        parse_output("unable to connect to 127.0.0.1:1 Connection refused")


def _scrape(max_s: float, counts: list[float]) -> dict[str, float]:
    bounds = ["0.0005", "0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1.0", "+Inf"]
    out = {f'event_loop_lag_seconds_distribution_bucket{{le="{b}"}}': c for b, c in zip(bounds, counts, strict=True)}
    out["event_loop_lag_max_seconds"] = max_s
    return out


def test_lag_window_uses_histogram_deltas() -> None:
    # before: 100 samples, one startup spike of 0.3 s; during the window: 200 more, all under 2 ms but one at 7 ms
    before = _scrape(0.3, [90, 95, 99, 99, 99, 99, 99, 99, 100, 100, 100])
    after = _scrape(0.3, [250, 290, 298, 298, 299, 299, 299, 299, 300, 300, 300])
    lag = servers.lag_window(before, after)
    assert lag["samples"] == 200
    assert lag["p99_le_s"] == 0.002
    assert lag["max_s"] == 0.01 and lag["max_exact"] is False  # bounded by the bucket, not the startup spike
    assert lag["max_since_start_s"] == 0.3


def test_lag_window_max_is_exact_when_the_gauge_rose() -> None:
    before = _scrape(0.004, [10] * 11)
    after = _scrape(0.04, [10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11])
    lag = servers.lag_window(before, after)
    assert lag["max_s"] == 0.04 and lag["max_exact"] is True
    assert lag["p99_le_s"] == 0.05


def test_plan_runs_dedupes_and_orders() -> None:
    runs = scenarios.plan_runs(["rag", "transport", "lag"], baseline=True)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    assert keys[0] == ("rag_c100", "gateway", "default")
    assert ("rag_c500", "baseline", "default") in keys
    assert sum(1 for r in runs if r.group == "transport") == 2 * (len(scenarios.TRANSPORT_VARIANTS) - 1)
    paced = [r for r in runs if r.paced]
    assert paced and all(keys.index(r.key) > keys.index((r.scenario.name, "gateway", "default")) for r in paced)
    with pytest.raises(ValueError, match="unknown"):
        scenarios.plan_runs(["nope"])


def test_plan_lines_render_as_tab_separated() -> None:
    line = scenarios.PlanLine("POST", "/rag/query", "dev:student:x", {"session_id": "s", "query": "q"})
    assert line.render() == 'POST\t/rag/query\tdev:student:x\t{"session_id":"s","query":"q"}'
    assert scenarios.PlanLine("GET", "/health").render() == "GET\t/health\t-\t"


def test_targets_are_evaluated_from_runs() -> None:
    def run(scenario: str, target: str, rps: float, p99: float = 10.0) -> dict[str, Any]:
        return {
            "scenario": scenario,
            "target": target,
            "variant": "default",
            "group": scenario,
            "rps": rps,
            "latency_ms": {"p50": 1.0, "p95": 5.0, "p99": p99, "max": 20.0},
            "errors_total": 0,
            "lag": {"p99_le_s": 0.002, "max_s": 0.01} if target == "gateway" else None,
            "server": {"peak_rss_mb": 80.0, "cpu_pct": 99.0},
            "client": {"cpu_pct": 20.0, "runqueue_wait_pct": 0.0},
        }

    data = report.summarize(
        {
            "runs": [
                run("ceiling", "gateway", 10000),
                run("read", "gateway", 7000),
                run("read", "baseline", 2000),
                run("write", "gateway", 2000),
                run("write", "baseline", 100),
            ]
        }
    )
    met = {t["target"]: t["met"] for t in data["targets"]}
    assert met["read >= 0.75 x ceiling"] is False  # 0.70 x
    assert met["write >= 0.35 x ceiling"] is False
    assert met["read: gateway >= 2 x baseline"] is True
    assert met["gateway RSS < 200 MB at peak"] is True
    assert data["client_check"]["runs_with_busy_client"] == []


def test_lag_window_with_one_max_gauge_per_worker() -> None:
    # WORKERS=2: the histogram is summed over workers; the max gauge is one series per worker (label pid)
    def scrape(gauges: dict[str, float], counts: list[float]) -> dict[str, float]:
        out = _scrape(0.0, counts)
        del out["event_loop_lag_max_seconds"]
        return out | {f'event_loop_lag_max_seconds{{pid="{pid}"}}': v for pid, v in gauges.items()}

    before = scrape({"1": 0.3, "2": 0.004}, [100] * 11)
    # worker 2's gauge rose to 9 ms; worker 1's (a 0.3 s start-up spike) did not: its window max is only bounded
    after = scrape({"1": 0.3, "2": 0.009}, [190, 195, 198, 198, 200, 200, 200, 200, 200, 200, 200])
    lag = servers.lag_window(before, after)
    assert lag["samples"] == 100
    assert lag["max_s"] == 0.01 and lag["max_exact"] is False  # bounded by the top bucket, not the 0.3 s spike
    assert lag["max_since_start_s"] == 0.3
    # both rose: exact, the larger of the two
    after_both = scrape({"1": 0.31, "2": 0.009}, [190, 195, 198, 198, 200, 200, 200, 200, 200, 200, 201])
    lag = servers.lag_window(before, after_both)
    assert lag["max_s"] == 0.31 and lag["max_exact"] is True


def test_plan_runs_scale_group_puts_the_four_configurations_of_a_scenario_together() -> None:
    runs = scenarios.plan_runs(["scale"], baseline=True)
    assert all(r.target == "gateway" and r.group == "scale" for r in runs)  # no baseline in this group
    assert [r.scenario.name for r in runs] == [n for n in scenarios.SCALE_SCENARIOS for _ in scenarios.SCALE_CONFIGS]
    first = [(r.engine, r.workers) for r in runs[: len(scenarios.SCALE_CONFIGS)]]
    assert first == list(scenarios.SCALE_CONFIGS)
    assert all(dict(r.env) == {"WORKERS": str(r.workers)} for r in runs)  # the runner adds DATABASE_URL per run
    assert "scale" in scenarios.GROUPS
    # selected together with read, the default read run stays its own run
    keys = [r.key for r in scenarios.plan_runs(["read", "scale"], baseline=False)]
    assert keys[0] == ("read", "gateway", "default") and len(keys) == len(set(keys)) == 1 + len(runs)


def test_server_cores_for_workers_on_small_and_large_machines() -> None:
    two = servers.Cores(0, 1, 1, (0, 1))
    assert two.server_cores(1) == 0
    assert two.server_cores(2) == (0, 1) and two.shares_client((0, 1)) and not two.shares_client(0)
    assert "shares a CPU with wrk" in two.describe_scale()
    four = servers.Cores(0, 1, 2, (0, 1, 2, 3))
    assert four.server_cores(2) == (0, 3) and not four.shares_client((0, 3))  # a spare CPU first
    assert "shares" not in four.describe_scale()
    assert servers.Cores(None, None, None, (0,)).server_cores(2) is None
    assert servers.pinned(["x"], (0, 3))[:3] == ["taskset", "-c", "0,3"]


def _scale_run(engine: str, workers: int, scenario: str, rps: float, p99: float) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "target": "gateway",
        "variant": scenarios.scale_variant(engine, workers),
        "group": "scale",
        "connections": 64,
        "engine": engine,
        "workers": workers,
        "server_cores": [0] if workers == 1 else [0, 1],
        "server_shares_client_core": workers > 1,
        "rps": rps,
        "latency_ms": {"p50": 1.0, "p95": 5.0, "p99": p99, "max": 20.0},
        "errors_total": 0,
        "lag": {"p99_le_s": 0.002, "max_s": 0.01},
        "server": {"peak_rss_mb": 250.0, "cpu_pct": 99.0 * workers},
        "postgres": {"cpu_pct": 30.0} if engine == "postgres" else None,
        "client": {"cpu_pct": 20.0, "runqueue_wait_pct": 0.0},
        "other_cpu_pct": 3.0,
    }


def test_scale_rows_ratios_and_markdown() -> None:
    runs = [
        _scale_run("sqlite", 1, "read", 10000, 10.0),
        _scale_run("sqlite", 2, "read", 15000, 8.0),
        _scale_run("postgres", 1, "read", 4000, 20.0),
        _scale_run("postgres", 2, "read", 7000, 16.0),
        _scale_run("sqlite", 1, "write", 3000, 30.0),  # write: PostgreSQL skipped
        _scale_run("sqlite", 2, "write", 3000, 60.0),
    ]
    data = report.summarize({"runs": runs})
    ratios = {(r["scenario"], r["ratio"]): (r["rps"], r["p99"]) for r in data["scale"]["ratios"]}
    assert ratios[("read", "WORKERS=2 / WORKERS=1 (SQLite)")] == (1.5, 0.8)
    assert ratios[("read", "PostgreSQL 1 / SQLite 1")] == (0.4, 2.0)
    assert ratios[("read", "PostgreSQL 2 / PostgreSQL 1")] == (1.75, 0.8)
    assert ratios[("write", "WORKERS=2 / WORKERS=1 (SQLite)")] == (1.0, 2.0)
    assert ratios[("write", "PostgreSQL 2 / PostgreSQL 1")] == (None, None)
    assert len(data["scale"]["rows"]) == 6
    # the 2-process servers' summed RSS is not held to the single process's 200 MB target
    rss = next(t for t in data["targets"] if t["id"] == "rss")
    assert rss["met"] is None and "not measured in this run" in rss["note"]

    data |= {
        "machine": {"nproc": 2, "cpu_model": "x", "memory_gib": 1, "kernel": "k", "python": "3", "wrk": "w"},
        "pinning": {"description": "d"},
        "command": "c",
        "created": "t",
        "elapsed_s": 1.0,
        "config": {"sessions_seeded": 1, "warmup_s": 1, "duration_s": 1, "wrk_timeout_s": 1, "loop_lag_interval_s": 1},
        "scale_info": {"pinning": "p", "postgres": {"skipped": "no binaries"}},
    }
    md = report.bench_markdown(data)
    assert "## Scale-out" in md and "## Results" not in md  # the scale group alone: no main table
    assert "| read | postgres | 2 | 0,1 (one shared with wrk) | 64 | 7,000 |" in md
    assert "| write | 1.00 x (2.00 x) | n/a | n/a | n/a |" in md
    assert "PostgreSQL runs skipped: no binaries" in md


def test_postgres_unavailable_names_what_is_missing(tmp_path: Path) -> None:
    assert "postgresql" in (postgres.unavailable(tmp_path) or "")  # no server binaries: the Debian package named
    bindir = tmp_path / "15" / "bin"
    bindir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (bindir / name).touch()
    assert postgres.find_bindir(tmp_path) == bindir
    assert "psql" in (postgres.unavailable(tmp_path) or "")


def test_sampler_follows_a_process_tree() -> None:
    # a parent with two busy children: the tree's CPU is theirs, the parent's own is ~0
    code = (
        "import subprocess, sys, time\n"
        "busy = 'import time\\nend = time.monotonic() + 1.5\\nwhile time.monotonic() < end: pass'\n"
        "kids = [subprocess.Popen([sys.executable, '-c', busy]) for _ in range(2)]\n"
        "[k.wait() for k in kids]\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):  # both children started (bounded)
            if len(servers.process_tree(parent.pid)) == 3:
                break
            time.sleep(0.05)
        assert len(servers.process_tree(parent.pid)) == 3
        assert sorted(servers.process_tree(parent.pid)) == sorted(servers._process_tree_by_scan(parent.pid))
        with servers.Sampler({"tree": parent.pid, "alone": parent.pid}, interval=0.2, trees=("tree",)) as sampler:
            time.sleep(0.8)
        assert sampler.series["tree"].processes == 3 and sampler.series["alone"].processes == 1
        assert sampler.cpu_pct("tree") > sampler.cpu_pct("alone")  # the children's CPU counts, the parent's is ~0
    finally:
        parent.wait(timeout=30)
    assert servers.process_tree(parent.pid) == []


def test_plan_runs_measure_the_naive_port_right_after_the_baseline() -> None:
    groups = ["ceiling", "read", "write", "list", "rag", "mixed", "overhead", "transport", "lag", "scale"]
    runs = scenarios.plan_runs(groups)
    keys = [r.key for r in runs]
    baseline = [r for r in runs if r.target == scenarios.BASELINE]
    naive = [r for r in runs if r.target == scenarios.NAIVE]
    assert [r.scenario.name for r in naive] == [r.scenario.name for r in baseline]
    assert {r.scenario.name for r in naive} == set(report.MAIN_SCENARIOS)  # every scenario the baseline serves
    for r in naive:
        assert keys.index(r.key) == keys.index((r.scenario.name, scenarios.BASELINE, "default")) + 1
        assert r.group == r.scenario.group and r.variant == "default" and r.engine == "sqlite" and r.workers == 1
    # --no-naive: the baseline only; --no-baseline: neither peer
    assert not any(r.target == scenarios.NAIVE for r in scenarios.plan_runs(groups, naive=False))
    assert len([r for r in scenarios.plan_runs(groups, naive=False) if r.target == scenarios.BASELINE]) == len(baseline)
    assert {r.target for r in scenarios.plan_runs(groups, baseline=False)} == {scenarios.GATEWAY}
    assert {r.target for r in scenarios.plan_runs(["rag", "scale"])} >= {"gateway", "baseline", "naive"}


def test_runner_options_for_the_naive_port() -> None:
    from bench import run

    assert run.parse_args(["--quick"]).naive is True
    assert run.parse_args(["--quick", "--no-naive"]).naive is False
    assert run.parse_args(["--no-baseline"]).baseline is False
    assert run.PEER_MODULES[scenarios.NAIVE] == "bench.naive"


def _peer_run(scenario: str, target: str, rps: float, p50: float, p99: float, errors: int = 0) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "target": target,
        "variant": "default",
        "group": scenario.split("_")[0],
        "connections": 1000 if scenario == "rag_c1000" else 64,
        "env": {},
        "rps": rps,
        "requests": int(rps * 15),
        "duration_s": 15.0,
        "latency_ms": {"p50": p50, "p95": p99, "p99": p99, "max": p99 * 2},
        "errors_total": errors,
        "lag": {"p99_le_s": 0.002, "max_s": 0.01} if target == "gateway" else None,
        "server": {"peak_rss_mb": 80.0, "cpu_pct": 99.0},
        "client": {"cpu_pct": 20.0, "runqueue_wait_pct": 0.0},
    }


def test_route_by_route_section_and_naive_ratios() -> None:
    runs = [
        _peer_run("ceiling", "gateway", 10000, 3.0, 5.0),
        _peer_run("ceiling", "baseline", 5000, 6.0, 12.0),
        _peer_run("ceiling", "naive", 8000, 4.0, 8.0),
        _peer_run("read", "gateway", 9000, 4.0, 6.0),
        _peer_run("read", "baseline", 2000, 20.0, 60.0),
        _peer_run("read", "naive", 3000, 15.0, 40.0),
        _peer_run("rag_c1000", "gateway", 2000, 400.0, 600.0),
        _peer_run("rag_c1000", "baseline", 300, 3000.0, 4000.0),
        _peer_run("rag_c1000", "naive", 500, 1500.0, 2500.0, errors=7),
        _peer_run("write", "gateway", 3000, 10.0, 20.0),  # no peers measured for write
        _peer_run("rag_c500", "gateway", 1500, 300.0, 450.0),
        _peer_run("rag_c500", "naive", 0, 0.0, 0.0, errors=500),  # nothing completed: every request timed out
    ]
    data = report.summarize({"runs": runs})
    assert report.naive_ratio(data["runs"], "rag_c1000") == 4.0
    assert report.naive_ratio(data["runs"], "write") is None
    assert report.naive_ratio_bound(data["runs"], "rag_c1000") == (4.0, True)
    # the naive port completed no request in its 15 s window: fewer than 1 / 15 req/s, so gw / naive > 1500 x 15
    assert report.naive_ratio_bound(data["runs"], "rag_c500") == (22500.0, False)
    assert report.naive_ratio(data["runs"], "rag_c500") is None
    by_key = {(r["scenario"], r["target"]): r for r in data["runs"]}
    assert by_key[("read", "gateway")]["x_naive"] == 3.0 and by_key[("read", "gateway")]["x_baseline"] == 4.5
    assert by_key[("read", "naive")]["x_naive"] is None and by_key[("write", "gateway")]["x_naive"] is None

    rows = {t["scenario"]: t for t in data["route_by_route"]}
    assert list(rows) == ["ceiling", "read", "rag_c500", "rag_c1000"]  # the bench's order; write: no naive run
    rag = rows["rag_c1000"]
    assert (rag["gateway_rps"], rag["naive_rps"], rag["baseline_rps"]) == (2000, 500, 300)
    assert (rag["x_naive"], rag["x_baseline"], rag["naive_x_baseline"]) == (4.0, 6.667, 1.667)
    assert (rag["naive_p50_ms"], rag["naive_p99_ms"], rag["naive_errors"]) == (1500.0, 2500.0, 7)

    data |= {
        "machine": {"nproc": 2, "cpu_model": "x", "memory_gib": 1, "kernel": "k", "python": "3", "wrk": "w"},
        "pinning": {"description": "d"},
        "command": "c",
        "created": "t",
        "elapsed_s": 1.0,
        "config": {"sessions_seeded": 1, "warmup_s": 1, "duration_s": 1, "wrk_timeout_s": 1, "loop_lag_interval_s": 1},
    }
    md = report.bench_markdown(data)
    assert "## Gateway vs the naive async port, route by route" in md
    assert md.index("## Results") < md.index("## Gateway vs the naive async port")
    rag_row = "| rag_c1000 | 1000 | 2,000 | 500 | 300 | 4.00 | 6.67 | 1.67 | 400 / 600 | 1,500 / 2,500 | 3,000 / 4,000 "
    assert rag_row in md
    assert "| 0 / 7 / 0 | 99 |" in md
    assert "| rag_c500 | 64 | 1,500 | 0 | n/a | > 22,500 | n/a | n/a | 300 / 450 | none completed | n/a |" in md
    assert "| read | naive | 64 | 3,000 |" in md  # the naive port's row in the results table
    # the gateway's read row: x ceiling 0.90, gw / baseline 4.50, gw / naive 3.00
    assert "| 80 | 0.90 | 4.50 | 3.00 | 99 |" in md

    readme = report.readme_route_table(data)
    assert readme.count("\n") == 2 + 4
    assert "| rag, downstream +100 ms | 1000 | 2,000 | 500 | 300 | 4.0 | 6.7 | 400 / 600 |" in readme


def test_no_route_by_route_section_without_naive_runs(tmp_path: Path) -> None:
    data = report.summarize({"runs": [_peer_run("read", "gateway", 9000, 4.0, 6.0)]})
    assert data["route_by_route"] == [] and report.route_by_route_markdown(data) == []
    results = tmp_path / "bench.json"
    results.write_text(json.dumps(data))
    assert report.main(["readme-naive", str(results)]) == 1  # says there is nothing to print
