"""Accepting connections in batches, so a busy event loop does not leave clients waiting in the accept queue.

libuv (under uvloop) accepts one connection per loop iteration (libuv PR 3696). Under saturation an iteration
lasts tens of milliseconds, so a burst of new connections (a load test starting, a client pool reconnecting)
drains from the kernel's accept queue at a few dozen per second: their first requests waited there for seconds
while requests on connections already accepted were served in well under one (bench: rag at 1000 connections, p99
7.5 s against a server-side maximum of 2.5 s; ``ss -ltn`` showed ~800 connections queued). ``Listener`` accepts
up to ``batch`` connections each time the socket is readable and hands each to the loop
(``connect_accepted_socket``), so every connection reaches the server's first-come-first-served queues at once.

With ``WORKERS`` > 1 every worker accepts from the one shared socket; a bounded batch keeps one worker from
taking a whole burst while others are idle.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("service")

ProtocolFactory = Callable[[], asyncio.Protocol]
# Out of descriptors or memory: stop accepting for a moment instead of spinning on a readable socket.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RESOURCE_PAUSE_S = 0.1


class Listener:
    """What uvicorn needs of an ``asyncio.Server`` (``close``, ``wait_closed``), accepting in batches."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: ProtocolFactory,
        *,
        backlog: int,
        batch: int = 64,
        owns_socket: bool = False,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._batch = batch
        self._owns = owns_socket
        self._closed = False
        self._pending: set[asyncio.Task[object]] = set()
        sock.setblocking(False)
        sock.listen(backlog)
        loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def _accept(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                log.error("cannot accept connections for %.1f s: %s", RESOURCE_PAUSE_S, exc)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(RESOURCE_PAUSE_S, self._resume)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            self._pending.add(task)
            task.add_done_callback(functools.partial(self._connected, conn))

    def _connected(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.warning("an accepted connection could not be set up: %r", task.exception())
            conn.close()

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting (connections already accepted are uvicorn's to drain)."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._owns:
            self._sock.close()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
