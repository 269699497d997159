"""The benchmark runner's quick mode end to end: real servers, real wrk, tiny durations.

Asserts that the report is produced and its fields are sane; never asserts on timings (shared machines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import postgres

REPO_ROOT = Path(__file__).resolve().parents[2]

MISSING = "needs wrk (`make test` installs it with apt-get) and Linux /proc"
UNAVAILABLE = shutil.which("wrk") is None or not sys.platform.startswith("linux")
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(autouse=True)
def _wrk() -> None:
    # A skip under CI would hide a missing install step: there the test fails instead.
    if UNAVAILABLE:
        if IN_CI:
            pytest.fail(f"bench quick test cannot run under CI: {MISSING}")
        pytest.skip(MISSING)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_quick_run_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--quick",
        "--scenarios",
        "ceiling,read",
        "--duration",
        "1",
        "--warmup",
        "1",
        "--sessions",
        "300",
        "--quiet-wait",
        "0",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=220, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\[\s*1/6\]", proc.stdout) and re.search(r"\[\s*6/6\]", proc.stdout)  # progress shown

    data = json.loads((out / "bench.json").read_text())
    assert data["kind"] == "bench"
    assert data["config"]["quick"] is True
    assert data["machine"]["nproc"] >= 1
    runs = {(r["scenario"], r["target"], r["variant"]): r for r in data["runs"]}
    assert set(runs) == {
        ("ceiling", "gateway", "default"),
        ("ceiling", "baseline", "default"),
        ("read", "gateway", "default"),
        ("read", "baseline", "default"),
        ("ceiling", "naive", "default"),
        ("read", "naive", "default"),
    }
    for key, r in runs.items():
        assert r["requests"] > 0 and r["rps"] > 0, key
        assert r["errors_total"] == 0, (key, r["errors"], r["statuses"])
        assert set(r["statuses"]) == {"200"}, key
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], key
        assert r["server"]["peak_rss_mb"] > 10, key
        assert r["server"]["cpu_pct"] > 0, key
        assert r["client"]["cpu_pct"] >= 0 and r["client"]["wall_s"] > 0, key
        # stopped by SIGTERM: 0, or -15 where uvicorn re-raises the signal after its graceful shutdown
        assert r["server_exit_code"] in (0, -15), key
        assert r["server_log_error_lines"] == 0, key
        if r["target"] == "gateway":
            assert r["lag"]["samples"] > 0 and r["lag"]["max_since_start_s"] >= 0, key
            assert r["x_baseline"] is not None and r["x_baseline"] > 0, key
            assert r["x_naive"] is not None and r["x_naive"] > 0, key
            # a gateway SQLite run: its -wal file sampled, its db_batch_size window per kind
            assert r["wal_bytes_max"] is not None and r["wal_bytes_max"] >= r["wal_bytes_end"] >= 0, key
            assert set(r["batches"]) == {"write", "read"}, key
        else:
            assert r["lag"] is None
            assert r["batches"] is None and r["wal_bytes_max"] is None, key
    assert runs[("ceiling", "gateway", "default")]["x_ceiling"] == 1.0
    assert runs[("read", "gateway", "default")]["plan_requests"] >= 1
    reads = runs[("read", "gateway", "default")]["batches"]["read"]
    assert reads["batches"] > 0 and reads["calls"] >= reads["batches"] and reads["mean"] >= 1
    targets = {t["id"]: t for t in data["targets"]}
    assert {"read_x_ceiling", "rss", "tail_ratio", "zero_errors", "rag1000_x_naive"} <= set(targets)
    assert targets["read_x_ceiling"]["met"] in (True, False) and targets["rss"]["met"] in (True, False)
    assert targets["rag1000_x_naive"]["met"] is None  # no rag group in this run
    assert {(t["scenario"], t["target"]) for t in data["tails"]} == {(s, t) for s, t, _ in runs}
    assert all(t["p50_ms"] <= t["p99_ms"] <= t["max_ms"] for t in data["tails"])
    assert data["client_check"]["max_wrk_cpu_pct"] is not None

    md = (out / "bench.md").read_text()
    assert "| ceiling | gateway |" in md and "| read | baseline |" in md and "## Targets" in md
    assert "## Tails under saturation" in md
    assert "| read | naive |" in md and "## Gateway vs the naive async port, route by route" in md
    assert [t["scenario"] for t in data["route_by_route"]] == ["ceiling", "read"]
    assert data["config"]["seeds"]["naive"] == {"same_as": "baseline"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "raw").glob("*/*.plan.tsv"))
    # every child (servers, downstream, wrk) is gone
    assert _processes_mentioning(str(out)) == []


def test_quick_scale_run_compares_workers_and_engines(tmp_path: Path) -> None:
    """The scale group on one scenario: SQLite and PostgreSQL (the bench's own cluster), 1 and 2 workers."""
    missing = postgres.unavailable()
    if missing:
        if IN_CI:
            pytest.fail(f"the scale bench test cannot run under CI: {missing}")
        pytest.skip(missing)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--scenarios", "scale", "--scale-scenarios", "read"]
    cmd += ["--duration", "1", "--warmup", "1", "--sessions", "300", "--quiet-wait", "0", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((out / "bench.json").read_text())
    runs = {(r["engine"], r["workers"]): r for r in data["runs"]}
    assert set(runs) == {("sqlite", 1), ("sqlite", 2), ("postgres", 1), ("postgres", 2)}
    for key, r in runs.items():
        assert r["scenario"] == "read" and r["group"] == "scale", key
        assert r["requests"] > 0 and r["errors_total"] == 0 and set(r["statuses"]) == {"200"}, key
        assert r["server_exit_code"] in (0, -15) and r["server_log_error_lines"] == 0, key
        # the supervisor and its workers are sampled together; PostgreSQL with its backends
        assert r["server"]["processes"] == (1 if r["workers"] == 1 else 3), key
        assert r["lag"]["samples"] > 0, key
        assert (r["postgres"] is not None and r["postgres"]["processes"] > 1) == (r["engine"] == "postgres"), key
        assert len(r["server_cores"]) == min(r["workers"], data["machine"]["nproc"]), key
    assert "DATABASE_URL" not in json.dumps(data["runs"]) and "CURSOR_SECRET" not in json.dumps(data["runs"])
    ratios = {r["ratio"]: r["rps"] for r in data["scale"]["ratios"]}
    assert all(v is not None and v > 0 for v in ratios.values()) and len(ratios) == 4
    assert data["scale_info"]["postgres"]["settings"]["fsync"] == "on"
    assert data["config"]["seeds"]["postgres"]["bytes"] > 0

    md = (out / "bench.md").read_text()
    assert "## Scale-out" in md and "| read | postgres | 2 |" in md and "PostgreSQL 2 / PostgreSQL 1" in md
    # every child is gone, the bench's PostgreSQL included
    assert _processes_mentioning(str(out)) == [] and _processes_mentioning("bench-pg-") == []
