"""``service.listener.Listener``: a burst of connections is accepted in a few loop turns even when each turn is
long (libuv alone accepts one connection per turn), and accepted sockets are not leaked."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import uvicorn
import uvloop

from service.listener import Listener

BURST = 200


class Counting(asyncio.Protocol):
    made = 0
    lost = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made += 1
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        Counting.lost += 1


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_burst_is_accepted_within_a_few_long_loop_turns() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        Counting.made = Counting.lost = 0
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        fds_before = open_fds()
        listener = Listener(loop, listening, Counting, backlog=1024, batch=64, owns_socket=True)
        clients = []
        try:
            for _ in range(BURST):  # the kernel completes these handshakes; they wait in the accept queue
                c = socket.socket()
                clients.append(c)
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
            turns = 0
            done = asyncio.Event()

            def busy_turn() -> None:  # a saturated server: each loop turn is long
                nonlocal turns
                turns += 1
                time.sleep(0.005)
                if turns < 12:
                    loop.call_soon(busy_turn)
                else:
                    done.set()

            loop.call_soon(busy_turn)
            await done.wait()
            # 200 queued connections, 64 per readable event: four turns (one per turn: 12 of 200 here)
            assert Counting.made == BURST, f"{Counting.made} of {BURST} accepted after {turns} turns"
        finally:
            for c in clients:
                c.close()
        for _ in range(200):
            if Counting.lost == Counting.made:
                break
            await asyncio.sleep(0.01)
        assert Counting.lost == BURST
        listener.close()
        await listener.wait_closed()
        assert open_fds() <= fds_before  # every accepted socket closed with its connection, the listener too

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_what_the_start_up_override_uses_of_uvicorn_is_still_there() -> None:
    """``service.__main__.serve`` replaces ``uvicorn.Server.startup`` to listen through ``Listener``."""
    config = uvicorn.Config(
        lambda scope, receive, send: None, host="127.0.0.1", port=0, loop="uvloop", http="httptools"
    )
    config.load()
    server = uvicorn.Server(config)
    assert callable(config.http_protocol_class) and isinstance(config.backlog, int)
    assert callable(config.bind_socket)
    assert hasattr(server, "server_state") and hasattr(server, "started")
    lifespan = config.lifespan_class(config)
    assert callable(lifespan.startup) and callable(lifespan.shutdown) and hasattr(lifespan, "state")
    assert hasattr(lifespan, "should_exit")
