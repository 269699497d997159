"""The bench's SQLite figures from small fixtures: the ``wal`` group's runs, the ``db_batch_size`` window from two
/metrics texts, the ``-wal`` size watch on a real file, the better autocheckpoint value, the "SQLite batches and
WAL" section and the WAL-bounded target. Figures are made up; nothing here measures anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_bench_targets import bench_data, by_id, full_runs, run

from bench import report, scenarios, servers, sqlite_stats
from bench.scenarios import GATEWAY

MB = 2**20


def batch_text(write: list[int], read: list[int], *, le_first: bool = False) -> str:
    """Prometheus text of ``db_batch_size`` with cumulative bucket counts as given (1, 2, 4, ... 256, +Inf) and
    count / sum consistent with them (sum: each batch at its bucket's bound, +Inf ones at 300)."""
    bounds = ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "+Inf"]
    lines = ["# HELP db_batch_size Calls per batch", "# TYPE db_batch_size histogram"]
    for kind, cum in (("write", write), ("read", read)):
        total, prev = 0.0, 0
        for bound, c in zip(bounds, cum, strict=True):
            size = 300.0 if bound == "+Inf" else float(bound)
            total += (c - prev) * size
            prev = c
            labels = f'le="{bound}",kind="{kind}"' if le_first else f'kind="{kind}",le="{bound}"'
            lines.append(f"db_batch_size_bucket{{{labels}}} {float(c)}")
        lines += [
            f'db_batch_size_count{{kind="{kind}"}} {float(cum[-1])}',
            f'db_batch_size_sum{{kind="{kind}"}} {total}',
        ]
        lines.append(f'db_batch_size_created{{kind="{kind}"}} 1.7e+09')
    lines.append('event_loop_lag_seconds_distribution_bucket{le="+Inf"} 5.0')
    return "\n".join(lines) + "\n"


def test_default_groups_include_wal_and_its_runs_are_back_to_back() -> None:
    assert "wal" in scenarios.GROUPS
    runs = scenarios.plan_runs(list(scenarios.GROUPS), baseline=True)
    wal = [r for r in runs if r.group == "wal"]
    assert [r.variant for r in wal] == [
        "DB_WAL_AUTOCHECKPOINT=1000",
        "DB_WAL_AUTOCHECKPOINT=4000",
        "DB_WAL_AUTOCHECKPOINT=8000",
    ]
    assert all(r.scenario.name == "write" and r.target == GATEWAY and r.engine == scenarios.SQLITE for r in wal)
    assert [dict(r.env) for r in wal] == [{"DB_WAL_AUTOCHECKPOINT": str(p)} for p in (1000, 4000, 8000)]
    first = runs.index(wal[0])
    assert runs[first : first + 3] == wal  # neighbouring runs
    # the default write run stays as it was, and the group alone plans only its three runs
    assert ("write", GATEWAY, "default") in [r.key for r in runs]
    assert [r.variant for r in scenarios.plan_runs(["wal"], baseline=True)] == [r.variant for r in wal]


def test_batch_window_counts_calls_and_sizes_over_the_window() -> None:
    before = servers.parse_metrics(batch_text([5] * 10, [2] * 10))
    # during the window: 100 write batches (50 of size 1, 40 in (4, 8], 10 in (16, 32]), 10 reads of size 1
    write = [55, 55, 55, 95, 95, 105, 105, 105, 105, 105]
    after = servers.parse_metrics(batch_text(write, [12] * 10))
    window = sqlite_stats.batch_window(before, after)
    w = window["write"]
    assert (w["batches"], w["calls"]) == (100, 50 * 1 + 40 * 8 + 10 * 32)
    assert w["mean"] == round(690 / 100, 2)
    assert w["p50"] == 1.0  # rank 50 is the last of the size-1 batches
    assert 17 <= w["p99"] <= 32 and w["max_le"] == 32.0
    r = window["read"]
    assert (r["batches"], r["calls"], r["mean"], r["p50"], r["p99"], r["max_le"]) == (10, 10, 1.0, 1.0, 1.0, 1.0)


