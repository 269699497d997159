"""The bench's targets and tails from small run dicts: met / missed / not measured for each target, the reasons
mapping, the Markdown sections, and the README block regenerated from bench.json. Figures are made up; nothing
here measures anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import readme, report, targets
from bench.scenarios import BASELINE, GATEWAY, NAIVE


def run(
    scenario: str,
    target: str,
    rps: float,
    *,
    p50: float = 10.0,
    p99: float = 20.0,
    errors: int = 0,
    rss: float = 80.0,
    variant: str = "default",
    group: str | None = None,
    paced: bool = False,
    connections: int = 64,
) -> dict[str, Any]:
    paced_fields = {"pace_ms": 10, "target_rps": rps} if paced else {}
    return paced_fields | {
        "scenario": scenario,
        "target": target,
        "variant": variant,
        "group": group or scenario.split("_")[0],
        "paced": paced,
        "connections": connections,
        "env": {},
        "rps": rps,
        "latency_ms": {"p50": p50, "p95": p99 * 0.9, "p99": p99, "max": p99 * 2},
        "errors_total": errors,
        "errors": {"connect": 0, "read": 0, "write": 0, "status": errors, "timeout": 0},
        "statuses": {"200": 1000} | ({"503": errors} if errors else {}),
        "lag": {"p99_le_s": 0.002, "max_s": 0.01, "max_exact": True} if target == GATEWAY else None,
        "server": {"peak_rss_mb": rss, "cpu_pct": 99.0, "runqueue_wait_pct": 0.0},
        "client": {"cpu_pct": 20.0, "runqueue_wait_pct": 0.0},
    }


def full_runs() -> list[dict[str, Any]]:
    """Every target measured: read and rag@1000 against the baseline met, write and rag against the naive port
    missed, mixed's tail over 3 x p50, one baseline run with errors."""
    return [
        run("ceiling", GATEWAY, 10000, p50=2.0, p99=3.0),
        run("read", GATEWAY, 8000, p50=5.0, p99=7.0),
        run("read", BASELINE, 2000),
        run("write", GATEWAY, 3000, p50=14.0, p99=30.0),
        run("write", BASELINE, 500, errors=7),
        run("rag_c1000", GATEWAY, 1200, p50=300.0, p99=350.0, connections=1000),
        run("rag_c1000", BASELINE, 200, p50=2900.0, p99=3200.0, connections=1000),
        run("rag_c1000", NAIVE, 1000, p50=900.0, p99=4000.0, connections=1000),
        run("mixed", GATEWAY, 2000, p50=10.0, p99=40.0, connections=200),
        run("mixed", BASELINE, 250, p50=600.0, p99=2400.0, connections=200),
        run("list", GATEWAY, 1300, p50=40.0, p99=45.0),
        # not the default configuration: outside the tails target, still counted for errors and RSS
        run("rag_c1000", GATEWAY, 300, p50=100.0, p99=9000.0, variant="httpx", group="transport", connections=1000),
        run("read", GATEWAY, 4000, variant="~50% load", group="lag", paced=True),
    ]


def by_id(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in data["targets"]}


def test_each_issue_target_is_met_or_missed_with_its_measured_value() -> None:
    t = by_id(report.summarize({"runs": full_runs()}))
    assert (t["read_x_ceiling"]["met"], t["read_x_ceiling"]["measured"]) == (True, 0.8)
    assert (t["write_x_ceiling"]["met"], t["write_x_ceiling"]["measured"]) == (False, 0.3)
    assert (t["rag1000_x_baseline"]["met"], t["rag1000_x_baseline"]["measured"]) == (True, 6.0)
    assert (t["rag1000_x_naive"]["met"], t["rag1000_x_naive"]["measured"]) == (False, 1.2)
    assert (t["rag1000_p99"]["met"], t["rag1000_p99"]["measured"]) == (True, 350.0)
    assert (t["rss"]["met"], t["rss"]["measured"]) == (True, 80.0)
    assert t["read_x_baseline"]["met"] is True and t["write_x_baseline"]["met"] is True
    assert t["list_p99"]["met"] is True
    # the issue's targets come first, in its order
    assert [x["id"] for x in report.summarize({"runs": full_runs()})["targets"][:8]] == [
        "read_x_ceiling",
        "write_x_ceiling",
        "rag1000_x_baseline",
        "rag1000_x_naive",
        "rag1000_p99",
        "tail_ratio",
        "zero_errors",
        "rss",
    ]


def test_tail_ratio_target_lists_every_saturated_gateway_scenario_and_the_misses() -> None:
    tail = by_id(report.summarize({"runs": full_runs()}))["tail_ratio"]
    assert tail["met"] is False and tail["measured"] == 4.0
    assert tail["value"] == "worst 4.00 x (mixed)"
    for scenario in ("ceiling", "read", "write", "rag_c1000", "mixed", "list"):
        assert f"{scenario} " in tail["note"]
    assert "mixed 10.0/40.0 ms = 4.00 x" in tail["note"] and tail["note"].endswith("over: mixed")
    # the transport experiment's 90 x and the peers' tails are not the gateway's default configuration
    assert "90" not in tail["note"] and "4000" not in tail["note"]


