"""An httpx transport on one ``aiohttp.ClientSession``, reading each answer whole.

Why not httpx-aiohttp's ``AiohttpTransport``: it hands httpx a streamed body (a wrapper per chunk, httpx's
decoders and chunker on top), and builds a ``ClientTimeout`` per request. The gateway reads every downstream
answer into memory anyway (they are small JSON documents, parsed at once), so here the body is read by aiohttp in
one call and given to httpx as ``content``; timeouts are cached per value. Failures are raised as the httpx
exceptions they correspond to, with aiohttp's exception as ``__cause__`` (``client._classify`` looks at both).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator, Mapping

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


def _mapped(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.TransportError:
    target = next(t for s, t in _EXCEPTIONS if isinstance(exc, s))  # aiohttp.ClientError is the last entry
    return target(str(exc) or type(exc).__name__, request=request)


@contextlib.contextmanager
def mapped_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _mapped(exc, request) from exc


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
                auto_decompress=False,  # httpx decodes by the Content-Encoding header
                cookie_jar=aiohttp.DummyCookieJar(),  # one client serves every user: never keep a cookie
            )
        return self._session

    def _timeout_for(self, key: tuple[float | None, float | None, float | None]) -> aiohttp.ClientTimeout:
        # aiohttp's ``connect`` covers the wait for a pooled connection plus connecting (httpx's pool wait)
        found = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return found

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout", {})
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        return self._timeouts.get(key) or self._timeout_for(key)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content or None
        with mapped_errors(request):
            async with self.session.request(
                request.method,
                str(request.url),
                headers=request.headers,
                data=body,
                allow_redirects=False,
                compress=False,
                timeout=self._timeout(request),
            ) as answer:
                content = await answer.read()
                status, raw_headers = answer.status, answer.raw_headers
        return httpx.Response(status, headers=raw_headers, content=content, request=request, extensions=_HTTP11)

    async def fetch(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeouts: Mapping[str, float | None]
    ) -> tuple[int, bytes]:
        """The gateway's own path (``Downstream._send``): status and decoded body, no httpx objects built."""
        key = (timeouts.get("connect"), timeouts.get("read"), timeouts.get("pool"))
        found = self._timeouts.get(key) or self._timeout_for(key)
        try:
            async with self.session.request(
                method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                compress=False,
                auto_decompress=True,  # no httpx decoder on this path
                timeout=found,
            ) as answer:
                return answer.status, await answer.read()
        except aiohttp.ClientError as exc:
            raise _mapped(exc, httpx.Request(method, url)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
