"""``WORKERS`` > 1: one supervisor process, that many worker processes serving one port.

The supervisor migrates a SQLite schema before any worker opens the database (PostgreSQL's is the migration job's:
the supervisor only refuses a newer one), binds the listening socket and starts each worker as
``python -m service serve`` with that socket inherited (``--listen-fd``). It serves nothing itself:
it replaces a worker that dies, stops everything when one cannot start, and drains all of them on SIGTERM/SIGINT.

One socket shared by the workers rather than ``SO_REUSEPORT`` (one socket per worker), as uvicorn's and gunicorn's
multiprocess modes do, because:

- tail latency: all workers take connections from one accept queue, so a worker whose loop is busy (a slow
  request, a GC pause) simply does not accept while an idle one does. ``SO_REUSEPORT`` hashes each connection to
  one worker's queue whatever that worker is doing, so connections wait behind a busy worker while others idle.
  The shared queue's spread is uneven when the load is light (whichever worker wakes first wins), which costs no
  latency;
- errors: when a worker dies, connections still waiting in the queue are accepted by the others. With
  ``SO_REUSEPORT`` the dead worker's own queue dies with its socket and those clients get a reset.

A worker's exit code tells the supervisor what happened: 3 (or 2) means it could not start, which a restart would
not cure, so everything stops with that code; anything else (a crash, a SIGKILL, the OOM killer) is logged and the
worker replaced, right away the first time in a minute and then after a doubling delay (up to
``MAX_RESTART_DELAY_S``), so a crash loop does not spin. Each worker watches a pipe from the supervisor and shuts
down gracefully when the supervisor is gone, so a killed supervisor leaves no worker holding the port.

Metrics: the supervisor makes a temporary ``PROMETHEUS_MULTIPROC_DIR`` for the workers (``service.metrics``),
removes a dead worker's live gauges from it (``mark_process_dead``) and deletes it at exit.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from service.settings import Settings

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_STARTUP = 3
BACKLOG = 2048  # uvicorn's default
DRAIN_MARGIN_S = 5.0  # past SHUTDOWN_TIMEOUT_S: a worker's lifespan shutdown (jobs stopped, database closed)
RESTART_WINDOW_S = 60.0
MAX_RESTART_DELAY_S = 10.0
TICK_S = 0.5  # the longest the loop sleeps without a signal (a missed SIGCHLD costs at most this)

log = logging.getLogger("service")


@dataclass(slots=True)
class Worker:
    slot: int
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"


def restart_delay(deaths_in_window: int) -> float:
    """No wait for the first death in ``RESTART_WINDOW_S``, then 0.5 s doubling up to ``MAX_RESTART_DELAY_S``."""
    if deaths_in_window <= 1:
        return 0.0
    return float(min(MAX_RESTART_DELAY_S, 0.5 * 2 ** (deaths_in_window - 2)))


def listen(host: str, port: int) -> socket.socket:
    """The one listening socket every worker inherits (bound and listening here, so connections queue while the
    workers start instead of being refused)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.workers: dict[int, Worker] = {}  # slot -> running worker
        self.pending: dict[int, float] = {}  # slot -> when to start its replacement
        self.deaths: collections.deque[float] = collections.deque()
        self.signals: list[int] = []
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.failure: str | None = None
        self.metrics_dir = tempfile.mkdtemp(prefix="service-metrics-")
        # Workers hold the read end; it reads EOF once this process is gone, however it went.
        self.alive_r, self.alive_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    # -- signals -------------------------------------------------------------------------------------------------
    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)  # acted on by the loop (woken by the wakeup fd)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda sig, frame: None)  # a handler, so a child's exit wakes the loop

    # -- workers -------------------------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        argv = [sys.executable, *(f"-W{option}" for option in sys.warnoptions), "-m", "service", "serve"]
        argv += ["--listen-fd", str(self.sock.fileno()), "--supervisor-fd", str(self.alive_r)]
        argv += ["--metrics-dir", self.metrics_dir]
        # The worker reads the same environment (so the same settings); prometheus_client picks its
        # multiprocess mode from PROMETHEUS_MULTIPROC_DIR when it is imported.
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir, "WORKERS": str(self.settings.workers)}
        proc = subprocess.Popen(  # our own interpreter and module
            argv, env=env, stdin=subprocess.DEVNULL, pass_fds=(self.sock.fileno(), self.alive_r)
        )
        self.workers[slot] = Worker(slot, proc)
        log.info("worker %d started (pid %d)", slot, proc.pid)

    def _reap(self) -> None:
        for slot, worker in list(self.workers.items()):
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[slot]
            mark_process_dead(worker.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            if self.stop_deadline is not None:
                if code != 0:
                    log.info("worker %d (pid %d) stopped: %s", slot, worker.pid, describe_exit(code))
                continue
            if code in (EXIT_STARTUP, EXIT_CONFIG):
                log.error(
                    "worker %d (pid %d) could not start (%s): stopping every worker",
                    slot,
                    worker.pid,
                    describe_exit(code),
                )
                # the last line, once every worker is stopped (they log their own start-up or drain lines)
                what = f"worker {slot} (pid {worker.pid}) could not start ({describe_exit(code)}, see above)"
                self.failure = f"start-up failed: {what}"
                self.exit_code = code
                self._begin_stop()
                continue
            self._replace_later(slot, f"worker {slot} (pid {worker.pid}) died ({describe_exit(code)})")

    def _replace_later(self, slot: int, what: str) -> None:
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - RESTART_WINDOW_S:
            self.deaths.popleft()
        delay = restart_delay(len(self.deaths))
        when = f" in {delay:.1f} s ({len(self.deaths)} in {RESTART_WINDOW_S:.0f} s)" if delay else ""
        log.error("%s; starting a replacement%s", what, when)
        self.pending[slot] = now + delay

    def _begin_stop(self) -> None:
        self.pending.clear()
        self.stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s + DRAIN_MARGIN_S
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
        for worker in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(10)
            mark_process_dead(worker.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        self.workers.clear()

    def _sleep(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            select.select([self.wake_r], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self._install_signals()
            for slot in range(self.settings.workers):
                self.pending[slot] = 0.0  # started by the loop (a failure to start one is retried there)
            host, port = self.settings.host, self.settings.port
            log.info("supervisor (pid %d): %d workers on %s:%d", os.getpid(), self.settings.workers, host, port)
            return self._loop()
        finally:
            self._kill_all()  # nothing left by now, unless the loop itself failed
            self.sock.close()
            for fd in (self.alive_r, self.alive_w, self.wake_r, self.wake_w):
                os.close(fd)
            signal.set_wakeup_fd(-1)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _loop(self) -> int:
        while True:
            while self.signals:
                sig = self.signals.pop(0)
                if self.stop_deadline is None:
                    log.info("%s: draining %d workers", signal.Signals(sig).name, len(self.workers))
                    self._begin_stop()
                else:
                    log.warning("%s again: killing %d workers", signal.Signals(sig).name, len(self.workers))
                    self._kill_all()
                    return 128 + sig
            self._reap()
            now = time.monotonic()
            if self.stop_deadline is not None:
                if not self.workers:
                    if self.failure is not None:
                        log.critical("%s", self.failure)
                    return self.exit_code
                if now >= self.stop_deadline:
                    pids = ", ".join(str(w.pid) for w in self.workers.values())
                    log.error("shutdown: worker pid %s still running after the grace period; killed", pids)
                    self._kill_all()
                    return self.exit_code or EXIT_FAILED
            for slot, due in list(self.pending.items()):
                if now >= due:
                    del self.pending[slot]
                    try:
                        self._spawn(slot)
                    except OSError as exc:  # out of processes or file descriptors: try again, later
                        self._replace_later(slot, f"worker {slot} could not be started ({exc})")
            wake = min([*self.pending.values(), now + TICK_S])
            if self.stop_deadline is not None:
                wake = min(wake, self.stop_deadline)
            self._sleep(wake - time.monotonic())
