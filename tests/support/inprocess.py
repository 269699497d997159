"""An ASGI app served in the test's own event loop: no socket, no thread, no uvicorn.

``InProcessServer`` runs the app's lifespan through the ASGI lifespan protocol in a task of its own (as uvicorn
does, so the lifespan enters and exits in one task) and hands every request a shallow copy of the state the
lifespan filled, exactly as uvicorn does; ``client()`` reaches it through ``httpx.ASGITransport``.

What it cannot show: real ``Content-Length`` streaming, client disconnects, slow clients, body-read timeouts,
in-flight shedding under real connections, graceful shutdown. Tests of those keep ``support.servers.ServerThread``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

IN_PROCESS_URL = "http://gateway.test"


class InProcessServer:
    """Runs ``app``'s lifespan in the running loop from ``start()`` until ``stop()``."""

    def __init__(self, app: Starlette, *, url: str = IN_PROCESS_URL, answer_s: float = 15.0) -> None:
        self.app = app
        self.url = url
        self.answer_s = answer_s  # longest wait for the lifespan to start or stop
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app as a server presents it: each request scope carries its own copy of the lifespan state."""
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": self.state.copy()}
        await self.app(scope, receive, send)

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind.endswith(".failed"):
            self._failure = str(message.get("message", ""))
        if kind.startswith("lifespan.startup."):
            self._started.set()
        elif kind.startswith("lifespan.shutdown."):
            self._stopped.set()

    async def _lifespan(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        await self.app(scope, self._receive, self._send)

    async def _until(self, event: asyncio.Event) -> None:
        assert self._task is not None
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, self._task}, timeout=self.answer_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._failure is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=self.answer_s)  # the app re-raises after reporting failure
        if self._task.done() and not self._task.cancelled() and self._task.exception() is not None:
            error = self._task.exception()
            raise RuntimeError(f"lifespan failed: {self._failure or error!r}") from error
        if self._failure is not None:
            raise RuntimeError(f"lifespan failed: {self._failure}")
        if not event.is_set():
            raise TimeoutError(f"lifespan did not answer within {self.answer_s} s")

    async def start(self) -> InProcessServer:
        self._task = asyncio.create_task(self._lifespan(), name="in-process-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        await self._until(self._started)
        return self

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            return
        await self._inbox.put({"type": "lifespan.shutdown"})
        await self._until(self._stopped)
        await self._task

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client whose requests go straight into the app (application errors propagate, unlike over a socket)."""
        transport = httpx.ASGITransport(app=self, client=("127.0.0.1", 50000))
        return httpx.AsyncClient(transport=transport, base_url=self.url, **kwargs)


AppGatewayFactory = Callable[..., Awaitable["InProcessServer"]]
"""``make_app_gateway``: settings overrides (and ``downstream=``) in, a started in-process gateway out."""
