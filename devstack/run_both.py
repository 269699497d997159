"""``make run``: the gateway and the reference downstream together, wired by env (development only).

Ctrl-C (or SIGTERM) stops both cleanly: each child gets SIGTERM, the gateway drains and checkpoints its
database, and this launcher exits when both have.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited with {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1):  # fixed local URL
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not become healthy in {timeout:.0f} s")


def main() -> int:
    env = dict(os.environ)
    ds_port = env.setdefault("DEVSTACK_PORT", "8100")
    downstream = f"http://127.0.0.1:{ds_port}"
    for name in ("AUTH_SERVICE_URL", "RAG_SERVICE_URL", "QUESTION_SERVICE_URL"):
        env.setdefault(name, downstream)
    env.setdefault("DATABASE_PATH", "./data/sessions.db")
    env.setdefault("BACKUP_DIR", "./data/backups")
    host, port = env.setdefault("HOST", "127.0.0.1"), env.setdefault("PORT", "8000")

    children: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        devstack = subprocess.Popen([sys.executable, "-m", "devstack"], env=env, start_new_session=True)
        children.append(devstack)
        _wait_healthy(f"{downstream}/health", devstack)
        gateway = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, start_new_session=True)
        children.append(gateway)
        _wait_healthy(f"http://{host}:{port}/health/ready", gateway)
        print(
            f"\n  gateway:             http://{host}:{port}  (OpenAPI: /openapi.json)\n"
            f"  reference downstream: {downstream}  (dev tokens: dev-admin-token, dev-teacher-token, "
            "dev-teacher2-token, dev-student-token)\n  database:            "
            f"{env['DATABASE_PATH']}\n  Ctrl-C stops both.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        stop()
        codes = []
        for child in children:
            try:
                codes.append(child.wait(timeout=15))
            except subprocess.TimeoutExpired:
                child.kill()
                codes.append(child.wait())
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
