"""Loopback ports for the tests that cannot keep the socket they bound, safe when pytest-xdist runs workers at once.

A server a test starts in another process (PostgreSQL, nginx, ``python -m service serve``) needs a port number
before it binds. Binding port 0 and closing the socket hands back a port of the kernel's ephemeral range, where
every outgoing connection (the load tests open thousands) and every other worker's ``bind(("127.0.0.1", 0))`` also
take theirs: between the close and the child's bind, another worker may take it. ``free_port`` picks instead from
a block below the ephemeral range that belongs to this xdist worker alone (``PYTEST_XDIST_WORKER``), checks it can
be bound, and never hands the same port out twice in one process until the block wraps.

``closed_port_url`` (a URL where connections are refused) keeps its socket bound, never listening, for the rest of
the process: no server of any worker can get that port meanwhile.
"""

from __future__ import annotations

import atexit
import itertools
import os
import random
import socket
from collections.abc import Iterator

# Below Linux's default ephemeral range (32768-60999): the kernel never hands these out for bind(0) or connect().
FIRST, END = 20_000, 32_000
_HELD: list[socket.socket] = []


@atexit.register
def _release() -> None:
    for sock in _HELD:
        sock.close()


def worker_block(worker: str | None = None, count: str | None = None) -> range:
    """This worker's share of [FIRST, END): all of it when not under xdist, else 1/N of it for worker gwI."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "") if worker is None else worker
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "") if count is None else count
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    workers = int(count) if count.isdigit() and int(count) > 0 else 1
    size = (END - FIRST) // max(workers, index + 1)
    start = FIRST + index * size
    return range(start, start + size)


def _candidates() -> Iterator[int]:
    block = worker_block()
    offset = random.randrange(len(block))  # a fresh start each run: ports a previous run left in TIME_WAIT are skipped
    return itertools.cycle([*block[offset:], *block[:offset]])


_next = _candidates()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port with connections lingering is skipped too
        except OSError:
            return False
    return True


def free_port(attempts: int = 1000) -> int:
    """A loopback port of this worker's block that nothing is bound to now, for a server started right after."""
    for _ in range(attempts):
        port = next(_next)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {worker_block()} after {attempts} tries")


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (connection refused) for as long as this process runs."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound, never listening: the port stays taken, so no server can appear on it
    _HELD.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"
