"""Real uvicorn servers on 127.0.0.1 with a random port, each in its own thread and event loop."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from service.settings import Settings

DEV_TOKENS = {
    "admin": "dev-admin-token",
    "teacher": "dev-teacher-token",
    "teacher2": "dev-teacher2-token",
    "student": "dev-student-token",
}


def gateway_settings(tmp_path: Path, downstream_url: str, **overrides: Any) -> Settings:
    """Settings of a test gateway: its database at ``tmp_path / "gateway.db"``, every downstream at one URL."""
    return Settings(
        database_path=str(tmp_path / "gateway.db"),
        auth_service_url=downstream_url,
        rag_service_url=downstream_url,
        question_service_url=downstream_url,
        backup_dir=str(tmp_path / "backups"),
        http_read_timeout_s=5.0,
        log_level="warning",
    ).replace(**overrides)


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {DEV_TOKENS[role]}"}


class ServerThread:
    """Runs an ASGI app under uvicorn (uvloop + httptools, as in production) until ``stop()``."""

    def __init__(self, app: Any, *, loop: str = "uvloop", graceful_s: int = 5) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            loop=loop,
            http="httptools",
            lifespan="on",
            timeout_graceful_shutdown=graceful_s,
            log_config=None,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    def start(self, timeout: float = 15.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                self.thread.join(timeout)
                self.sock.close()
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError("server thread did not stop")


GatewayFactory = Callable[..., ServerThread]
"""``make_gateway``: settings overrides (and ``downstream=``) in, a started real server out."""
