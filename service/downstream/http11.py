"""The gateway's own HTTP/1.1 client transport: a keep-alive pool of asyncio protocols parsed by httptools.

Why: a RAG query's downstream call through aiohttp cost about a fifth of the gateway's CPU per request (request
and response objects, payload registry, tracing hooks, cookie and redirect machinery), for a call that is always
one small request and one small answer read whole (bench/README.md, "CPU per RAG request"). This transport does
only that: one ``write`` per request, the answer parsed by httptools (uvicorn's parser) into one ``bytes``.

What it keeps from a full client: a connection limit with first-come-first-served waiting for a free slot (a
bounded wait, then ``PoolTimeout``), idle connections reused newest first and dropped after the keep-alive
expiry or when the peer closes them, connect / read / pool timeouts, TLS through ``ssl``, chunked and
length-delimited and close-delimited bodies, gzip/deflate answers decoded, failures raised as the httpx
exceptions ``Downstream`` classifies (connect errors and timeouts before anything was sent, protocol and read
errors after). It sends no cookies, follows no redirects and never retries by itself.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httptools
import httpx

Key = tuple[str, str, int]  # scheme, host, port
MAX_BODY_BYTES = 64 * 1024 * 1024  # an answer larger than this is refused (the gateway reads answers whole)
_FORBIDDEN = frozenset("\r\n\x00")
_TARGET_SAFE = "/?&=%:@!$'()*+,;~-._"


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; one request at a time. ``exchange`` sends a request and awaits its answer."""

    def __init__(self, key: Key, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.last_used = loop.time()
        self._waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_s = 0.0
        self._last_data = 0.0
        self._head = False
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._delimited = False  # Content-Length or chunked: the end is known without the connection closing
        self._received = False
        self.reusable = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self._received = True
        self._last_data = self.loop.time()
        if self._waiter is None:  # bytes nobody asked for (or after the answer): the connection is unusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._delimited:  # the answer's end is the connection's end
            self._finish(reusable=False)
            return
        if self._received:
            self._fail(httpx.ReadError("the peer closed the connection in the middle of its answer"))
        else:
            self._fail(httpx.RemoteProtocolError("the peer closed the connection without answering"))

    # -- httptools callbacks --------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._headers_done = True
        if self._status < 200:  # 1xx: an interim answer; the real one follows on the same connection
            self._reset()
            self._received = True
        elif self._head:  # an answer to HEAD has no body, whatever its headers say; not reused (parser state)
            self._finish(reusable=False)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY_BYTES:
            self._fail(httpx.ReadError(f"answer larger than {MAX_BODY_BYTES} bytes"))
            self.close()
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status >= 200:
            self._finish(reusable=self.parser.should_keep_alive())

    # -- the exchange -----------------------------------------------------------------------------------------
    def _finish(self, *, reusable: bool) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reusable = reusable and not self.closed
        if waiter is not None and not waiter.done():
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            waiter.set_result((self._status, self._headers, body))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _check_read(self) -> None:
        """Read timeout: no byte for ``read_s``. One timer per request, pushed back only when it fires."""
        idle = self.loop.time() - self._last_data
        if idle >= self._read_s:
            self._timer = None
            self._fail(httpx.ReadTimeout(f"no answer within {self._read_s:g} s"))
            self.close()
        else:
            self._timer = self.loop.call_later(self._read_s - idle, self._check_read)

    async def exchange(
        self, data: bytes, read_s: float | None, *, head: bool = False
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self.transport is not None
        self._head = head
        self._reset()
        waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] = self.loop.create_future()
        self._waiter = waiter
        self._last_data = self.loop.time()
        if read_s is not None:
            self._read_s = read_s
            self._timer = self.loop.call_later(read_s, self._check_read)
        self.transport.write(data)
        return await waiter

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class _Target:
    """What a URL string becomes once: the pool key, the request target and the Host header."""

    __slots__ = ("host_header", "key", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise httpx.UnsupportedProtocol(f"unsupported URL {url!r}: only http:// and https://")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        self.key: Key = (parts.scheme, parts.hostname, port)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.host_header = host if port == default else f"{host}:{port}"
        target = parts.path or "/"
        target = f"{target}?{parts.query}" if parts.query else target
        # what is not allowed in a request target is percent-encoded, as httpx does (existing escapes kept)
        self.target = quote(target, safe=_TARGET_SAFE)


class Http11Transport(httpx.AsyncBaseTransport):
    """``max_connections`` open at once over all peers, at most ``max_keepalive`` of them idle."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_keepalive: int,
        keepalive_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max = max_connections
        self._max_idle = max_keepalive
        self._keepalive_s = keepalive_s
        self._ssl = ssl_context
        self._idle: dict[Key, list[_Connection]] = {}
        self._n_idle = 0
        self._open = 0  # connections open or being opened (idle ones included)
        self._waiters: collections.deque[tuple[Key, asyncio.Future[_Connection | None]]] = collections.deque()
        self._targets: dict[str, _Target] = {}
        self._closed = False

    # -- public -------------------------------------------------------------------------------------------
    def in_use(self) -> int:
        return self._open - self._n_idle

    async def fetch(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeouts: Mapping[str, float | None]
    ) -> tuple[int, bytes]:
        """The gateway's own path (``Downstream._send``): status and decoded body."""
        status, raw_headers, content = await self._exchange(method, url, headers.items(), body, timeouts)
        for name, value in raw_headers:
            if name.lower() == b"content-encoding":
                content = _decode(value, content)
        return status, content

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The same exchange as an httpx transport (what the shared ``httpx.AsyncClient`` sees); httpx decodes."""
        body = await request.aread()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("host", "content-length")]
        status, raw_headers, content = await self._exchange(
            request.method, str(request.url), headers, body, request.extensions.get("timeout", {})
        )
        return httpx.Response(
            status, headers=raw_headers, content=content, request=request, extensions={"http_version": b"HTTP/1.1"}
        )

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        self._n_idle = 0
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(httpx.PoolTimeout("the client is closing"))

    # -- one exchange --------------------------------------------------------------------------------------
    def _target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is None:
            if len(self._targets) >= 1024:  # paths with ids in them: keep the cache bounded
                self._targets.clear()
            found = self._targets[url] = _Target(url)
        return found

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Any,
        body: bytes,
        timeouts: Mapping[str, float | None],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        target = self._target(url)
        lines = [f"{method} {target.target} HTTP/1.1\r\nHost: {target.host_header}\r\n"]
        for name, value in headers:
            if _FORBIDDEN.intersection(name) or _FORBIDDEN.intersection(value) or ":" in name:
                raise httpx.LocalProtocolError(f"invalid header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        data = "".join(lines).encode("latin-1") + body
        conn = await self._acquire(target.key, timeouts)
        try:
            answer = await conn.exchange(data, timeouts.get("read"), head=method == "HEAD")
        except BaseException:
            conn.close()  # mid-exchange (timeout, cancelled, failed): never reused
            self._release(conn)
            raise
        self._release(conn)
        return answer

    # -- the pool ------------------------------------------------------------------------------------------
    async def _acquire(self, key: Key, timeouts: Mapping[str, float | None]) -> _Connection:
        if self._closed:
            raise httpx.PoolTimeout("the client is closed")
        loop = asyncio.get_running_loop()
        idle = self._idle.get(key)
        now = loop.time()
        while idle:
            conn = idle.pop()  # newest first: the oldest ones expire
            self._n_idle -= 1
            if not conn.closed and now - conn.last_used < self._keepalive_s:
                return conn
            conn.close()
            self._open -= 1
        if self._open >= self._max and not self._waiters and self._n_idle:
            self._evict_idle()  # full, but of idle connections to other peers: one of them makes room
            self._open += 1
        elif self._open >= self._max or self._waiters:
            # full (or others already waiting: no overtaking): wait in line for a connection or a free slot
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append((key, waiter))
            await asyncio.wait((waiter,), timeout=timeouts.get("pool"))
            if not waiter.done():
                waiter.cancel()
                raise httpx.PoolTimeout(f"no free connection within {timeouts.get('pool')} s")
            handed = waiter.result()
            if handed is not None:
                return handed
            # a slot was handed over (counted in ``_open`` already): connect below
        else:
            self._open += 1
        try:
            return await self._connect(key, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._hand_over(None)
            raise

    def _evict_idle(self) -> None:
        """Close the least recently used idle connection (to any peer); its slot is freed."""
        oldest = min((c for conns in self._idle.values() for c in conns), key=lambda c: c.last_used)
        self._idle[oldest.key].remove(oldest)
        self._n_idle -= 1
        self._open -= 1
        oldest.close()

    async def _connect(self, key: Key, connect_s: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(connect_s):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(key, loop), host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {connect_s} s") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return protocol

    def _release(self, conn: _Connection) -> None:
        """After an exchange: hand the connection to the first waiter, keep it idle, or close it."""
        reusable = conn.reusable and not conn.closed and not self._closed
        if reusable and self._waiters and self._waiters[0][0] == conn.key and self._hand_over(conn):
            return
        if reusable and self._n_idle < self._max_idle and not self._waiters:
            conn.last_used = conn.loop.time()
            self._idle.setdefault(conn.key, []).append(conn)
            self._n_idle += 1
            return
        conn.close()
        if not self._hand_over(None):  # the slot goes to the first waiter, else it is free
            self._open -= 1

    def _hand_over(self, conn: _Connection | None) -> bool:
        """Give ``conn`` (or, with None, the right to open one) to the first live waiter; False if none."""
        while self._waiters:
            key, waiter = self._waiters.popleft()
            if waiter.done():  # it timed out
                continue
            if conn is not None and key != conn.key:
                conn.close()
                conn = None
            waiter.set_result(conn)
            return True
        if conn is not None:
            conn.close()
        return False


def _decode(encoding: bytes, content: bytes) -> bytes:
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return content
    if name in (b"gzip", b"x-gzip", b"deflate"):
        try:
            return zlib.decompressobj(wbits=47 if name != b"deflate" else 15).decompress(content)
        except zlib.error as exc:
            raise httpx.DecodingError(f"bad {name.decode()} body: {exc}") from None
    raise httpx.DecodingError(f"unsupported Content-Encoding {name.decode(errors='replace')!r}")