def test_tail_ratio_at_the_bound_is_met() -> None:
    runs = [run("read", GATEWAY, 100, p50=10.0, p99=30.0), run("write", GATEWAY, 100, p50=10.0, p99=29.0)]
    tail = by_id(report.summarize({"runs": runs}))["tail_ratio"]
    assert tail["met"] is True and tail["measured"] == 3.0 and "over" not in tail["note"]


def test_errors_in_any_gateway_run_miss_the_target_and_are_named() -> None:
    runs = full_runs()
    runs[-2]["errors_total"] = 3  # the transport experiment: named, not counted
    runs[-2]["errors"]["timeout"] = 3
    errors = by_id(report.summarize({"runs": runs}))["zero_errors"]
    assert errors["met"] is True and errors["measured"] == 0  # the only other errors are the baseline's
    assert "not counted (transport experiments, peers): " in errors["note"]
    assert (
        "write/baseline 7 (7 x 503)" in errors["note"] and "rag_c1000/gateway [httpx] 3 (3 timeout)" in errors["note"]
    )
    gateway_runs = sum(1 for r in runs if r["target"] == GATEWAY and r["group"] != "transport")
    runs[0]["errors_total"] = 2
    runs[0]["errors"]["timeout"] = 2
    errors = by_id(report.summarize({"runs": runs}))["zero_errors"]
    assert errors["met"] is False and errors["measured"] == 2
    assert errors["value"] == f"2 in 1 of {gateway_runs} gateway runs"
    assert errors["note"].startswith(f"errors in: {runs[0]['scenario']}/gateway 2 (2 timeout)")
    clean = by_id(report.summarize({"runs": [run("read", GATEWAY, 100)]}))["zero_errors"]
    assert clean["met"] is True and clean["measured"] == 0 and clean["reason"] is None


def test_missing_naive_and_baseline_runs_are_not_measured_and_say_why() -> None:
    runs = [r for r in full_runs() if r["target"] == GATEWAY]
    t = by_id(report.summarize({"runs": runs}))
    for tid, peer in (
        ("rag1000_x_naive", "naive"),
        ("rag1000_x_baseline", "baseline"),
        ("read_x_baseline", "baseline"),
    ):
        assert t[tid]["met"] is None and t[tid]["measured"] is None and t[tid]["value"] == "n/a", tid
        assert t[tid]["note"].startswith("not measured in this run") and peer in t[tid]["note"], tid
        assert t[tid]["reason"] is None, tid
    assert t["read_x_ceiling"]["met"] is True  # the ceiling is the gateway's own


def test_no_runs_of_a_scenario_leaves_every_issue_target_listed() -> None:
    t = by_id(report.summarize({"runs": [run("write", BASELINE, 100)]}))
    for tid in ("read_x_ceiling", "write_x_ceiling", "rag1000_x_baseline", "rag1000_x_naive", "rag1000_p99"):
        assert t[tid]["met"] is None and "not measured in this run" in t[tid]["note"], tid
    assert t["tail_ratio"]["met"] is None and t["rss"]["met"] is None
    assert t["zero_errors"]["met"] is None  # no gateway run to judge


def test_rss_over_200_mb_is_missed_but_a_two_process_server_is_not_held_to_it() -> None:
    runs = [run("read", GATEWAY, 100, rss=250.0, variant="sqlite WORKERS=2", group="scale")]
    assert by_id(report.summarize({"runs": runs}))["rss"]["met"] is None
    runs.append(run("read", GATEWAY, 100, rss=210.0))
    rss = by_id(report.summarize({"runs": runs}))["rss"]
    assert rss["met"] is False and rss["measured"] == 210.0 and rss["note"] == "in read/gateway"


def test_reason_comes_from_the_mapping_only_when_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "REASONS", {"write_x_ceiling": "one writer", "read_x_ceiling": "never shown"})
    t = by_id(report.summarize({"runs": full_runs()}))
    assert t["write_x_ceiling"]["reason"] == "one writer"
    assert t["read_x_ceiling"]["reason"] is None  # met
    assert t["rag1000_x_naive"]["reason"] == targets.NOT_ANALYSED  # missed, nothing recorded


def test_x_naive_is_the_gateway_over_the_naive_port_of_the_same_scenario() -> None:
    data = report.summarize({"runs": full_runs()})
    rag = {(r["target"], r["variant"]): r for r in data["runs"] if r["scenario"] == "rag_c1000"}
    assert rag[(GATEWAY, "default")]["x_naive"] == 1.2 and rag[(GATEWAY, "httpx")]["x_naive"] == 0.3
    assert rag[(NAIVE, "default")]["x_naive"] is None and rag[(BASELINE, "default")]["x_naive"] is None


