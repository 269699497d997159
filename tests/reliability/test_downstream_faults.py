"""Downstream faults under load: the gateway stays up, maps each fault to 502/503/504, recovers, leaks nothing.

The gateway runs in process (so the test can read its connection pool and its event loop's task count); the
reference downstream runs as its own ``python -m devstack`` process so it can be killed and restarted, and its
``/_control`` endpoint injects latency and faults. 20 clients hammer the gateway through every phase.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_kit import DevstackProcess, eventually
from starlette.types import ASGIApp, Receive, Scope, Send

from service.app import create_app
from service.downstream import Downstream
from support.servers import ServerThread, gateway_settings

TEACHER = {"Authorization": "Bearer dev-teacher-token"}
CLIENTS = 20
PHASE_S = 1.0
PROMPT_S = 2.0  # generous "answers promptly" bound for /health and cached session reads
RAG_BOUND_S = 5.0  # a RAG call's own deadline is connect + read = 1 s; this only proves "does not hang"


class LoopCapture:
    """Test-only ASGI wrapper: remembers the server's event loop when the lifespan starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    async def on_loop(self, fn: Callable[[], Any]) -> Any:
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))

    async def task_count(self) -> int:
        count: int = await self.on_loop(lambda: len(asyncio.all_tasks()))
        return count


@dataclass(slots=True)
class Phase:
    name: str
    statuses: dict[str, Counter[int | str]] = field(default_factory=lambda: defaultdict(Counter))
    worst_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def record(self, kind: str, result: int | str, seconds: float) -> None:
        self.statuses[kind][result] += 1
        self.worst_s[kind] = max(self.worst_s[kind], seconds)

    def summary(self) -> str:
        parts = [f"{k}={dict(v)} worst={self.worst_s[k]:.2f}s" for k, v in sorted(self.statuses.items())]
        return f"{self.name}: " + "; ".join(parts)


@pytest.mark.slow
async def test_gateway_survives_downstream_faults_under_load(tmp_path: Path) -> None:
    ds = DevstackProcess(tmp_path, seed=3)
    gateway: ServerThread | None = None
    try:
        await ds.start()
        settings = gateway_settings(
            tmp_path,
            ds.url,
            http_connect_timeout_s=0.5,
            http_read_timeout_s=0.5,
            http_pool_timeout_s=1.0,
            auth_cache_ttl_s=600.0,
        )
        downstream = Downstream(settings)
        app = LoopCapture(create_app(settings, downstream=downstream))
        gateway = ServerThread(app).start()
        connections = gateway.server.server_state.connections

        # Warm up: the teacher's token is cached, a session exists, the RAG path works.
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as c:
            r = await c.post("/sessions", json={"name": "faults"}, headers=TEACHER)
            assert r.status_code == 201, r.text
            sid = r.json()["session_id"]
            r = await c.post("/rag/query", json={"session_id": sid, "query": "warm"}, headers=TEACHER)
            assert r.status_code == 200, r.text
        await eventually(lambda: app.on_loop(lambda: not connections), 10, "inbound connections did not close")
        baseline_tasks = await app.task_count()

        phases: list[Phase] = []
        limits = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS * 2)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as client:
            calls: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
                "health": lambda: client.get("/health"),
                "read": lambda: client.get(f"/sessions/{sid}", headers=TEACHER),
                "events": lambda: client.get(f"/sessions/{sid}/events", headers=TEACHER),
                "rag": lambda: client.post("/rag/query", json={"session_id": sid, "query": "q"}, headers=TEACHER),
            }

            async def hammer(name: str, seconds: float = PHASE_S) -> Phase:
                phase = Phase(name)
                stop_at = time.monotonic() + seconds

                async def worker(n: int) -> None:
                    kinds = itertools.cycle(list(calls)[n % 4 :] + list(calls)[: n % 4])
                    while time.monotonic() < stop_at:
                        kind = next(kinds)
                        started = time.monotonic()
                        try:
                            result: int | str = (await calls[kind]()).status_code
                        except httpx.TransportError as exc:
                            result = type(exc).__name__
                        phase.record(kind, result, time.monotonic() - started)

                await asyncio.gather(*(worker(n) for n in range(CLIENTS)))
                phases.append(phase)
                return phase

            async def rag_ok() -> bool:
                r = await calls["rag"]()
                return r.status_code == 200

            plan: list[tuple[str, dict[str, Any], set[int]]] = [
                ("baseline", {}, {200}),
                ("slow (1.5 s > read timeout)", {"latency_ms": 1500}, {504}),
                ("error500", {"fault": "error500"}, {502}),
                ("status_503", {"fault": "status_503"}, {502, 503}),
                ("invalid_json", {"fault": "invalid_json"}, {502}),
                ("disconnect", {"fault": "disconnect"}, {502}),
                ("hang", {"fault": "hang", "hang_seconds": 30}, {504}),
            ]
            for name, knobs, expected in plan:
                await ds.control(reset=True, **({"fault_paths": ["/query"], **knobs} if knobs else {}))
                phase = await hammer(name)
                assert set(phase.statuses["rag"]) <= expected, phase.summary()

            # The downstream dies: sessions still served from the database with the cached token.
            await ds.kill()
            down = await hammer("downstream stopped")
            assert set(down.statuses["rag"]) == {503}, down.summary()
            r = await client.get("/profile", headers={"Authorization": "Bearer dev:teacher:never-cached"})
            assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.text)
            r = await client.get("/health/services")
            assert r.status_code == 503, r.text

            # It comes back on the same port: the gateway recovers by itself.
            await ds.start()
            await eventually(rag_ok, 15, "RAG queries did not recover after the downstream restarted")
            recovered = await hammer("downstream restarted")
            assert set(recovered.statuses["rag"]) == {200}, recovered.summary()

        report = "\n".join(p.summary() for p in phases)
        print("\n" + report)
        for phase in phases:
            for kind in ("health", "read", "events"):
                assert set(phase.statuses[kind]) == {200}, f"{kind} not always 200\n{report}"
                assert phase.worst_s[kind] < PROMPT_S, f"{kind} slow during {phase.name}\n{report}"
            assert phase.worst_s["rag"] < RAG_BOUND_S, report
            assert sum(phase.statuses["rag"].values()) >= CLIENTS // 4, f"too little RAG load\n{report}"

        # Nothing leaked: no connection checked out of the pool, the loop is back to its idle task set.
        await eventually(
            lambda: app.on_loop(lambda: downstream.pool_stats()["in_use"] == 0),
            10,
            "downstream connections still checked out",
        )
        await eventually(lambda: app.on_loop(lambda: not connections), 10, "inbound connections left open")

        async def tasks_back() -> bool:
            return await app.task_count() <= baseline_tasks

        await eventually(tasks_back, 10, f"tasks did not return to the baseline of {baseline_tasks}")
        print(f"server loop tasks: baseline {baseline_tasks}, after the faults {await app.task_count()}")
        assert downstream.in_flight == {"auth": 0, "rag": 0, "question": 0}
    finally:
        if gateway is not None:
            gateway.stop()
        ds.close()
