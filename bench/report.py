"""Ratios, target checks, and the JSON / Markdown / PNG outputs of the bench and the soak."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.scenarios import BASELINE, GATEWAY, NAIVE, POSTGRES, SCALE_CONFIGS, SQLITE, WAL_DEFAULT_PAGES, scale_variant
from bench.targets import TAIL_RATIO_MAX, evaluate, saturated_gateway_runs, tail_ratio

MAIN_SCENARIOS = ("ceiling", "read", "write", "list", "rag_c100", "rag_c500", "rag_c1000", "mixed")
CLIENT_BUSY_PCT = 80.0


def _find(
    runs: Iterable[dict[str, Any]], scenario: str, target: str, variant: str = "default"
) -> dict[str, Any] | None:
    for r in runs:
        if r["scenario"] == scenario and r["target"] == target and r["variant"] == variant:
            return r
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Add ratios to every run and evaluate the issue's targets (numbers only: these are not tests)."""
    runs: list[dict[str, Any]] = data["runs"]
    ceiling = _find(runs, "ceiling", GATEWAY)
    ceiling_rps = ceiling["rps"] if ceiling else None
    for r in runs:
        base = _find(runs, r["scenario"], BASELINE)
        naive = _find(runs, r["scenario"], NAIVE)
        r["x_ceiling"] = _ratio(r.get("rps"), ceiling_rps)
        r["x_baseline"] = _ratio(r.get("rps"), base["rps"]) if r["target"] == GATEWAY and base else None
        r["x_naive"] = _ratio(r.get("rps"), naive["rps"]) if r["target"] == GATEWAY and naive else None
        client = r.get("client", {})
        # busy = running or runnable-but-waiting: either way the client could not have sent faster
        r["client_busy"] = client.get("cpu_pct", 0.0) + client.get("runqueue_wait_pct", 0.0) >= CLIENT_BUSY_PCT
    data["targets"] = evaluate(runs)
    data["tails"] = tails(runs)
    data["overhead"] = overhead(runs)
    data["transports"] = transports(runs)
    data["scale"] = scale(runs)
    data["route_by_route"] = route_by_route(runs)
    wal = wal_rows(runs)
    better = better_autocheckpoint(wal) if wal else None
    data["sqlite"] = {"batches": batch_rows(runs), "wal": wal, "wal_better": better}
    clients = [r["client"]["cpu_pct"] for r in runs if "client" in r]
    data["client_check"] = {
        "max_wrk_cpu_pct": max(clients) if clients else None,
        "runs_with_busy_client": [f"{r['scenario']}/{r['target']}/{r['variant']}" for r in runs if r["client_busy"]],
        "max_wrk_busy_pct": max(
            (r["client"]["cpu_pct"] + r["client"].get("runqueue_wait_pct", 0.0) for r in runs if "client" in r),
            default=None,
        ),
        "rule": f"wrk's CPU (running + waiting for a CPU) below {CLIENT_BUSY_PCT:.0f}% of its core means the server, "
        "not the client, was the limit",
    }
    return data


# peers in the tails table, after the gateway
PEERS = (GATEWAY, NAIVE, BASELINE)


