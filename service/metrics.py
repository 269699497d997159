"""Prometheus metrics (one registry per app) and the event-loop lag probe.

Under ``WORKERS`` > 1 every worker writes its values to files in the supervisor's ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode, chosen by that variable when prometheus_client is imported) and
``/metrics`` renders all of them, whichever worker answers: counters and histograms summed over every worker that
ever ran (a dead one's requests still happened), the in-flight gauge summed over the live ones, the loop-lag gauges
one series per live worker (``pid`` label). A callback gauge (``set_function``) is read in the scraping process
only, so there the in-flight count is copied into the gauge at every lag-probe tick instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import Scope

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # bounded label values
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class SampledGauge:
    """Stands in for a gauge's ``set_function`` where callbacks are not collected (multiprocess mode): keeps the
    function, and ``sample()`` (every lag-probe tick) stores its value in the gauge."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._read: Callable[[], float] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        self._read = f

    def sample(self) -> None:
        if self._read is not None:
            self.gauge.set(self._read())


class Metrics:
    """``multiprocess_dir``: the worker's shared ``PROMETHEUS_MULTIPROC_DIR`` (None: this process alone)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.multiprocess_dir = multiprocess_dir
        self._scraped = r
        if multiprocess_dir is not None:
            self._scraped = CollectorRegistry()
            MultiProcessCollector(self._scraped, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        self.requests = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "Requests being served", multiprocess_mode="livesum", registry=r
        )
        # What the load-shedding middleware hands its count to (``set_function``).
        self.in_flight_source: Gauge | SampledGauge = self.in_flight
        self._sampled: SampledGauge | None = None
        if multiprocess_dir is not None:
            self._sampled = self.in_flight_source = SampledGauge(self.in_flight)
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
        self.db_batch = Histogram(
            "db_batch_size",
            "Calls per batch handed to one SQLite connection (one thread hop; for writes one COMMIT)",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # labels() takes a lock and a lookup per call: each label set is resolved once
        self._histogram_children: dict[tuple[Histogram, tuple[str, ...]], Any] = {}
        self.loop_lag = Gauge(
            "event_loop_lag_seconds", "Latest event-loop lag sample", multiprocess_mode="liveall", registry=r
        )
        self.loop_lag_max = Gauge(
            "event_loop_lag_max_seconds", "Largest event-loop lag seen", multiprocess_mode="liveall", registry=r
        )
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
        self._observe(self.db, (kind,), seconds)

    def db_batch_size(self, kind: str, size: int) -> None:
        self._observe(self.db_batch, (kind,), size)

    def downstream_call(self, service: str, outcome: str, seconds: float) -> None:
        self._observe(self.downstream, (service, outcome), seconds)

    def _observe(self, histogram: Histogram, labels: tuple[str, ...], value: float) -> None:
        child = self._histogram_children.get((histogram, labels))
        if child is None:
            child = self._histogram_children[(histogram, labels)] = histogram.labels(*labels)
        child.observe(value)

    def render(self) -> bytes:
        return generate_latest(self._scraped)

    async def export(self) -> bytes:
        """``render`` for the endpoint: the multiprocess collector reads every worker's files, off the loop."""
        if self.multiprocess_dir is None:
            return self.render()
        return await asyncio.to_thread(self.render)

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
            if self._sampled is not None:
                self._sampled.sample()
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
