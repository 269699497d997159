"""Past ``max_in_flight`` requests, refuse new work at once (503 + Retry-After) instead of queueing it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_response


class CountGauge(Protocol):
    """A Prometheus gauge, or ``metrics.SampledGauge`` where callbacks are not collected (several workers)."""

    def set_function(self, f: Callable[[], float]) -> None: ...


class LoadSheddingMiddleware:
    """Counts the requests being served and sheds new ones past the bound, before any body is read; paths
    starting with one of ``exempt`` (probes, metrics) are always served so an overloaded instance stays
    observable. ``gauge`` (a Prometheus gauge) reads the count when scraped: nothing to do per request (its
    ``inc``/``dec`` take a lock each, ~3 us a request)."""

    def __init__(self, app: ASGIApp, *, max_in_flight: int, exempt: tuple[str, ...], gauge: CountGauge | None) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.exempt = exempt
        self.in_flight = 0
        if gauge is not None:
            gauge.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight and not scope["path"].startswith(self.exempt):
            answer = error_response(
                503, "overloaded", "server is at capacity; retry shortly", headers={"Retry-After": "1"}
            )
            await answer(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
