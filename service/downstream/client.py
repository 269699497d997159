"""One shared ``httpx.AsyncClient`` for every downstream call, and the policy around it.

Policy, per call: a bounded wait for a per-service concurrency slot (overload becomes a fast 503, not a
``PoolTimeout`` pile-up), explicit connect/read/pool timeouts plus a hard deadline for the whole call,
retries with backoff and jitter only where safe (connection never made, or an idempotent method), the request
id passed through, and every failure mapped to 502 (bad answer), 503 (unreachable/overloaded) or 504 (timeout).

The transport under the client is a setting (``HTTP_TRANSPORT``), chosen by the numbers in the README's benchmark
section: ``native`` (the default: ``http11.py``, the least CPU per call), ``aiohttp`` (``aiohttp_transport.py``)
or ``httpx`` (httpcore, whose pool scans every pooled connection per request).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import httpx

from service import jsoncodec
from service.context import request_id_var
from service.downstream.aiohttp_transport import AiohttpTransport
from service.downstream.http11 import Http11Transport
from service.errors import ApiError, BadGateway, GatewayTimeout, ServiceUnavailable
from service.settings import Settings

Service = Literal["auth", "rag", "question"]
SERVICES: tuple[Service, ...] = ("auth", "rag", "question")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
CallObserver = Callable[[str, str, float], None]


class DownstreamError(ApiError):
    """Marker base: an ApiError raised because a downstream failed."""


class DownstreamBadAnswer(DownstreamError, BadGateway):
    pass


class DownstreamUnavailable(DownstreamError, ServiceUnavailable):
    pass


class DownstreamTimeout(DownstreamError, GatewayTimeout):
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    elapsed_s: float


def _classify(exc: BaseException) -> type[DownstreamError]:
    """Which caller-facing failure a transport exception is (looks through httpx-aiohttp's re-mapping).

    A connect timeout (no connection made, or none free in the pool within the pool timeout: aiohttp reports
    both as ``ConnectionTimeoutError``) means unreachable or overloaded, never sent: 503, like ``PoolTimeout``."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return DownstreamUnavailable
    if isinstance(cause, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return DownstreamTimeout
    if isinstance(cause, aiohttp.ClientError):
        return DownstreamBadAnswer
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return DownstreamUnavailable
    if isinstance(exc, httpx.TimeoutException):
        return DownstreamTimeout
    return DownstreamBadAnswer


def _never_sent(exc: BaseException) -> bool:
    """True when the request surely never reached the peer, so any method may be retried."""
    return _classify(exc) is DownstreamUnavailable


def build_transport(settings: Settings) -> httpx.AsyncBaseTransport:
    if settings.http_transport == "httpx":
        limits = httpx.Limits(
            max_connections=settings.http_max_connections,
            max_keepalive_connections=settings.http_max_keepalive,
            keepalive_expiry=settings.http_keepalive_expiry_s,
        )
        return httpx.AsyncHTTPTransport(limits=limits)
    if settings.http_transport == "aiohttp":
        # aiohttp keeps every idle connection up to its limit, so HTTP_MAX_KEEPALIVE does not apply to it
        return AiohttpTransport(
            max_connections=settings.http_max_connections,
            keepalive_s=settings.http_keepalive_expiry_s,
            ssl_context=httpx.create_ssl_context(),  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR as httpx
        )
    # "native", the only other value Settings accepts (HTTP_TRANSPORT is a Literal there); built off the loop
    # (``service.app``), so the TLS context's CA certificates are read here, once
    return Http11Transport(
        max_connections=settings.http_max_connections,
        max_keepalive=settings.http_max_keepalive,
        keepalive_s=settings.http_keepalive_expiry_s,
        ssl_context=httpx.create_ssl_context(),  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR as httpx
    )


class Downstream:
    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        self.settings = settings
        self.base_urls: dict[Service, str] = {
            "auth": settings.auth_service_url.rstrip("/"),
            "rag": settings.rag_service_url.rstrip("/"),
            "question": settings.question_service_url.rstrip("/"),
        }
        self.timeout = httpx.Timeout(
            connect=settings.http_connect_timeout_s,
            read=settings.http_read_timeout_s,
            write=settings.http_read_timeout_s,
            pool=settings.http_pool_timeout_s,
        )
        self.transport = transport or build_transport(settings)
        # The client owns the transport (its pool) and closes it; calls go to the transport directly (see
        # ``_send``).
        self.client = httpx.AsyncClient(transport=self.transport, timeout=self.timeout, follow_redirects=False)
        self._extensions = {"timeout": self.timeout.as_dict()}
        self._fetch = self.transport.fetch if isinstance(self.transport, AiohttpTransport | Http11Transport) else None
        self._slots = {s: asyncio.Semaphore(settings.downstream_max_concurrency) for s in SERVICES}
        self._observer = observer
        self.in_flight: dict[Service, int] = dict.fromkeys(SERVICES, 0)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        service: Service,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        deadline_s: float | None = None,
        idempotent: bool | None = None,
        ok_statuses: frozenset[int] = frozenset(),
    ) -> Reply:
        """One downstream call. 2xx (and ``ok_statuses``) come back as a Reply; anything else raises."""
        method = method.upper()
        safe = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        deadline = (
            deadline_s
            if deadline_s is not None
            else (self.settings.http_connect_timeout_s + self.settings.http_read_timeout_s)
        )
        url = self.base_urls[service] + path
        send_headers = {"X-Request-ID": request_id_var.get()}
        if headers:
            send_headers.update(headers)
        started = time.perf_counter()
        outcome = "error"
        try:
            await self._acquire(service)
            try:
                self.in_flight[service] += 1
                async with asyncio.timeout(deadline):
                    reply = await self._attempts(service, method, url, json_body, send_headers, safe)
            finally:
                self.in_flight[service] -= 1
                self._slots[service].release()
        except TimeoutError:
            outcome = "timeout"
            raise DownstreamTimeout(
                f"{service} service did not answer within {deadline:g} s",
                details={"service": service, "deadline_s": deadline},
            ) from None
        except DownstreamError as exc:
            outcome = {502: "bad_answer", 503: "unavailable", 504: "timeout"}.get(exc.status, "error")
            raise
        else:
            if 200 <= reply.status < 300 or reply.status in ok_statuses:
                outcome = "ok"
                return reply
            outcome = "bad_status"
            raise DownstreamBadAnswer(
                f"{service} service answered {reply.status}",
                details={"service": service, "status": reply.status, "body": _excerpt(reply.body)},
            )
        finally:
            if self._observer is not None:
                self._observer(service, outcome, time.perf_counter() - started)

    async def _acquire(self, service: Service) -> None:
        slots = self._slots[service]
        if not slots.locked():
            await slots.acquire()
            return
        try:
            async with asyncio.timeout(self.settings.http_pool_timeout_s):
                await slots.acquire()
        except TimeoutError:
            raise DownstreamUnavailable(
                f"{service} service is saturated ({self.settings.downstream_max_concurrency} calls in flight)",
                details={"service": service, "reason": "overloaded"},
                headers={"Retry-After": "1"},
            ) from None

    async def _attempts(
        self, service: Service, method: str, url: str, body: Any, headers: dict[str, str], safe: bool
    ) -> Reply:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                status, content = await self._send(method, url, body, headers)
            except httpx.HTTPError as exc:
                kind = _classify(exc)
                if (
                    attempt < self.settings.http_retries
                    and (safe or _never_sent(exc))
                    and kind is not DownstreamTimeout
                ):
                    attempt += 1
                    await self._backoff(attempt)
                    continue
                raise kind(
                    f"{service} service {_describe(kind)}: {type(exc).__name__}",
                    details={"service": service, "error": type(exc).__name__},
                ) from None
            if status in (502, 503, 504) and safe and attempt < self.settings.http_retries:
                attempt += 1
                await self._backoff(attempt)
                continue
            return Reply(status, _parse(service, status, content), time.perf_counter() - started)

    async def _send(self, method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, bytes]:
        """One request on the shared transport: its status and whole (decoded) body.

        ``AsyncClient.request`` would add a cookie jar (shared by every user of the gateway: a downstream's
        cookie must not travel to the next user), auth and redirect handling the gateway never uses, and a URL
        merge per call. On the aiohttp transport even ``httpx.Request`` / ``httpx.Response`` are skipped
        (``AiohttpTransport.fetch``). Together about a quarter of the CPU of a RAG query (bench/README.md)."""
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = jsoncodec.dumps(body)
        else:
            content = b""
        if self._fetch is not None:
            return await self._fetch(method, url, headers, content, self._extensions["timeout"])
        request = httpx.Request(method, url, headers=headers, content=content, extensions=self._extensions)
        response = await self.transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.content

    async def _backoff(self, attempt: int) -> None:
        base = self.settings.http_retry_backoff_s * (2 ** (attempt - 1))
        await asyncio.sleep(base * random.uniform(0.5, 1.5))

    def pool_stats(self) -> dict[str, int]:
        """Connections currently checked out of the pool (0 when idle: nothing leaked)."""
        if isinstance(self.transport, AiohttpTransport | Http11Transport):
            return {"in_use": self.transport.in_use()}
        pool = getattr(self.transport, "_pool", None)
        if pool is not None:
            return {"in_use": sum(1 for c in pool.connections if not c.is_idle())}
        return {"in_use": 0}


def _describe(kind: type[DownstreamError]) -> str:
    if kind is DownstreamUnavailable:
        return "is unreachable"
    if kind is DownstreamTimeout:
        return "timed out"
    return "gave a bad answer"


def _parse(service: str, status: int, content: bytes) -> Any:
    if not content:
        return None
    try:
        return jsoncodec.loads(content)
    except (ValueError, UnicodeDecodeError):
        text = content.decode("utf-8", "replace")
        if 200 <= status < 300:
            raise DownstreamBadAnswer(
                f"{service} service answered with invalid JSON",
                details={"service": service, "status": status, "body": _excerpt(text)},
            ) from None
        return text


def _excerpt(body: Any) -> Any:
    if isinstance(body, str):
        return body[:300]
    text = json.dumps(body)
    return body if len(text) <= 1000 else text[:1000]
