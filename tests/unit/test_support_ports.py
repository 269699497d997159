"""The tests' own port allocation (tests/support/ports.py): xdist workers get disjoint blocks, closed ports refuse."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from support.ports import END, FIRST, closed_port_url, free_port, worker_block


def test_workers_get_disjoint_blocks_below_the_ephemeral_range() -> None:
    blocks = [worker_block(f"gw{i}", "4") for i in range(4)]
    ports = [port for block in blocks for port in block]
    assert len(ports) == len(set(ports))  # no port in two workers' blocks
    assert min(ports) >= FIRST and max(ports) < END
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert END <= low, "the blocks overlap the kernel's ephemeral ports"
    assert worker_block("", "") == range(FIRST, END)  # not under xdist: the whole range
    assert worker_block("gw5", "2") != worker_block("gw1", "2")  # a replacement worker past the count still differs


def test_free_port_is_in_this_workers_block_and_bindable() -> None:
    seen = {free_port() for _ in range(20)}
    assert len(seen) == 20  # never the same port twice in a row
    for port in seen:
        assert port in worker_block()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_closed_port_refuses_connections() -> None:
    url = closed_port_url()
    port = int(url.rsplit(":", 1)[1])
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    with socket.socket() as sock, pytest.raises(OSError):
        sock.bind(("127.0.0.1", port))  # and no server can take the port meanwhile
