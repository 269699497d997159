"""Debian's nginx on 127.0.0.1 in front of gateway replicas, configured by the shipped template.

``docker/nginx/gateway.conf.template`` is what the compose scale-out variant mounts into the nginx image; this
renders the same file (envsubst's ``${NAME}`` syntax, the variables nginx's image substitutes) around a minimal
main configuration whose paths all live in a temporary directory, so the test exercises the shipped server block.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "docker" / "nginx" / "gateway.conf.template"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx")


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    return found or next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)


def render(upstreams: list[str], port: int) -> str:
    servers = " ".join(f"server {hostport} max_fails=3 fail_timeout=5s;" for hostport in upstreams)
    # As the image's envsubst does for defined variables only: nginx's own $host etc. stay; a ${NAME} the
    # template gained without this knowing fails here instead of reaching nginx unrendered.
    text = TEMPLATE.read_text()
    for name, value in {"GATEWAY_UPSTREAM_SERVERS": servers, "LB_PORT": f"127.0.0.1:{port}"}.items():
        text = text.replace("${" + name + "}", value)
    leftover = re.findall(r"\$\{\w+\}", text)
    if leftover:
        raise ValueError(f"{TEMPLATE} uses variables this renderer does not set: {leftover}")
    return text


class Nginx:
    """``start()`` runs nginx in the foreground of its own process; ``stop()`` quits it gracefully."""

    def __init__(self, workdir: Path, upstreams: list[str]) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian package nginx; make test installs it)")
        self.binary = binary
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "gateway.conf").write_text(render(upstreams, self.port))
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"    {kind}_temp_path {self.dir / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.dir / "nginx.conf").write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.dir / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log off;\n{temp}    include {self.dir / 'gateway.conf'};\n}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """``nginx -t``: the rendered configuration parses."""
        subprocess.run([self.binary, "-t", "-q", "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)], check=True)

    def start(self, timeout: float = 10.0) -> Nginx:
        self.check()
        self.proc = subprocess.Popen([self.binary, "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {(self.dir / 'error.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("nginx did not start listening")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
