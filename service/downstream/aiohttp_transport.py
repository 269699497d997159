"""An httpx transport on one ``aiohttp.ClientSession``, reading each answer whole.

Why not httpx-aiohttp's ``AiohttpTransport``: it hands httpx a streamed body (a wrapper per chunk, httpx's
decoders and chunker on top), and builds a ``ClientTimeout`` per request. The gateway reads every downstream
answer into memory anyway (they are small JSON documents, parsed at once), so here the body is read by aiohttp in
one call and given to httpx as ``content``; timeouts are cached per value. Failures are raised as the httpx
exceptions they correspond to, with aiohttp's exception as ``__cause__`` (``client._classify`` looks at both).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx

# Most specific first: the first match wins.
_EXCEPTIONS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.TimeoutException),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientConnectionError, httpx.ReadError),
    (aiohttp.ClientError, httpx.ReadError),
)
_HTTP11 = {"http_version": b"HTTP/1.1"}


def mapped(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception an aiohttp one corresponds to (raise it ``from exc``: ``client._classify`` looks at
    both)."""
    target = next(t for s, t in _EXCEPTIONS if isinstance(exc, s))  # aiohttp.ClientError is the last entry
    return target(str(exc) or type(exc).__name__, request=request)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``session`` is built lazily, on the running loop (aiohttp binds a session to the loop it was made on); the
    TLS context is given, so a bad CA bundle fails when the client is built, at start-up."""

    def __init__(self, *, max_connections: int, keepalive_s: float, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context  # built by the caller, off the loop (it reads the CA certificates)
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None, float | None], aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_s, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),  # one client serves every user: never keep a cookie
            )
        return self._session

    def _timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        key = (timeouts.get("connect"), timeouts.get("read"), timeouts.get("pool"))
        found = self._timeouts.get(key)
        if found is None:
            # aiohttp's ``connect`` covers the wait for a pooled connection plus connecting (httpx's pool wait)
            found = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return found

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: Mapping[str, float | None],
        *,
        decode: bool,
    ) -> tuple[int, Any, bytes]:
        """Status, raw headers and body; ``decode``: aiohttp undoes the Content-Encoding (else httpx will)."""
        try:
            async with self.session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=False,
                auto_decompress=decode,
                timeout=self._timeout(timeouts),
            ) as answer:
                return answer.status, answer.raw_headers, await answer.read()
        except aiohttp.ClientError as exc:
            raise mapped(exc, httpx.Request(method, url)) from exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        status, raw_headers, content = await self._exchange(
            request.method,
            str(request.url),
            request.headers,
            request.content,
            request.extensions.get("timeout", {}),
            decode=False,
        )
        return httpx.Response(status, headers=raw_headers, content=content, request=request, extensions=_HTTP11)

    async def fetch(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeouts: Mapping[str, float | None]
    ) -> tuple[int, bytes]:
        """The gateway's own path (``Downstream._send``): status and decoded body, no httpx objects built."""
        status, _, content = await self._exchange(method, url, headers, body, timeouts, decode=True)
        return status, content

    def in_use(self) -> int:
        """Connections checked out of the pool (0 when idle: nothing leaked)."""
        if self._session is None:
            return 0
        return len(getattr(self._session.connector, "_acquired", ()))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
