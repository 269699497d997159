"""The aiohttp transport against a real peer on 127.0.0.1: a small asyncio server that answers as each test says
(keep-alive, gzip, Set-Cookie, a body cut short, no answer), so what reaches ``Downstream`` is what a socket gives."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from service.downstream import Downstream
from service.downstream.aiohttp_transport import AiohttpTransport
from service.downstream.client import DownstreamBadAnswer, DownstreamTimeout, DownstreamUnavailable
from service.settings import Settings

Answer = Callable[[bytes], Awaitable[bytes | None]]  # request head -> raw answer (None: close without one)


class Peer:
    """Answers each request with ``answer(head)``; records request heads and the connections they came on."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.connections = 0
        self.close_after_answer = False
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                self.heads.append(head + body)
                raw = await self.answer(head)
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def reply(body: bytes, *, status: str = "200 OK", extra: str = "", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Peer]]]:
    peers: list[Peer] = []

    async def start(answer: Answer) -> Peer:
        peer = Peer(answer)
        peer.server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        assert peer.server is not None
        peer.server.close()
        await peer.server.wait_closed()


def downstream(url: str, **overrides: Any) -> Downstream:
    settings = Settings(
        rag_service_url=url,
        auth_service_url=url,
        question_service_url=url,
        http_transport="aiohttp",
        http_retries=0,
        http_connect_timeout_s=1.0,
        http_read_timeout_s=0.5,
    ).replace(**overrides)
    ds = Downstream(settings)
    assert isinstance(ds.transport, AiohttpTransport)
    return ds


async def test_json_answer_keep_alive_and_request_shape(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    async def answer(head: bytes) -> bytes:
        return reply(json.dumps({"answer": "ok", "n": len(head)}).encode())

    peer = await serve(answer)
    ds = downstream(peer.url)
    try:
        for k in range(3):
            got = await ds.call("rag", "POST", "/query", json_body={"query": f"ç {k}"}, headers={"Authorization": "x"})
            assert got.status == 200 and got.body["answer"] == "ok"
    finally:
        await ds.aclose()
    assert peer.connections == 1  # one kept-alive connection carried all three
    first = peer.heads[0]
    assert first.startswith(b"POST /query HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json" in first and b"\r\nAuthorization: x" in first
    assert b"X-Request-ID:" in first
    assert first.endswith(json.dumps({"query": "ç 0"}, ensure_ascii=False, separators=(",", ":")).encode())


async def test_gzip_answer_is_decoded_on_both_paths(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    payload = json.dumps({"answer": "zipped"}).encode()

    async def answer(head: bytes) -> bytes:
        return reply(gzip.compress(payload), extra="Content-Encoding: gzip\r\n")

    peer = await serve(answer)
    ds = downstream(peer.url)
    try:
        assert (await ds.call("rag", "GET", "/x")).body == {"answer": "zipped"}
        # the transport is a whole httpx transport too (what the shared httpx.AsyncClient closes and can call)
        via_httpx = await ds.client.get(peer.url + "/x")
        assert via_httpx.status_code == 200 and via_httpx.json() == {"answer": "zipped"}
    finally:
        await ds.aclose()


async def test_cookies_never_travel_to_the_next_call(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    async def answer(head: bytes) -> bytes:
        return reply(b"{}", extra="Set-Cookie: session=alice; Path=/\r\n")

    peer = await serve(answer)
    ds = downstream(peer.url)
    try:
        await ds.call("rag", "GET", "/a")
        await ds.call("rag", "GET", "/b")
        await ds.client.get(peer.url + "/c")
    finally:
        await ds.aclose()
    assert len(peer.heads) == 3
    assert not any(b"cookie:" in head.lower() for head in peer.heads)


async def test_body_cut_short_is_502(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    async def answer(head: bytes) -> bytes | None:
        return reply(b'{"answer": "tr', length=100)  # promises 100 bytes, then the peer hangs up

    peer = await serve(answer)
    peer.close_after_answer = True
    ds = downstream(peer.url)
    try:
        with pytest.raises(DownstreamBadAnswer):
            await ds.call("rag", "POST", "/query", json_body={})
        assert ds.pool_stats() == {"in_use": 0}
    finally:
        await ds.aclose()


async def test_no_answer_is_504_and_refused_is_503(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    async def silent(head: bytes) -> bytes | None:
        await asyncio.sleep(5)
        return None

    peer = await serve(silent)
    ds = downstream(peer.url)
    try:
        with pytest.raises(DownstreamTimeout):
            await ds.call("rag", "POST", "/query", json_body={})
    finally:
        await ds.aclose()
    assert peer.server is not None
    url = peer.url
    peer.server.close()
    await peer.server.wait_closed()
    gone = downstream(url)
    try:
        with pytest.raises(DownstreamUnavailable) as caught:
            await gone.call("rag", "GET", "/x")
        assert caught.value.status == 503
    finally:
        await gone.aclose()


async def test_error_status_with_text_body_is_kept_as_text(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    async def answer(head: bytes) -> bytes:
        return reply("upstream says nö".encode(), status="500 Internal Server Error")

    peer = await serve(answer)
    ds = downstream(peer.url)
    try:
        with pytest.raises(DownstreamBadAnswer) as caught:
            await ds.call("rag", "POST", "/query", json_body={})
    finally:
        await ds.aclose()
    assert caught.value.details is not None
    assert caught.value.details["status"] == 500 and caught.value.details["body"] == "upstream says nö"


def test_httpx_transport_setting_still_builds_httpcore() -> None:
    ds = Downstream(Settings(http_transport="httpx"))
    assert isinstance(ds.transport, httpx.AsyncHTTPTransport)
