"""Slow-loris style clients on raw TCP connections: they must neither hang the server nor block other callers.

uvicorn (httptools) has no timeout while a request body is being read (``timeout_keep_alive`` only runs between
requests), so the gateway's middleware bounds each wait for the next body chunk (``BODY_READ_TIMEOUT_S``) and
answers 408 with ``Connection: close``. Stalled clients are cut off; everyone else keeps being served.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from security_kit import assert_no_leak, dump_db, security_settings

from service.app import create_app
from service.settings import Settings
from support.servers import ServerThread, auth

TIMEOUT_S = 1.0  # the gateways below wait at most this long for the next piece of a body
STALL_BODY = b'{"name": "slow'  # the first bytes of a valid body; the rest never comes


def start_gateway(tmp: Path, downstream_url: str, **overrides: object) -> ServerThread:
    """A gateway whose body-read timeout is ``TIMEOUT_S``."""
    settings = security_settings(tmp, downstream_url, body_read_timeout_s=TIMEOUT_S, **overrides)
    return ServerThread(create_app(settings)).start()


@pytest.fixture
def slow_gw(devstack: ServerThread, tmp_path: Path) -> Iterator[ServerThread]:
    server = start_gateway(tmp_path, devstack.url)
    yield server
    server.stop()


def request_head(method: str, path: str, length: int, ctype: str = "application/json") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-teacher-token\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@contextmanager
def stalled(port: int, data: bytes) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(data)
        yield sock
    finally:
        sock.close()


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes, bool]:
    """Status, headers, body and whether the server closed the connection afterwards."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            closed = True
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.1 (\d{3})", lines[0]) if lines and lines[0] else None
    assert match, f"no HTTP response on the stalled connection: {data[:200]!r}"
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(match.group(1)), headers, body, closed


def test_default_body_read_timeout_is_bounded() -> None:
    assert 0 < Settings().body_read_timeout_s <= 60


def test_partial_body_gets_408_and_others_are_served_meanwhile(slow_gw: ServerThread, tmp_path: Path) -> None:
    before = dump_db(str(tmp_path / "gateway.db"))
    with stalled(slow_gw.port, request_head("POST", "/sessions", 200) + STALL_BODY) as sock:
        started = time.monotonic()
        with httpx.Client(base_url=slow_gw.url, timeout=5) as client:
            for _ in range(10):  # served at once while the stalled request waits for its body
                t0 = time.monotonic()
                assert client.get("/sessions", headers=auth("teacher")).status_code == 200
                assert time.monotonic() - t0 < TIMEOUT_S
        status, headers, body, closed = read_response(sock, TIMEOUT_S + 5)
        waited = time.monotonic() - started
    assert status == 408, body
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert headers.get("connection") == "close" and closed
    assert waited < TIMEOUT_S + 3
    assert_no_leak(body.decode())
    assert dump_db(str(tmp_path / "gateway.db")) == before


def test_stalled_upload_gets_408(slow_gw: ServerThread) -> None:
    part = (
        b'--B\r\nContent-Disposition: form-data; name="session_id"\r\n\r\nabc\r\n'
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\nhel'
    )
    head = request_head("POST", "/api/documents/process-and-store", 4096, "multipart/form-data; boundary=B")
    with stalled(slow_gw.port, head + part) as sock:
        status, _, body, closed = read_response(sock, TIMEOUT_S + 5)
    assert status == 408 and closed, body


def test_slow_but_steady_body_is_accepted(slow_gw: ServerThread) -> None:
    """The bound is on each wait, not on the whole body: a body trickling in faster than that is fine."""
    body = json.dumps({"name": "trickle", "metadata": {"note": "x" * 40}}).encode()
    pieces = [body[i : i + 12] for i in range(0, len(body), 12)]
    with stalled(slow_gw.port, request_head("POST", "/sessions", len(body))) as sock:
        for piece in pieces:  # ~2 s in total, each gap well under the timeout
            time.sleep(TIMEOUT_S / 3)
            sock.sendall(piece)
        assert len(pieces) * TIMEOUT_S / 3 > TIMEOUT_S
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 201")


def test_stalled_bodies_hold_capacity_only_until_the_timeout(devstack: ServerThread, tmp_path: Path) -> None:
    """With MAX_IN_FLIGHT stalled bodies the gateway sheds new work (503, as documented), and recovers
    by itself once the stalled requests time out: a slow-loris cannot keep it at capacity."""
    server = start_gateway(tmp_path, devstack.url, max_in_flight=4)
    try:
        with ExitStack() as stack, httpx.Client(base_url=server.url, timeout=5) as client:
            socks = [
                stack.enter_context(stalled(server.port, request_head("POST", "/sessions", 200) + STALL_BODY))
                for _ in range(4)
            ]
            time.sleep(0.3)
            shed = client.get("/sessions", headers=auth("teacher"))
            assert shed.status_code == 503 and shed.headers.get("retry-after") == "1", shed.text
            assert client.get("/health").status_code == 200  # probes are never shed
            for sock in socks:
                assert read_response(sock, TIMEOUT_S + 5)[0] == 408
            assert client.get("/sessions", headers=auth("teacher")).status_code == 200
    finally:
        server.stop()


def test_stalled_headers_do_not_block_others(slow_gw: ServerThread) -> None:
    """Connections that never finish their headers never reach the app (uvicorn holds them: no header
    timeout there, see the report); they cost a socket each but block nobody."""
    with ExitStack() as stack:
        for _ in range(20):
            stack.enter_context(stalled(slow_gw.port, b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "))
        with httpx.Client(base_url=slow_gw.url, timeout=5) as client:
            for _ in range(5):
                t0 = time.monotonic()
                assert client.get("/sessions", headers=auth("teacher")).status_code == 200
                assert time.monotonic() - t0 < 1.0


def test_client_leaving_mid_body_is_not_a_server_error(
    slow_gw: ServerThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up half-way through its body is logged as 499 (no one to answer), not as an
    unhandled error with a traceback; the database is untouched and the server carries on."""
    caplog.set_level(logging.INFO, logger="service")
    before = dump_db(str(tmp_path / "gateway.db"))
    with stalled(slow_gw.port, request_head("POST", "/sessions", 200) + STALL_BODY):
        time.sleep(0.2)  # the request is waiting for the rest of its body when the socket closes
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not any(getattr(r, "status", None) == 499 for r in caplog.records):
        time.sleep(0.05)
    assert any(r.name == "service.access" and getattr(r, "status", None) == 499 for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert dump_db(str(tmp_path / "gateway.db")) == before
    assert httpx.get(slow_gw.url + "/sessions", headers=auth("teacher"), timeout=5).status_code == 200