def test_batch_window_labels_in_any_order_and_above_the_top_bucket() -> None:
    before = servers.parse_metrics(batch_text([0] * 10, [0] * 10, le_first=True))
    after = servers.parse_metrics(batch_text([0, 0, 0, 0, 0, 0, 0, 0, 90, 100], [0] * 10, le_first=True))
    w = sqlite_stats.batch_window(before, after)["write"]
    assert w["batches"] == 100 and w["p50"] is not None and 129 <= w["p50"] <= 256
    assert w["p99"] == 256.0 and w["max_le"] is None  # in the +Inf bucket: at least the top bound
    idle = sqlite_stats.batch_window(before, before)["read"]
    assert idle == {"batches": 0, "calls": 0, "mean": None, "p50": None, "p99": None, "max_le": None}
    # a scrape without the histogram (metrics switched off): zero batches, not an error
    assert sqlite_stats.batch_window({}, {})["write"]["batches"] == 0


def test_quantile_places_ranks_among_the_integer_sizes_of_a_bucket() -> None:
    cum = [(1.0, 0.0), (2.0, 0.0), (4.0, 0.0), (8.0, 4.0), (float("inf"), 4.0)]  # four batches of 5..8; 5.75, to 0.1
    assert sqlite_stats.quantile(cum, 0.25) == 5.8 and sqlite_stats.quantile(cum, 1.0) == 8.0
    assert sqlite_stats.quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_wal_watch_keeps_the_largest_size_and_the_last(tmp_path: Path) -> None:
    wal = tmp_path / "gateway.db-wal"  # absent at first, as before SQLite's first write
    with sqlite_stats.WalWatch(wal, interval=0.01) as watch:
        wal.write_bytes(b"\0" * 300_000)
        for _ in range(500):  # bounded: until the thread has sampled the grown file
            if (watch.max_bytes or 0) >= 300_000:
                break
            watch._stop.wait(0.01)
        wal.write_bytes(b"\0" * 1000)  # cut back, as after a checkpoint with journal_size_limit
    assert watch.record() == {"wal_bytes_max": 300_000, "wal_bytes_end": 1000}
    with sqlite_stats.WalWatch(None) as none:
        pass
    assert none.record() == {"wal_bytes_max": None, "wal_bytes_end": None}


def wal_run(pages: int, rps: float, p99: float, wal_mb: float, errors: int = 0) -> dict[str, Any]:
    r = run("write", GATEWAY, rps, p50=10.0, p99=p99, errors=errors, group="wal", variant=scenarios.wal_variant(pages))
    r["env"] = {"DB_WAL_AUTOCHECKPOINT": str(pages)}
    r["wal_bytes_max"], r["wal_bytes_end"] = int(wal_mb * MB), int(wal_mb * MB / 4)
    return r


def test_better_autocheckpoint_takes_the_fastest_value_within_the_bounds() -> None:
    runs = [wal_run(1000, 1000, 20.0, 4.0), wal_run(4000, 1100, 23.0, 16.0), wal_run(8000, 1200, 30.0, 32.0)]
    rows = report.wal_rows(runs)
    assert [(t["pages"], t["rps_vs_default"]) for t in rows] == [(1000, 1.0), (4000, 1.1), (8000, 1.2)]
    better = report.better_autocheckpoint(rows)
    assert better["pages"] == 4000  # 8000 is faster still, but its p99 is 1.5 x the default's
    assert "8000: p99 30.0 ms" in better["why"]
    # a WAL over the journal size limit plus one checkpoint's pages is out, however fast
    over = 64 + 8000 * 4096 / MB + 1
    rows = report.wal_rows([wal_run(1000, 1000, 20.0, 4.0), wal_run(8000, 1500, 20.0, over)])
    assert report.better_autocheckpoint(rows)["pages"] == 1000
    # more errors than the default is out; no default run: nothing to compare with
    rows = report.wal_rows([wal_run(1000, 1000, 20.0, 4.0), wal_run(4000, 1500, 20.0, 4.0, errors=3)])
    assert report.better_autocheckpoint(rows)["pages"] == 1000
    assert report.better_autocheckpoint(report.wal_rows([wal_run(4000, 1, 1.0, 1.0)]))["pages"] is None


