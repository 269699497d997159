"""The downstream transports against a real peer on 127.0.0.1: a small asyncio server that answers as each test
says (keep-alive, gzip, Set-Cookie, chunked, a body cut short, no answer), so what reaches ``Downstream`` is what a
socket gives. Every test runs on the gateway's own HTTP/1.1 transport (the default) and on aiohttp."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvloop

from service.downstream import Downstream
from service.downstream.aiohttp_transport import AiohttpTransport
from service.downstream.client import DownstreamBadAnswer, DownstreamTimeout, DownstreamUnavailable
from service.downstream.http11 import Http11Transport
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


KIND = {"native": Http11Transport, "aiohttp": AiohttpTransport}


@pytest.fixture(params=sorted(KIND))
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def downstream(transport: str) -> Callable[..., Downstream]:
    def make(url: str, **overrides: Any) -> Downstream:
        settings = Settings(
            rag_service_url=url,
            auth_service_url=url,
            question_service_url=url,
            http_transport=transport,  # type: ignore[arg-type]
            http_retries=0,
            http_connect_timeout_s=1.0,
            http_read_timeout_s=0.5,
        ).replace(**overrides)
        ds = Downstream(settings)
        assert isinstance(ds.transport, KIND[transport])
        return ds

    return make


async def test_json_answer_keep_alive_and_request_shape(
    serve: Callable[[Answer], Awaitable[Peer]], downstream: Callable[..., Downstream]
) -> None:
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


async def test_gzip_answer_is_decoded_on_both_paths(
    serve: Callable[[Answer], Awaitable[Peer]], downstream: Callable[..., Downstream]
) -> None:
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


async def test_cookies_never_travel_to_the_next_call(
    serve: Callable[[Answer], Awaitable[Peer]], downstream: Callable[..., Downstream]
) -> None:
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


async def test_body_cut_short_is_502(
    serve: Callable[[Answer], Awaitable[Peer]], downstream: Callable[..., Downstream]
) -> None:
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


async def test_no_answer_is_504_and_refused_is_503(
    serve: Callable[[Answer], Awaitable[Peer]], downstream: Callable[..., Downstream]
) -> None:
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


async def test_error_status_with_text_body_is_kept_as_text(
    serve: Callable[[Answer], Awaitable[Peer]], downstream: Callable[..., Downstream]
) -> None:
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


# -- the gateway's own transport: its pool and the HTTP/1.1 corners it handles --------------------------------
def native(url: str, **overrides: Any) -> Downstream:
    settings = Settings(
        rag_service_url=url,
        auth_service_url=url,
        question_service_url=url,
        http_transport="native",
        http_retries=0,
        http_connect_timeout_s=1.0,
        http_read_timeout_s=2.0,
    ).replace(**overrides)
    return Downstream(settings)


async def test_pool_limit_waits_first_come_first_served(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    order: list[bytes] = []

    async def answer(head: bytes) -> bytes:
        await asyncio.sleep(0.05)
        order.append(head.split(b" ")[1])
        return reply(b"{}")

    peer = await serve(answer)
    ds = native(peer.url, http_max_connections=2, http_max_keepalive=2, downstream_max_concurrency=50)
    try:
        calls = []
        for k in range(8):
            calls.append(asyncio.ensure_future(ds.call("rag", "GET", f"/q{k}")))
            await asyncio.sleep(0.002)  # they queue in this order
        await asyncio.gather(*calls)
        assert ds.pool_stats() == {"in_use": 0}
    finally:
        await ds.aclose()
    assert peer.connections == 2  # never more than the limit, and both reused
    assert order[2:] == [f"/q{k}".encode() for k in range(2, 8)]  # the waiters were served in arrival order


async def test_pool_wait_past_its_bound_is_503(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    async def slow(head: bytes) -> bytes:
        await asyncio.sleep(0.5)
        return reply(b"{}")

    peer = await serve(slow)
    ds = native(peer.url, http_max_connections=1, http_max_keepalive=1, http_pool_timeout_s=0.05)
    try:
        first = asyncio.ensure_future(ds.call("rag", "GET", "/slow"))
        await asyncio.sleep(0.02)
        with pytest.raises(DownstreamUnavailable):
            await ds.call("rag", "GET", "/waits")
        assert (await first).status == 200
        assert ds.pool_stats() == {"in_use": 0}
    finally:
        await ds.aclose()


async def test_idle_connections_expire_and_a_peer_closing_one_is_not_an_error(
    serve: Callable[[Answer], Awaitable[Peer]],
) -> None:
    async def answer(head: bytes) -> bytes:
        return reply(b"{}")

    peer = await serve(answer)
    ds = native(peer.url, http_keepalive_expiry_s=0.1)
    try:
        await ds.call("rag", "GET", "/a")
        await asyncio.sleep(0.2)  # past the expiry: a new connection
        await ds.call("rag", "GET", "/b")
        assert peer.connections == 2
        peer.close_after_answer = True
        await ds.call("rag", "GET", "/c")  # the peer closes this one after answering
        await asyncio.sleep(0.05)
        peer.close_after_answer = False
        assert (await ds.call("rag", "GET", "/d")).status == 200  # not the dead connection
        assert peer.connections == 3  # /a; /b after the expiry, reused by /c and closed by the peer; /d
    finally:
        await ds.aclose()


async def test_chunked_close_delimited_and_interim_answers(serve: Callable[[Answer], Awaitable[Peer]]) -> None:
    async def answer(head: bytes) -> bytes:
        path = head.split(b" ")[1]
        if path == b"/chunked":
            return b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
        if path == b"/continue":
            return b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b'{"after": "interim"}')
        return b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"until": "eof"}'

    peer = await serve(answer)
    ds = native(peer.url)
    try:
        assert (await ds.call("rag", "GET", "/chunked")).body == {"a": 1}
        assert (await ds.call("rag", "GET", "/continue")).body == {"after": "interim"}
        peer.close_after_answer = True
        assert (await ds.call("rag", "GET", "/eof")).body == {"until": "eof"}
        assert ds.pool_stats() == {"in_use": 0}
    finally:
        await ds.aclose()


async def test_request_target_is_escaped_and_headers_cannot_be_injected(
    serve: Callable[[Answer], Awaitable[Peer]],
) -> None:
    async def answer(head: bytes) -> bytes:
        return reply(b"{}")

    peer = await serve(answer)
    ds = native(peer.url)
    try:
        await ds.call("rag", "GET", "/sessions/a b\r\nX-Evil: 1/chunks?limit=5")
        with pytest.raises(DownstreamBadAnswer):
            await ds.call("rag", "GET", "/x", headers={"Authorization": "Bearer a\r\nX-Evil: 1"})
    finally:
        await ds.aclose()
    # (URL parsing drops CR and LF, as browsers do; the space is escaped)
    assert peer.heads[0].startswith(b"GET /sessions/a%20bX-Evil:%201/chunks?limit=5 HTTP/1.1\r\nHost: ")
    assert len(peer.heads) == 1 and b"X-Evil: 1\r\n" not in peer.heads[0]


async def test_a_cancelled_call_closes_its_connection_and_frees_the_slot(
    serve: Callable[[Answer], Awaitable[Peer]],
) -> None:
    async def slow(head: bytes) -> bytes:
        await asyncio.sleep(1)
        return reply(b"{}")

    peer = await serve(slow)
    ds = native(peer.url, http_max_connections=1, http_max_keepalive=1)
    try:
        call = asyncio.ensure_future(ds.call("rag", "GET", "/slow"))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert ds.pool_stats() == {"in_use": 0}
        peer.answer = lambda head: asyncio.sleep(0, reply(b'{"fresh": true}'))
        assert (await ds.call("rag", "GET", "/next")).body == {"fresh": True}
    finally:
        await ds.aclose()
    assert peer.connections == 2  # the cancelled exchange's connection was not reused


def test_native_transport_on_uvloop() -> None:
    """Production runs on uvloop, whose transports differ from asyncio's (e.g. not ``asyncio.Transport``
    subclasses): the main paths once more on it."""

    async def scenario() -> None:
        async def answer(head: bytes) -> bytes | None:
            path = head.split(b" ")[1]
            if path == b"/slow":
                await asyncio.sleep(1)
            if path == b"/chunked":
                return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
            if path == b"/cut":
                return reply(b'{"a', length=50)
            return reply(json.dumps({"path": path.decode()}).encode())

        peer = Peer(answer)
        peer.server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        ds = native(peer.url, http_read_timeout_s=0.3, http_max_connections=2, http_max_keepalive=2)
        try:
            got = await asyncio.gather(*(ds.call("rag", "POST", f"/q{k}", json_body={"k": k}) for k in range(6)))
            assert [g.body for g in got] == [{"path": f"/q{k}"} for k in range(6)]
            assert (await ds.call("rag", "GET", "/chunked")).body == {}
            with pytest.raises(DownstreamTimeout):
                await ds.call("rag", "GET", "/slow")
            peer.close_after_answer = True
            with pytest.raises(DownstreamBadAnswer):
                await ds.call("rag", "GET", "/cut")
            peer.close_after_answer = False
            assert (await ds.call("rag", "GET", "/after")).body == {"path": "/after"}
            assert ds.pool_stats() == {"in_use": 0}
        finally:
            await ds.aclose()
            peer.server.close()
            await peer.server.wait_closed()
        assert peer.connections <= 5  # 2 for the six calls, then the timed-out and the cut ones were replaced

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(scenario())
