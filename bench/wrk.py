"""Run ``wrk`` with ``bench/lua/plan.lua`` and parse the JSON line its ``done()`` prints.

The client's own CPU time comes from ``wait4()``'s rusage of the wrk process (all its threads), so the
report can say how busy the load generator's core was: well below 100% means the server was the limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import servers

LUA_SCRIPT = Path(__file__).resolve().parent / "lua" / "plan.lua"
MARKER = "WRK_JSON "


@dataclass
class WrkResult:
    connections: int
    duration_s: float
    requests: int
    rps: float
    errors: dict[str, int]
    errors_total: int
    non_2xx: int
    statuses: dict[str, int]
    latency_ms: dict[str, float]
    bytes: int
    client_cpu_s: float
    client_wall_s: float
    client_cpu_pct: float
    client_runqueue_wait_pct: float = 0.0
    command: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_output(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            parsed: dict[str, Any] = json.loads(line[len(MARKER) :])
            return parsed
    raise RuntimeError("wrk printed no result line (WRK_JSON); output was:\n" + stdout[-2000:])


def summarize(raw: dict[str, Any], *, connections: int, cpu_s: float, wall_s: float) -> WrkResult:
    duration_s = raw["duration_us"] / 1e6
    requests = int(raw["requests"])
    errors = {k: int(v) for k, v in raw["errors"].items()}
    statuses = {str(k): int(v) for k, v in raw.get("statuses", {}).items()}
    non_2xx = sum(n for code, n in statuses.items() if not code.startswith("2"))
    lat = raw["latency_us"]
    pct = lat["percentiles"]
    latency_ms = {
        "p50": pct["50"] / 1000,
        "p75": pct["75"] / 1000,
        "p90": pct["90"] / 1000,
        "p95": pct["95"] / 1000,
        "p99": pct["99"] / 1000,
        "p99.9": pct["99.9"] / 1000,
        "max": lat["max"] / 1000,
        "mean": lat["mean"] / 1000,
        "min": lat["min"] / 1000,
    }
    # wrk counts 4xx/5xx in errors.status; socket errors and timeouts are separate.
    socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    return WrkResult(
        connections=connections,
        duration_s=round(duration_s, 3),
        requests=requests,
        rps=round(requests / duration_s, 1) if duration_s > 0 else 0.0,
        errors=errors,
        errors_total=socket_errors + max(errors["status"], non_2xx),
        non_2xx=non_2xx,
        statuses=statuses,
        latency_ms={k: round(v, 3) for k, v in latency_ms.items()},
        bytes=int(raw["bytes"]),
        client_cpu_s=round(cpu_s, 3),
        client_wall_s=round(wall_s, 3),
        client_cpu_pct=round(100 * cpu_s / wall_s, 1) if wall_s > 0 else 0.0,
    )


def run_wrk(
    url: str,
    plan: Path,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 10.0,
    core: int | None = None,
    track_status: bool = True,
    on_tick: Callable[[float], None] | None = None,
    tick_s: float = 5.0,
    pace_ms: int = 0,
    watch: Callable[[], None] | None = None,
) -> WrkResult:
    """One wrk run, bounded in time; ``on_tick(elapsed)`` is called every ``tick_s`` for progress output and
    ``watch()`` every second (it raises to abort the run, e.g. when the server under test has died)."""
    seconds = max(1, round(duration_s))
    cmd = servers.pinned(
        [
            "wrk",
            f"-t{threads}",
            f"-c{max(connections, threads)}",
            f"-d{seconds}s",
            f"--timeout={timeout_s:g}s",
            "-s",
            str(LUA_SCRIPT),
            url,
            "--",
            str(plan),
            "1" if track_status else "0",
        ],
        core,
    )
    with tempfile.TemporaryFile() as out:
        env = {k: v for k, v in os.environ.items() if k != "WRK_PACE_MS"}
        if pace_ms > 0:
            env["WRK_PACE_MS"] = str(pace_ms)
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
        servers.CHILDREN.append(proc)
        servers.prioritize(proc.pid)
        started = time.monotonic()
        next_tick = tick_s
        next_watch = 1.0
        hard_deadline = started + seconds + timeout_s + 30
        rusage = None
        wait0 = servers.runqueue_wait_s(proc.pid) or 0.0
        wait1 = wait0
        try:
            while True:
                wait = servers.runqueue_wait_s(proc.pid)
                if wait is not None:
                    wait1 = wait
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    rusage = ru
                    break
                elapsed = time.monotonic() - started
                if watch is not None and elapsed >= next_watch:
                    watch()
                    next_watch += 1.0
                if on_tick is not None and elapsed >= next_tick:
                    on_tick(elapsed)
                    next_tick += tick_s
                if time.monotonic() > hard_deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    raise RuntimeError(f"wrk did not finish within {hard_deadline - started:.0f} s")
                time.sleep(0.1)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, 0)
                proc.returncode = -9
            if proc in servers.CHILDREN:
                servers.CHILDREN.remove(proc)
        wall_s = time.monotonic() - started
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{stdout[-2000:]}")
    cpu_s = rusage.ru_utime + rusage.ru_stime if rusage is not None else 0.0
    result = summarize(parse_output(stdout), connections=connections, cpu_s=cpu_s, wall_s=wall_s)
    result.command = cmd
    result.client_runqueue_wait_pct = round(100 * (wait1 - wait0) / wall_s, 1) if wall_s > 0 else 0.0
    return result
