"""Pure parts of the bench: wrk output parsing, lag windows from two /metrics scrapes, run planning."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report, scenarios, servers
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
    assert met["read >= 0.6 x ceiling"] is True
    assert met["write >= 0.3 x ceiling"] is False
    assert met["read: gateway >= 2 x baseline"] is True
    assert met["gateway RSS < 200 MB at peak"] is True
    assert data["client_check"]["runs_with_busy_client"] == []