def tails(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Latency tails of every saturated closed-loop run, per scenario and server (gateway, naive port, baseline):
    wrk's p50, p99 and max of the responses that completed (its timeouts are errors, outside the distribution)."""
    gateway = {id(r) for r in saturated_gateway_runs(runs)}
    picked = [
        r
        for r in runs
        if id(r) in gateway or (r["target"] in PEERS[1:] and r["variant"] == "default" and not r.get("paced"))
    ]
    order = {name: i for i, name in enumerate(dict.fromkeys(r["scenario"] for r in runs))}
    picked.sort(key=lambda r: (order[r["scenario"]], PEERS.index(r["target"])))
    return [
        {
            "scenario": r["scenario"],
            "target": r["target"],
            "connections": r.get("connections"),
            "p50_ms": r["latency_ms"]["p50"],
            "p99_ms": r["latency_ms"]["p99"],
            "max_ms": r["latency_ms"]["max"],
            "p99_over_p50": tail_ratio(r),
            "errors": r["errors_total"],
            "timeouts": r.get("errors", {}).get("timeout", 0),
        }
        for r in picked
    ]


def overhead(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput cost of the defaults against a variant with something switched off:
    cost = 1 - req/s(defaults) / req/s(variant)."""
    out = []
    for name in ("ceiling", "read"):
        on = _find(runs, name, GATEWAY)
        for variant in ("metrics+access log off", "access log off", "metrics off"):
            off = _find(runs, name, GATEWAY, variant)
            if on and off:
                cost = 1 - on["rps"] / off["rps"] if off["rps"] else None
                out.append(
                    {
                        "scenario": name,
                        "switched_off": variant.removesuffix(" off"),
                        "rps_defaults": on["rps"],
                        "rps_off": off["rps"],
                        "p99_defaults_ms": on["latency_ms"]["p99"],
                        "p99_off_ms": off["latency_ms"]["p99"],
                        "throughput_cost_pct": None if cost is None else round(100 * cost, 1),
                    }
                )
    return out


def naive_ratio_bound(runs: Iterable[dict[str, Any]], scenario: str) -> tuple[float, bool] | None:
    """``(gateway req/s / the naive port's req/s, exact)`` in one scenario of this run (default variants).

    When the naive port completed no request in its measured window (all still queued, or past wrk's timeout),
    the ratio is only bounded from below: it did fewer than one request in the window, so the ratio is above
    gateway req/s x the window's seconds, and ``exact`` is False. None where either run is missing or the
    gateway completed nothing. For targets such as "rag@1000 >= 2 x the naive async port"."""
    runs = list(runs)
    gw, naive = _find(runs, scenario, GATEWAY), _find(runs, scenario, NAIVE)
    if not gw or not naive or not gw.get("rps"):
        return None
    if naive.get("rps"):
        return round(gw["rps"] / naive["rps"], 3), True
    window_s = naive.get("duration_s") or 0.0
    return (round(gw["rps"] * window_s, 1), False) if window_s else None


def naive_ratio(runs: Iterable[dict[str, Any]], scenario: str) -> float | None:
    """Gateway req/s / the naive port's req/s in one scenario of this run; None where either run is missing or
    the ratio is only a lower bound (the naive port completed nothing: see ``naive_ratio_bound``)."""
    found = naive_ratio_bound(runs, scenario)
    return found[0] if found and found[1] else None


def route_by_route(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario with a naive-port run: the three servers' req/s, p50 / p99 and errors, and the ratios."""
    names = [n for n in MAIN_SCENARIOS if _find(runs, n, NAIVE)]
    names += [n for n in dict.fromkeys(r["scenario"] for r in runs if r["target"] == NAIVE) if n not in names]
    out = []
    for name in names:
        found = {t: _find(runs, name, t) for t in (GATEWAY, NAIVE, BASELINE)}
        connections = next(r["connections"] for r in found.values() if r)
        row: dict[str, Any] = {"scenario": name, "connections": connections}
        for target, r in found.items():
            row[f"{target}_rps"] = r["rps"] if r else None
            row[f"{target}_requests"] = r.get("requests") if r else None
            row[f"{target}_p50_ms"] = r["latency_ms"]["p50"] if r else None
            row[f"{target}_p99_ms"] = r["latency_ms"]["p99"] if r else None
            row[f"{target}_errors"] = r["errors_total"] if r else None
            row[f"{target}_cpu_pct"] = r["server"]["cpu_pct"] if r else None
        bound = naive_ratio_bound(runs, name)
        row["x_naive"], row["x_naive_exact"] = bound if bound else (None, True)  # not exact: a lower bound
        row["x_baseline"] = _ratio(row["gateway_rps"], row["baseline_rps"])
        row["naive_x_baseline"] = _ratio(row["naive_rps"], row["baseline_rps"])
        out.append(row)
    return out


# (label, numerator, denominator) of the scale-out ratios, as (engine, WORKERS)
SCALE_RATIOS: tuple[tuple[str, tuple[str, int], tuple[str, int]], ...] = (
    ("WORKERS=2 / WORKERS=1 (SQLite)", (SQLITE, 2), (SQLITE, 1)),
    ("PostgreSQL 1 / SQLite 1", (POSTGRES, 1), (SQLITE, 1)),
    ("PostgreSQL 2 / PostgreSQL 1", (POSTGRES, 2), (POSTGRES, 1)),
    ("PostgreSQL 2 / SQLite 1", (POSTGRES, 2), (SQLITE, 1)),
)


def scale(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The scale-out group: one row per (scenario, engine, WORKERS) and, per scenario, the req/s and p99 ratios
    between configurations measured in this run (None where one side is missing, e.g. PostgreSQL skipped)."""
    rows: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["scenario"] for r in runs if r["group"] == "scale"):
        found: dict[tuple[str, int], dict[str, Any]] = {}
        for engine, workers in SCALE_CONFIGS:
            r = _find(runs, name, GATEWAY, scale_variant(engine, workers))
            if r is None:
                continue
            found[(engine, workers)] = r
            pg = r.get("postgres") or {}
            rows.append(
                {
                    "scenario": name,
                    "engine": engine,
                    "workers": workers,
                    "connections": r["connections"],
                    "server_cores": r.get("server_cores", []),
                    "shares_client_core": r.get("server_shares_client_core", False),
                    "rps": r["rps"],
                    "p50_ms": r["latency_ms"]["p50"],
                    "p99_ms": r["latency_ms"]["p99"],
                    "errors": r["errors_total"],
                    "server_cpu_pct": r["server"]["cpu_pct"],
                    "server_runqueue_wait_pct": r["server"].get("runqueue_wait_pct"),
                    "postgres_cpu_pct": pg.get("cpu_pct"),
                    "wrk_cpu_pct": r["client"]["cpu_pct"],
                    "wrk_runqueue_wait_pct": r["client"].get("runqueue_wait_pct"),
                    "other_cpu_pct": r.get("other_cpu_pct"),
                }
            )
        if not found:
            continue
        for label, num, den in SCALE_RATIOS:
            a, b = found.get(num), found.get(den)
            ratios.append(
                {
                    "scenario": name,
                    "ratio": label,
                    "rps": _ratio(a["rps"], b["rps"]) if a and b else None,
                    "p99": _ratio(a["latency_ms"]["p99"], b["latency_ms"]["p99"]) if a and b else None,
                }
            )
    return {"rows": rows, "ratios": ratios}


def transports(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        if (
            r["target"] == GATEWAY
            and r["scenario"].startswith("rag_c")
            and (r["group"] == "transport" or r["variant"] == "default")
        ):
            env = r["env"]
            out.append(
                {
                    "connections": r["connections"],
                    "variant": r["variant"] if r["variant"] != "default" else "default: native conn=200",
                    "transport": env.get("HTTP_TRANSPORT", "native"),
                    "max_connections": int(env.get("HTTP_MAX_CONNECTIONS", 200)),
                    "max_keepalive": int(env.get("HTTP_MAX_KEEPALIVE", 100)),
                    "rps": r["rps"],
                    "p50_ms": r["latency_ms"]["p50"],
                    "p99_ms": r["latency_ms"]["p99"],
                    "errors": r["errors_total"],
                    "server_cpu_pct": r["server"]["cpu_pct"],
                    "x_baseline": r.get("x_baseline"),
                }
            )
    return sorted(out, key=lambda t: (t["connections"], t["variant"] != "default: native conn=200", t["variant"]))


# --------------------------------------------------------------------------------------------- Markdown


def _ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _lag(r: dict[str, Any]) -> tuple[str, str]:
    lag = r.get("lag")
    if not lag:
        return "-", "-"
    p99 = lag.get("p99_le_s")
    mx = lag.get("max_s")
    p99_s = "n/a" if p99 is None else f"<={p99 * 1000:g}"
    mx_s = "n/a" if mx is None else (f"{mx * 1000:.1f}" if lag.get("max_exact") else f"<={mx * 1000:g}")
    return p99_s, mx_s


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _x(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def results_table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | server | conns | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | loop lag p99 ms "
        "| loop lag max ms | peak RSS MB | x ceiling | gw / baseline | gw / naive | server CPU % "
        "| server waited for CPU % | wrk CPU % | wrk waited for CPU % |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    rows = []
    for r in runs:
        if (r["group"] == "transport" and r["variant"] != "default") or r.get("paced") or r["group"] == "scale":
            continue
        lat = r["latency_ms"]
        p99, mx = _lag(r)
        server = r["target"] + ("" if r["variant"] == "default" else f" ({r['variant']})")
        rows.append(
            f"| {r['scenario']} | {server} | {r['connections']} | {r['rps']:,.0f} | {_ms(lat['p50'])} | "
            f"{_ms(lat['p95'])} | {_ms(lat['p99'])} | {_ms(lat['max'])} | {r['errors_total']} | {p99} | {mx} | "
            f"{r['server']['peak_rss_mb']:.0f} | {_x(r.get('x_ceiling'))} | {_x(r.get('x_baseline'))} | "
            f"{_x(r.get('x_naive'))} | "
            f"{r['server']['cpu_pct']:.0f} | {_pct(r['server'].get('runqueue_wait_pct'))} | "
            f"{r['client']['cpu_pct']:.0f} | {_pct(r['client'].get('runqueue_wait_pct'))} |"
        )
    return head + "\n".join(rows) + "\n" if rows else ""


def targets_table(targets: list[dict[str, Any]]) -> str:
    """One row per target: measured (with its note), goal, met (yes / **no** / n/a: not measured) and, for a
    missed target, the reason found."""
    rows = ["| target | measured | goal | met | reason (missed) |", "|---|---|---|---|---|"]
    for t in targets:
        met = "yes" if t["met"] else ("n/a" if t["met"] is None else "**no**")
        note = f" ({t['note']})" if t["note"] else ""
        rows.append(f"| {t['target']} | {t['value']}{note} | {t['goal']} | {met} | {t.get('reason') or ''} |")
    return "\n".join(rows) + "\n"


def tails_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | server | conns | p50 ms | p99 ms | max ms | p99 / p50 | errors (timeouts) |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = []
    for t in rows:
        ratio = t["p99_over_p50"]
        ratio_s = "n/a" if ratio is None else f"{ratio:.2f}"
        if ratio is not None and ratio > TAIL_RATIO_MAX:
            ratio_s = f"**{ratio_s}**"
        lines.append(
            f"| {t['scenario']} | {t['target']} | {t['connections']} | {_ms(t['p50_ms'])} | {_ms(t['p99_ms'])} | "
            f"{_ms(t['max_ms'])} | {ratio_s} | {t['errors']} ({t['timeouts']}) |"
        )
    return head + "\n".join(lines) + "\n"


def lag_table(runs: list[dict[str, Any]]) -> str:
    paced = [r for r in runs if r.get("paced")]
    if not paced:
        return ""
    rows = [
        "| scenario | conns | pause per request ms | aimed req/s | req/s | p50 ms | p99 ms | errors "
        "| loop lag p99 ms | loop lag max ms | server CPU % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in paced:
        p99, mx = _lag(r)
        lat = r["latency_ms"]
        rows.append(
            f"| {r['scenario']} | {r['connections']} | {r['pace_ms']} | {r['target_rps']:,.0f} | {r['rps']:,.0f} | "
            f"{_ms(lat['p50'])} | {_ms(lat['p99'])} | {r['errors_total']} | {p99} | {mx} | "
            f"{r['server']['cpu_pct']:.0f} |"
        )
    return "\n".join(rows) + "\n"


def transport_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = (
        "| conns | variant | HTTP_TRANSPORT | HTTP_MAX_CONNECTIONS | HTTP_MAX_KEEPALIVE | req/s | p50 ms | p99 ms "
        "| errors | server CPU % |\n|--:|---|---|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    return (
        head
        + "\n".join(
            f"| {t['connections']} | {t['variant']} | {t['transport']} | {t['max_connections']} | {t['max_keepalive']} "
            f"| {t['rps']:,.0f} | {_ms(t['p50_ms'])} | {_ms(t['p99_ms'])} | {t['errors']} | {t['server_cpu_pct']:.0f} |"
            for t in rows
        )
        + "\n"
    )


def scale_table(data: dict[str, Any]) -> str:
    rows = data["scale"]["rows"]
    head = (
        "| scenario | engine | WORKERS | server CPUs | conns | req/s | p50 ms | p99 ms | errors | gateway CPU % "
        "| PostgreSQL CPU % | wrk CPU % | wrk waited for CPU % | other processes' CPU % |\n"
        "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = []
    for t in rows:
        cpus = ",".join(str(c) for c in t["server_cores"]) or "not pinned"
        if t["shares_client_core"]:
            cpus += " (one shared with wrk)"
        lines.append(
            f"| {t['scenario']} | {t['engine']} | {t['workers']} | {cpus} | {t['connections']} | {t['rps']:,.0f} | "
            f"{_ms(t['p50_ms'])} | {_ms(t['p99_ms'])} | {t['errors']} | {t['server_cpu_pct']:.0f} | "
            f"{_pct(t['postgres_cpu_pct']) if t['engine'] == POSTGRES else '-'} | {t['wrk_cpu_pct']:.0f} | "
            f"{_pct(t['wrk_runqueue_wait_pct'])} | {_pct(t['other_cpu_pct'])} |"
        )
    return head + "\n".join(lines) + "\n"


def scale_ratio_table(data: dict[str, Any]) -> str:
    ratios = data["scale"]["ratios"]
    labels = list(dict.fromkeys(r["ratio"] for r in ratios))
    names = list(dict.fromkeys(r["scenario"] for r in ratios))
    head = "| scenario | " + " | ".join(f"{label}: req/s (p99)" for label in labels) + " |\n"
    head += "|---|" + "--:|" * len(labels) + "\n"
    lines = []
    for name in names:
        cells = []
        for label in labels:
            r = next(x for x in ratios if x["scenario"] == name and x["ratio"] == label)
            cells.append("n/a" if r["rps"] is None else f"{r['rps']:.2f} x ({r['p99']:.2f} x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def scale_markdown(data: dict[str, Any]) -> list[str]:
    info = data.get("scale_info") or {}
    pg = info.get("postgres") or {}
    if pg.get("skipped"):
        pg_text = f"PostgreSQL runs skipped: {pg['skipped']}"
    elif pg:
        settings = ", ".join(f"{k}={v}" for k, v in pg.get("settings", {}).items())
        pg_text = (
            f"PostgreSQL {pg.get('version')} started by the bench (a fresh cluster for this invocation, restarted per "
            f"run on the run's server CPUs; each run a fresh database copied from a template filled by "
            f"`python -m service copy-to-postgres` from the seeded SQLite file): {settings}"
        )
    else:
        pg_text = "no PostgreSQL runs selected"
    parts = [
        "## Scale-out (group `scale`)\n",
        "The same scenarios, seeded data and request plans; only the gateway's environment (`WORKERS`, "
        "`DATABASE_URL`) and its CPUs differ. `WORKERS=2` is one supervisor and two worker processes behind one "
        "listening socket: on PostgreSQL, two stateless replicas behind one port. PostgreSQL runs on the same "
        "CPUs as the gateway (as SQLite, inside the gateway's process, does), so its CPU counts against the "
        "same cores; a deployment would give it a host of its own.\n",
        f"- pinning: {info.get('pinning', 'n/a')}",
        f"- {pg_text}",
        "- gateway CPU % and PostgreSQL CPU % are summed over their processes (100 = one core); other processes' "
        "CPU % = every CPU's busy time minus the bench's own processes (server, PostgreSQL, wrk, downstream, "
        "runner): what other work on a shared machine took during the measured window",
        "",
        scale_table(data),
        "Ratios between configurations of this run (req/s, and p99 in parentheses: below 1 is better):\n",
        scale_ratio_table(data),
    ]
    return parts


def _p50_p99(row: dict[str, Any], target: str) -> str:
    p50, p99 = row[f"{target}_p50_ms"], row[f"{target}_p99_ms"]
    if row.get(f"{target}_requests") == 0:
        return "none completed"
    return "n/a" if p50 is None else f"{_ms(p50)} / {_ms(p99)}"


def _x_naive(row: dict[str, Any], spec: str) -> str:
    if row.get("x_naive_exact", True):
        return _num(row["x_naive"], spec)
    return f"> {_num(row['x_naive'])}"  # a lower bound: whole numbers say enough


def _num(v: float | None, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def route_by_route_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | conns | gateway req/s | naive req/s | baseline req/s | gw / naive | gw / baseline "
        "| naive / baseline | gateway p50 / p99 ms | naive p50 / p99 ms | baseline p50 / p99 ms "
        "| errors gw / naive / baseline | naive CPU % |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = [
        f"| {t['scenario']} | {t['connections']} | {_num(t['gateway_rps'])} | {_num(t['naive_rps'])} | "
        f"{_num(t['baseline_rps'])} | {_x_naive(t, '.2f')} | {_num(t['x_baseline'], '.2f')} | "
        f"{_num(t['naive_x_baseline'], '.2f')} | {_p50_p99(t, GATEWAY)} | {_p50_p99(t, NAIVE)} | "
        f"{_p50_p99(t, BASELINE)} | {_num(t['gateway_errors'], 'd')} / {_num(t['naive_errors'], 'd')} / "
        f"{_num(t['baseline_errors'], 'd')} | {_num(t['naive_cpu_pct'])} |"
        for t in rows
    ]
    return head + "\n".join(lines) + "\n"


def route_by_route_markdown(data: dict[str, Any]) -> list[str]:
    rows = data.get("route_by_route") or []
    if not rows:
        return []
    return [
        "## Gateway vs the naive async port, route by route\n",
        "The naive async port (`bench/naive/`, see its README) is the legacy design moved to async the obvious "
        "way: FastAPI `async def` endpoints, `async with httpx.AsyncClient()` around each downstream call, an "
        "`aiosqlite` connection opened per request, the legacy schema and seeded data, no batching. Each of its "
        "runs comes right after the baseline's, which comes right after the gateway's: the ratios are from "
        'neighbouring runs of this invocation. "none completed": no response within the measured window '
        "(see the errors: wrk's timeouts); gw / naive is then a lower bound (the naive port did fewer than one "
        "request in the window).\n",
        route_by_route_table(rows),
    ]


# README labels of the main scenarios (the README's table is `readme_route_table`'s output)
README_LABELS = {
    "ceiling": "ceiling `GET /health`",
    "read": "read `GET /sessions/{id}`",
    "write": "write create + event",
    "list": "list `?status=ACTIVE&limit=100` (100k rows)",
    "rag_c100": "rag, downstream +100 ms",
    "rag_c500": "rag, downstream +100 ms",
    "rag_c1000": "rag, downstream +100 ms",
    "mixed": "mixed blend",
}


def readme_route_table(data: dict[str, Any]) -> str:
    """The README's route-by-route table (``python -m bench.report readme-naive [bench.json]`` prints it)."""
    head = (
        "| scenario | conns | gateway req/s | naive async port req/s | baseline req/s | gateway / naive "
        "| gateway / baseline | p50 / p99 ms: gateway | naive | baseline | errors gw / naive / baseline |\n"
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = [
        f"| {README_LABELS.get(t['scenario'], t['scenario'])} | {t['connections']} | {_num(t['gateway_rps'])} | "
        f"{_num(t['naive_rps'])} | {_num(t['baseline_rps'])} | {_x_naive(t, '.1f')} | "
        f"{_num(t['x_baseline'], '.1f')} | {_p50_p99(t, GATEWAY)} | {_p50_p99(t, NAIVE)} | {_p50_p99(t, BASELINE)} | "
        f"{_num(t['gateway_errors'], 'd')} / {_num(t['naive_errors'], 'd')} / {_num(t['baseline_errors'], 'd')} |"
        for t in data.get("route_by_route") or []
    ]
    return head + "\n".join(lines) + "\n" if lines else ""


def cpu_ms_per_request(r: dict[str, Any]) -> float | None:
    """Server CPU (all threads, all processes of the server) per answered request over the measured window."""
    cpu, rps = r.get("server", {}).get("cpu_pct"), r.get("rps")
    return round(10 * cpu / rps, 3) if cpu is not None and rps else None


def readme_results_table(data: dict[str, Any]) -> str:
    """The README's main table: the gateway's default configuration, scenario by scenario."""
    head = (
        "| scenario | conns | gateway req/s | x ceiling | p50 / p99 / max ms | errors | server CPU ms per request "
        "| loop lag max ms | peak RSS MB |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = []
    for name in MAIN_SCENARIOS:
        r = _find(data["runs"], name, GATEWAY)
        if r is None:
            continue
        lat = r["latency_ms"]
        lag = r.get("lag") or {}
        lag_max = f"{lag['max_s'] * 1000:.0f}" if lag.get("max_s") is not None else "-"
        label = README_LABELS.get(name, name)
        lines.append(
            f"| {label} | {r['connections']} | {r['rps']:,.0f} | {_num(r.get('x_ceiling'), '.2f')} "
            f"| {_ms(lat['p50'])} / {_ms(lat['p99'])} / {_ms(lat['max'])} | {r['errors_total']:,} "
            f"| {_num(cpu_ms_per_request(r), '.2f')} | {lag_max} | {r['server']['peak_rss_mb']:.0f} |"
        )
    return head + "\n".join(lines) + "\n" if lines else ""


def _code(info: dict[str, Any] | None) -> str:
    if not info:
        return "unknown"
    changes = info.get("local_changes") or []
    local = f" + {len(changes)} uncommitted change(s) in service/" if changes else ""
    return (
        f"commit {str(info.get('commit'))[:10]}{local} (service/ sha256 {info.get('service_sha256')}, a snapshot "
        "copied at start: every run used the same code)"
    )


def bench_markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    cfg = data["config"]
    parts = [
        "# Benchmark results\n",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, {m['wrk']}",
        f"- pinning: {data['pinning']['description']}",
        f"- code: {_code(data.get('code'))}",
        f"- command: `{data['command']}` ({data['created']}, {data['elapsed_s']:.0f} s in all)",
        f"- each run: fresh server process and database copy ({cfg['sessions_seeded']:,} seeded sessions), "
        f"set-up through the API, {cfg['warmup_s']:g} s warm-up, {cfg['duration_s']:g} s measured with wrk "
        f"(1 thread, {cfg['wrk_timeout_s']:g} s timeout); "
        f"loop lag probe every {cfg['loop_lag_interval_s'] * 1000:g} ms",
        "- errors = socket errors + timeouts + non-2xx answers; loop lag from the gateway's /metrics over the "
        "measured window (p99 as a histogram bucket bound; max exact unless shown as <=)",
        "- x ceiling = req/s / the gateway's GET /health req/s; gw / baseline = gateway req/s / baseline req/s; "
        "gw / naive = gateway req/s / the naive async port's req/s",
        "- CPU % = share of one core over the measured window (all threads); waited for CPU % = time runnable but "
        "not running (/proc/<pid>/task/*/schedstat): high values mean other processes on a shared machine "
        "took the CPU, so the numbers understate what the code can do",
        "",
    ]
    table = results_table(data["runs"])
    if table:  # a run of the scale group alone has no rows here
        parts += ["## Results\n", table]
    parts += route_by_route_markdown(data)
    if data.get("scale", {}).get("rows") or (data.get("scale_info") or {}).get("postgres", {}).get("skipped"):
        parts += scale_markdown(data)
    if data.get("transports"):
        parts += ["## Downstream transport (rag scenario, gateway only)\n", transport_table(data["transports"])]
    lag = lag_table(data["runs"])
    if lag:
        parts += [
            "## Event-loop lag below saturation (gateway, paced wrk at ~50% of its saturated req/s)\n",
            "A closed-loop load generator keeps the loop saturated, so its lag there is queueing (one loop turn "
            "runs every ready callback); paced, the lag shows what a single callback holds the loop for.\n",
            lag,
        ]
    if data.get("overhead"):
        parts.append("## Overhead of metrics and access log (defaults vs METRICS_ENABLED=false / ACCESS_LOG=false)\n")
        parts.append("cost = 1 - req/s with defaults / req/s with it switched off\n")
        parts.append(
            "| scenario | switched off | req/s defaults | req/s switched off | p99 ms defaults | p99 ms off | cost |"
        )
        parts.append("|---|---|--:|--:|--:|--:|--:|")
        for o in data["overhead"]:
            parts.append(
                f"| {o['scenario']} | {o['switched_off']} | {o['rps_defaults']:,.0f} | {o['rps_off']:,.0f} | "
                f"{_ms(o['p99_defaults_ms'])} | {_ms(o['p99_off_ms'])} | {o['throughput_cost_pct']}% |"
            )
        parts.append("")
    parts += sqlite_markdown(data)
    if data.get("tails"):
        parts += [
            "## Tails under saturation\n",
            "Closed-loop wrk, every server at its saturated throughput; p99 / p50 above "
            f"{TAIL_RATIO_MAX:g} (bold) means some requests waited far longer than others. wrk's latency covers the "
            "responses that completed: its timeouts are counted as errors, not in the distribution.\n",
            tails_table(data["tails"]),
        ]
    if data.get("targets"):
        parts += [
            "## Targets\n",
            "met n/a = not measured in this run (the note says which run was missing); the reason of a missed target "
            "is its entry in `REASONS` (bench/targets.py).\n",
            targets_table(data["targets"]),
        ]
    cc = data["client_check"]
    busy = cc["runs_with_busy_client"]
    parts.append(
        f"Client check: wrk's CPU peaked at {cc['max_wrk_cpu_pct']}% of its core "
        f"({cc['max_wrk_busy_pct']:.0f}% counting time it waited for the CPU); "
        + (
            f"busy (>= {CLIENT_BUSY_PCT:.0f}%) in: {', '.join(busy)}."
            if busy
            else f"below {CLIENT_BUSY_PCT:.0f}% in every run, so the server was the limit."
        )
        + "\n"
    )
    return "\n".join(parts)


def _growth_row(name: str, g: dict[str, float], verdict: str) -> str:
    cells = [g["early_median"], g["late_median"], g["growth"], g["slope_per_min"], g["min"], g["max"]]
    return f"| {name} | " + " | ".join(f"{c:g}" for c in cells) + f" | {verdict} |"


def soak_markdown(data: dict[str, Any]) -> str:
    v = data["verdict"]
    w = data["wrk"]
    lag = data["lag"]

    def yn(ok: bool) -> str:
        return "yes" if ok else "**no**"

    return "\n".join(
        [
            "# Soak results\n",
            f"- command: `{data['command']}`; {data['scenario']}, {data['connections']} connections, "
            f"{data['duration_s']:g} s, {data['sessions_seeded']:,} seeded sessions; {data['pinning']}",
            f"- code: {_code(data.get('code'))}",
            f"- throughput {w['rps']:,.0f} req/s, p50 {_ms(w['latency_ms']['p50'])} ms, "
            f"p99 {_ms(w['latency_ms']['p99'])} ms, max {_ms(w['latency_ms']['max'])} ms, errors {w['errors_total']} "
            f"(statuses {w['statuses']}); server CPU {data['server_cpu_pct']:.0f}%, wrk CPU {w['client_cpu_pct']:.0f}%",
            f"- event-loop lag: p99 <= {(lag['p99_le_s'] or 0) * 1000:g} ms, max "
            f"{(lag['max_s'] or 0) * 1000:.1f} ms ({lag['samples']} samples)",
            "",
            "| measure | 40-50% of run (median) | last 10% (median) | growth | slope / min (2nd half) | min | max "
            "| no growth |",
            "|---|--:|--:|--:|--:|--:|--:|---|",
            _growth_row("RSS MB", data["rss_mb"], f"{yn(v['rss_ok'])} (limit {v['rss_growth_limit_mb']} MB)"),
            _growth_row("open fds", data["fds"], f"{yn(v['fds_ok'])} (limit {v['fd_growth_limit']})"),
            _growth_row("threads", data["threads"], ""),
            "",
            f"- peak RSS {data['peak_rss_mb']:.0f} MB; database after the run: integrity_check "
            f"`{data['integrity']['integrity_check']}`, {data['integrity']['foreign_key_violations']} foreign-key "
            f"violations, {data['integrity']['sessions']:,} sessions, {data['integrity']['events']:,} events",
            f"- gateway exit code {data['server_exit_code']}, {data['server_log_error_lines']} error lines in its log",
            f"- verdict: {'PASS' if v['ok'] else 'FAIL'}",
            "",
        ]
    )


# --------------------------------------------------------------------------------------------- SQLite batches, WAL

# the service's DB_JOURNAL_SIZE_LIMIT_BYTES default (service/settings.py): the WAL is cut back to it after a checkpoint
JOURNAL_SIZE_LIMIT_DEFAULT = 64 * 2**20
SQLITE_PAGE_BYTES = 4096  # SQLite's default page size (the service does not change it)
WAL_P99_SLACK = 1.2  # a faster autocheckpoint value may cost at most this much p99
BATCH_SCENARIOS = ("read", "write", "mixed", "rag_c100", "rag_c500", "rag_c1000")


def batch_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls per SQLite batch over the measured window, per kind, for the default gateway run of each scenario
    that touches the database (read, write, mixed, rag)."""
    picked = {r["scenario"]: r for r in saturated_gateway_runs(runs) if r["scenario"] in BATCH_SCENARIOS}
    rows = []
    for name in BATCH_SCENARIOS:
        r = picked.get(name)
        if r is None or not r.get("batches"):
            continue
        for kind, b in r["batches"].items():
            rows.append({"scenario": name, "kind": kind, "rps": r["rps"], **b})
    return rows


def wal_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``wal`` group: one row per DB_WAL_AUTOCHECKPOINT value, with req/s and p99 over the 1000-page run's."""
    picked = [r for r in runs if r["group"] == "wal" and r["target"] == GATEWAY]
    rows = []
    for r in picked:
        env = r.get("env") or {}
        rows.append(
            {
                "pages": int(env.get("DB_WAL_AUTOCHECKPOINT", WAL_DEFAULT_PAGES)),
                "journal_size_limit_bytes": int(env.get("DB_JOURNAL_SIZE_LIMIT_BYTES", JOURNAL_SIZE_LIMIT_DEFAULT)),
                "rps": r["rps"],
                "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"],
                "errors": r["errors_total"],
                "wal_bytes_max": r.get("wal_bytes_max"),
                "wal_bytes_end": r.get("wal_bytes_end"),
                "write_batch_mean": ((r.get("batches") or {}).get("write") or {}).get("mean"),
            }
        )
    rows.sort(key=lambda t: t["pages"])
    base = next((t for t in rows if t["pages"] == WAL_DEFAULT_PAGES), None)
    for t in rows:
        t["rps_vs_default"] = _ratio(t["rps"], base["rps"]) if base else None
        t["p99_vs_default"] = _ratio(t["p99_ms"], base["p99_ms"]) if base else None
    return rows


def wal_bound_bytes(row: dict[str, Any]) -> int:
    """Largest WAL accepted for a value: the journal size limit plus one checkpoint's worth of pages."""
    return int(row["journal_size_limit_bytes"]) + int(row["pages"]) * SQLITE_PAGE_BYTES


def better_autocheckpoint(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The value to keep: the highest req/s among those with p99 <= WAL_P99_SLACK x the default's, no more errors
    than the default, and the WAL never above ``wal_bound_bytes``; the default (1000) unless another beats it.
    ``pages`` None when the default run is missing (nothing to compare with)."""
    base = next((t for t in rows if t["pages"] == WAL_DEFAULT_PAGES), None)
    if base is None:
        return {"pages": None, "why": "no DB_WAL_AUTOCHECKPOINT=1000 run to compare with"}
    best, rejected = base, []
    for t in rows:
        if t is base:
            continue
        wal = t["wal_bytes_max"]
        if t["p99_ms"] > WAL_P99_SLACK * base["p99_ms"]:
            rejected.append(f"{t['pages']}: p99 {t['p99_ms']:.1f} ms against {base['p99_ms']:.1f} ms")
        elif t["errors"] > base["errors"]:
            rejected.append(f"{t['pages']}: {t['errors']} errors")
        elif wal is None or wal > wal_bound_bytes(t):
            rejected.append(f"{t['pages']}: WAL max " + ("not measured" if wal is None else f"{wal / 2**20:.1f} MB"))
        elif t["rps"] > best["rps"]:
            best = t
    gain = best["rps_vs_default"]
    why = (
        f"{best['pages']} pages: {gain:.2f} x the default's req/s"
        if best is not base
        else "the default: no other value had higher req/s within the p99, error and WAL bounds"
    )
    if rejected:
        why += "; out of bounds: " + "; ".join(rejected)
    return {"pages": best["pages"], "why": why}


def _mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:.1f}"


def _batch(v: float | None) -> str:
    return "n/a" if v is None else f"{v:g}"


def sqlite_markdown(data: dict[str, Any]) -> list[str]:
    """The "SQLite batches and WAL" section: batch sizes per scenario, the ``wal`` table and the better value."""
    runs = data["runs"]
    batches, wal = batch_rows(runs), wal_rows(runs)
    if not batches and not wal:
        return []
    parts = ["## SQLite batches and WAL\n"]
    if batches:
        parts += [
            "Calls per batch handed to one SQLite connection (group commit: one batch in flight per connection, "
            "everything submitted meanwhile forms the next; a write batch is one COMMIT), over the measured window, "
            "from the `db_batch_size` histogram (p50 / p99 approximate: placed within the histogram's power-of-two "
            "buckets; max = the highest bucket reached, > 256 above the top one). Gateway, default configuration.\n",
            "| scenario | kind | req/s | batches | calls | mean calls / batch | p50 | p99 | max <= |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for b in batches:
            top = "> 256" if b["max_le"] is None and b["batches"] else _batch(b["max_le"])
            parts.append(
                f"| {b['scenario']} | {b['kind']} | {b['rps']:,.0f} | {b['batches']:,} | {b['calls']:,} | "
                f"{_batch(b['mean'])} | {_batch(b['p50'])} | {_batch(b['p99'])} | {top} |"
            )
        parts.append("")
    if wal:
        better = better_autocheckpoint(wal)
        parts += [
            "WAL checkpoints (group `wal`): the write scenario with `DB_WAL_AUTOCHECKPOINT` (WAL pages between "
            "automatic checkpoints) at each value, back to back; WAL MB = the size of the database's `-wal` file, "
            "sampled every 0.25 s during the measured window (max, and at its end). Better = the highest req/s with "
            f"p99 <= {WAL_P99_SLACK:g} x the default's, no more errors, and WAL max <= DB_JOURNAL_SIZE_LIMIT_BYTES + "
            "one checkpoint's pages.\n",
            "| DB_WAL_AUTOCHECKPOINT | req/s | p50 ms | p99 ms | errors | WAL max MB | WAL end MB | req/s vs 1000 "
            "| p99 vs 1000 | mean calls / write batch |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for t in wal:
            parts.append(
                f"| {t['pages']} | {t['rps']:,.0f} | {_ms(t['p50_ms'])} | {_ms(t['p99_ms'])} | {t['errors']} | "
                f"{_mb(t['wal_bytes_max'])} | {_mb(t['wal_bytes_end'])} | {_x(t['rps_vs_default'])} | "
                f"{_x(t['p99_vs_default'])} | {_batch(t['write_batch_mean'])} |"
            )
        pages = better["pages"]
        parts += ["", f"better: {'n/a' if pages is None else f'{pages} pages'} ({better['why']})", ""]
    return parts


# --------------------------------------------------------------------------------------------- files


def write_json(data: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def write_bench(data: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(data, out / "bench.json")]
    md = out / "bench.md"
    md.write_text(bench_markdown(data) + "\n![throughput and p99](bench.png)\n")
    paths.append(md)
    chart = bench_chart(data, out / "bench.png")
    if chart:
        paths.append(chart)
    tchart = transport_chart(data, out / "transports.png")
    if tchart:
        paths.append(tchart)
    return paths


def write_soak(data: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_json(data, out / "soak.json")]
    md = out / "soak.md"
    md.write_text(soak_markdown(data) + "\n![RSS and open fds over time](soak.png)\n")
    paths.append(md)
    chart = soak_chart(data, out / "soak.png")
    if chart:
        paths.append(chart)
    return paths


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_chart(data: dict[str, Any], path: Path) -> Path | None:
    runs = data["runs"]
    names = [n for n in MAIN_SCENARIOS if any(_find(runs, n, t) for t in (GATEWAY, NAIVE, BASELINE))]
    if not names:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
    series = [
        (target, color)
        for target, color in ((GATEWAY, "#2b6cb0"), (NAIVE, "#2f855a"), (BASELINE, "#c05621"))
        if any(_find(runs, n, target) for n in names)
    ]
    width = 0.8 / len(series)
    xs = list(range(len(names)))
    for ax, metric, title in (
        (axes[0], "rps", "throughput (req/s, log scale; higher is better)"),
        (axes[1], "p99", "p99 latency (ms, log scale; lower is better)"),
    ):
        for i, (target, color) in enumerate(series):
            offset = (i - (len(series) - 1) / 2) * width
            values = []
            for n in names:
                r = _find(runs, n, target)
                values.append(0 if r is None else (r["rps"] if metric == "rps" else r["latency_ms"]["p99"]))
            legend = "naive async port" if target == NAIVE else target
            bars = ax.bar([x + offset for x in xs], values, width, label=legend, color=color)
            for bar, value in zip(bars, values, strict=True):
                if value:
                    label = f"{value:,.0f}" if value >= 10 else f"{value:.1f}"
                    ax.annotate(label, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(xs, names)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    m = data["machine"]
    fig.suptitle(
        f"{' vs '.join('naive async port' if t == NAIVE else t for t, _ in series)} - {m['nproc']} CPUs "
        f"{m['cpu_model']}, "
        f"{data['config']['duration_s']:g} s per run"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def transport_chart(data: dict[str, Any], path: Path) -> Path | None:
    rows = data.get("transports") or []
    if len({t["variant"] for t in rows}) < 2:
        return None
    plt = _pyplot()
    conns = sorted(c for c in {t["connections"] for t in rows} if sum(t["connections"] == c for t in rows) > 1)
    variants = list(dict.fromkeys(t["variant"] for t in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    width = 0.8 / max(1, len(variants))
    for ax, key, title in ((axes[0], "rps", "req/s (higher is better)"), (axes[1], "p99_ms", "p99 ms (log)")):
        for i, v in enumerate(variants):
            values = [next((t[key] for t in rows if t["variant"] == v and t["connections"] == c), 0) for c in conns]
            ax.bar([x + (i - (len(variants) - 1) / 2) * width for x in range(len(conns))], values, width, label=v)
        ax.set_xticks(range(len(conns)), [f"{c} conns" for c in conns])
        ax.set_title(title)
        if key == "p99_ms":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("rag scenario: downstream transport under the shared httpx.AsyncClient (downstream +100 ms)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def soak_chart(data: dict[str, Any], path: Path) -> Path | None:
    s = data["series"]
    if not s["t"]:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5), constrained_layout=True)
    minutes = [t / 60 for t in s["t"]]
    ax.plot(minutes, s["rss_mb"], color="#2b6cb0", label="RSS MB")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS MB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(minutes, s["fds"], color="#c05621", label="open fds")
    ax2.set_ylabel("open fds")
    ax2.set_ylim(bottom=0)
    ax.set_title(f"soak: {data['scenario']}, {data['connections']} conns - RSS and open file descriptors")
    fig.legend(loc="center right", bbox_to_anchor=(0.9, 0.5))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report readme-naive [bench.json]``: print the README's route-by-route table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("what", choices=("readme-naive",))
    parser.add_argument("results", nargs="?", type=Path, default=Path(__file__).parent / "results" / "bench.json")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    if "route_by_route" not in data:  # results written before the naive port was a target
        data["route_by_route"] = route_by_route(data["runs"])
    table = readme_route_table(data)
    print(table or "no naive-port runs in " + str(args.results))
    return 0 if table else 1


if __name__ == "__main__":
    raise SystemExit(main())