def test_tails_rows_per_scenario_and_server() -> None:
    rows = report.summarize({"runs": full_runs()})["tails"]
    keys = [(t["scenario"], t["target"]) for t in rows]
    assert keys[:2] == [("ceiling", GATEWAY), ("read", GATEWAY)]
    assert [k for k in keys if k[0] == "rag_c1000"] == [
        ("rag_c1000", GATEWAY),
        ("rag_c1000", NAIVE),
        ("rag_c1000", BASELINE),
    ]
    assert len(keys) == len(set(keys))  # variants and paced runs are not in it
    naive = rows[keys.index(("rag_c1000", NAIVE))]
    assert (naive["p50_ms"], naive["p99_ms"], naive["max_ms"], naive["p99_over_p50"]) == (900.0, 4000.0, 8000.0, 4.44)


def bench_data(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "bench",
        "machine": {"nproc": 2, "cpu_model": "x", "memory_gib": 1, "kernel": "k", "python": "3", "wrk": "w"},
        "pinning": {"description": "d"},
        "code": {"commit": "0123456789abcdef", "service_sha256": "s", "local_changes": []},
        "command": "c",
        "created": "2030-01-01T00:00:00+00:00",
        "elapsed_s": 1.0,
        "config": {"sessions_seeded": 1, "warmup_s": 1, "duration_s": 1, "wrk_timeout_s": 1, "loop_lag_interval_s": 1},
        "runs": runs,
    }


def test_markdown_has_the_tails_section_and_the_targets_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "REASONS", {"write_x_ceiling": "one writer"})
    md = report.bench_markdown(report.summarize(bench_data(full_runs())))
    tails = md[md.index("## Tails under saturation") : md.index("## Targets")]
    assert "| mixed | gateway | 200 | 10.0 | 40.0 | 80.0 | **4.00** | 0 (0) |" in tails
    assert "| read | gateway | 64 | 5.0 | 7.0 | 14.0 | 1.40 | 0 (0) |" in tails
    assert "| rag_c1000 | naive | 1000 | 900 | 4,000 | 8,000 | **4.44** | 0 (0) |" in tails
    assert "| write | baseline | 64 | 10.0 | 20.0 | 40.0 | 2.00 | 7 (0) |" in tails
    assert "| write >= 0.35 x ceiling | 0.30 x | >= 0.35 x | **no** | one writer |" in md
    assert "| read >= 0.75 x ceiling | 0.80 x | >= 0.75 x | yes |  |" in md
    no_naive = report.bench_markdown(report.summarize(bench_data([r for r in full_runs() if r["target"] != NAIVE])))
    assert "| rag@1000 >= 2 x naive async port | n/a (not measured in this run: no naive rag_c1000 run" in no_naive


def test_readme_block_is_regenerated_from_bench_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "REASONS", {})
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench.json").write_text(json.dumps(bench_data(full_runs())))
    page = tmp_path / "README.md"
    page.write_text(f"# x\n\nbefore\n\n{readme.BEGIN}\nstale table\n{readme.END}\n\nafter\n")
    written = readme.regenerate(results, page)
    assert page in written and results / "bench.md" in written
    text = page.read_text()
    assert text.startswith("# x\n\nbefore\n\n" + readme.BEGIN) and text.endswith(readme.END + "\n\nafter\n")
    assert "stale table" not in text
    assert "commit 0123456789): 12 met, 3 missed, 1 not measured in that run" in text  # wal_bounded: no WAL sizes
    assert "| write >= 0.35 x ceiling | 0.30 x | >= 0.35 x | **no** | " + targets.NOT_ANALYSED + " |" in text
    # the README's table is bench.md's table, from the same data
    data = json.loads((results / "bench.json").read_text())
    assert (
        report.targets_table(data["targets"]) in text
        and report.targets_table(data["targets"]) in (results / "bench.md").read_text()
    )
    readme.regenerate(results, page)
    assert page.read_text() == text  # idempotent


def test_readme_tables_are_regenerated_where_their_markers_are(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench.json").write_text(json.dumps(bench_data(full_runs())))
    page = tmp_path / "README.md"
    main = (readme.marker("bench-results", "begin"), readme.marker("bench-results", "end"))
    lone = readme.marker("bench-naive", "begin")
    page.write_text(f"{readme.BEGIN}\n{readme.END}\n\n{main[0]}\nold\n{main[1]}\n\n{lone}\n")
    readme.regenerate(results, page)
    text = page.read_text()
    table = text[text.index(main[0]) + len(main[0]) : text.index(main[1])]
    assert "old" not in table and "| read `GET /sessions/{id}` | 64 |" in table
    assert "server CPU ms per request" in table
    # a begin marker without its end is left as it is
    assert text.endswith(lone + "\n")


def test_readme_without_markers_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "bench.json").write_text(json.dumps(bench_data(full_runs())))
    page = tmp_path / "README.md"
    page.write_text("# no markers\n")
    with pytest.raises(ValueError, match="bench-targets:begin"):
        readme.regenerate(results, page)
    assert sorted(p.name for p in results.iterdir()) == ["bench.json"]
    with pytest.raises(ValueError):
        readme.replace_block(f"{readme.END}\n{readme.BEGIN}\n", "x")