def sqlite_runs() -> list[dict[str, Any]]:
    runs = full_runs()
    for r in runs:
        if r["target"] == GATEWAY:
            r["wal_bytes_max"], r["wal_bytes_end"] = 2 * MB, MB
            r["batches"] = {
                "write": {"batches": 100, "calls": 690, "mean": 6.9, "p50": 1.0, "p99": 31.8, "max_le": 32.0},
                "read": {"batches": 10, "calls": 10, "mean": 1.0, "p50": 1.0, "p99": 1.0, "max_le": 1.0},
            }
    wal = [wal_run(1000, 1000, 20.0, 4.0), wal_run(4000, 1100, 21.0, 16.0), wal_run(8000, 900, 20.0, 8.0)]
    wal[1]["batches"] = {"write": {"batches": 10, "calls": 125, "mean": 12.5}}
    return runs + wal


def test_markdown_has_the_sqlite_section() -> None:
    data = report.summarize(bench_data(sqlite_runs()))
    assert data["sqlite"]["wal_better"]["pages"] == 4000
    md = report.bench_markdown(data)
    section = md[md.index("## SQLite batches and WAL") : md.index("## Tails under saturation")]
    assert "| write | write | 3,000 | 100 | 690 | 6.9 | 1 | 31.8 | 32 |" in section
    assert "| mixed | read | 2,000 | 10 | 10 | 1 | 1 | 1 | 1 |" in section
    assert "| ceiling |" not in section and "| list |" not in section  # no database batches to show
    assert "| rag_c1000 | write |" in section and "httpx" not in section  # default configuration only
    assert "| 1000 | 1,000 | 10.0 | 20.0 | 0 | 4.0 | 1.0 | 1.00 | 1.00 | n/a |" in section
    assert "| 4000 | 1,100 | 10.0 | 21.0 | 0 | 16.0 | 4.0 | 1.10 | 1.05 | 12.5 |" in section
    assert "better: 4000 pages (4000 pages: 1.10 x the default's req/s)" in section
    # results from before the batches and the WAL were recorded: no section, no failure
    assert "## SQLite batches and WAL" not in report.bench_markdown(report.summarize(bench_data(full_runs())))


def test_wal_bounded_target_after_the_issue_targets() -> None:
    t = report.summarize({"runs": sqlite_runs()})["targets"]
    assert [x["id"] for x in t].index("wal_bounded") == 8
    wal = by_id({"targets": t})["wal_bounded"]
    assert (wal["met"], wal["measured"], wal["value"]) == (True, 16.0, "16.0 MB")
    assert "in write/gateway [DB_WAL_AUTOCHECKPOINT=4000]" in wal["note"]
    runs = sqlite_runs()
    runs[-1]["wal_bytes_max"] = 200 * MB
    wal = by_id(report.summarize({"runs": runs}))["wal_bounded"]
    assert wal["met"] is False and wal["measured"] == 200.0
    assert wal["note"].endswith("over: write/gateway [DB_WAL_AUTOCHECKPOINT=8000]") and wal["reason"]
    unmeasured = by_id(report.summarize({"runs": full_runs()}))["wal_bounded"]
    assert unmeasured["met"] is None and "recorded its WAL size" in unmeasured["note"]


@pytest.mark.parametrize("pages", [1000, 4000, 8000])
def test_wal_bound_is_the_journal_limit_plus_one_checkpoint(pages: int) -> None:
    row = report.wal_rows([wal_run(pages, 1, 1.0, 1.0)])[0]
    assert report.wal_bound_bytes(row) == 64 * MB + pages * 4096
