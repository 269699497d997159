"""Prometheus metrics (one registry per app) and the event-loop lag probe."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import Scope

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # bounded label values
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("http_requests_in_flight", "Requests being served", registry=r)
        self.downstream = Histogram(
            "downstream_request_duration_seconds",
            "Downstream call latency by service and outcome",
            ["service", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db = Histogram(
            "db_operation_duration_seconds",
            "Awaited database calls (one thread hop each)",
            ["kind"],
            buckets=DB_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.loop_lag = Gauge("event_loop_lag_seconds", "Latest event-loop lag sample", registry=r)
        self.loop_lag_max = Gauge("event_loop_lag_max_seconds", "Largest event-loop lag seen", registry=r)
        self.loop_lag_hist = Histogram(
            "event_loop_lag_seconds_distribution", "Event-loop lag samples", buckets=LAG_BUCKETS, registry=r
        )

    # -- hooks for the middleware, the database and the downstream client ----------------------------------
    def request_done(self, scope: Scope, status: int, seconds: float) -> None:
        route: Any = scope.get("route")
        method = scope.get("method", "")
        key = (method if method in HTTP_METHODS else "OTHER", getattr(route, "path", None) or "unmatched", status)
        children = self._children.get(key)
        if children is None:  # labels() costs a lock and a lookup per call: resolve each label set once
            method, template, _ = key
            children = (self.requests.labels(method, template, str(status)), self.latency.labels(method, template))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def db_op(self, kind: str, seconds: float) -> None:
        self.db.labels(kind).observe(seconds)

    def downstream_call(self, service: str, outcome: str, seconds: float) -> None:
        self.downstream.labels(service, outcome).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- event-loop lag ------------------------------------------------------------------------------------
    async def probe_loop_lag(self, interval: float) -> None:
        """Sleep ``interval`` and record how late the loop woke us: the time a blocking call held it."""
        loop = asyncio.get_running_loop()
        worst = 0.0
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - expected)
            self.loop_lag.set(lag)
            self.loop_lag_hist.observe(lag)
            if lag > worst:
                worst = lag
                self.loop_lag_max.set(lag)


@contextlib.asynccontextmanager
async def lag_probe(metrics: Metrics, interval: float) -> Any:
    task = asyncio.create_task(metrics.probe_loop_lag(interval), name="event-loop-lag-probe")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
