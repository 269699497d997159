"""Child processes for the benchmark: start, pin, wait, sample (/proc), stop. Linux only, 127.0.0.1 only.

Every child runs in its own process group (``start_new_session``) and is registered in ``CHILDREN``, so
``stop_all()`` (called from the runner's ``finally`` and on SIGINT/SIGTERM) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOCALHOST = "127.0.0.1"

# Every process this module started and has not reaped yet (Popen objects, wrk included).
CHILDREN: list[subprocess.Popen[bytes]] = []


# ------------------------------------------------------------------------------------------- machine


CoreSet = int | tuple[int, ...] | None  # one CPU, several, or not pinned


@dataclass(frozen=True)
class Cores:
    """Which CPU each party runs on (``None``: not pinned, e.g. on a 1-core machine); ``cpus``: every usable one."""

    server: int | None
    client: int | None
    downstream: int | None
    cpus: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (fewer than 2 usable CPUs)"
        return f"server on CPU {self.server}, wrk on CPU {self.client}, reference downstream on CPU {self.downstream}"

    def server_cores(self, n: int) -> CoreSet:
        """CPUs for a server of ``n`` processes (``WORKERS=n``, its PostgreSQL alongside): the server's own CPU,
        then CPUs nobody else is pinned to, then, on a small machine, the client's and downstream's CPUs (shared
        with them: the scale-out runs say so). One process keeps the single ``server`` CPU."""
        if self.server is None or n <= 1:
            return self.server
        spare = [c for c in self.cpus if c not in (self.server, self.client, self.downstream)]
        shared = [c for c in dict.fromkeys((self.client, self.downstream)) if c is not None and c != self.server]
        return tuple(sorted([self.server, *(spare + shared)][:n]))

    def describe_scale(self) -> str:
        """How the scale-out runs are pinned, and what that means for their ratios."""
        if self.server is None:
            return "not pinned (fewer than 2 usable CPUs): every process floats over the machine"
        two = ",".join(str(c) for c in core_list(self.server_cores(2)))
        text = (
            f"WORKERS=1: the gateway (and its PostgreSQL) on CPU {self.server}; WORKERS=2: the gateway's processes "
            f"(and its PostgreSQL) on CPUs {two}; wrk on CPU {self.client}, the reference downstream on CPU "
            f"{self.downstream}"
        )
        if self.shares_client(self.server_cores(2)):
            text += (
                f". With {len(self.cpus)} CPUs the 2-worker server shares a CPU with wrk and the downstream: the "
                "WORKERS=1 side leaves a core the server cannot use (the comparison is of one process against two "
                "on this machine, not of one core against two), and the WORKERS=2 side's gain is understated by "
                "what wrk and the downstream take from the shared CPU (their CPU % is reported per run)"
            )
        return text

    def shares_client(self, cores: CoreSet) -> bool:
        """Whether ``cores`` include wrk's (or the downstream's) CPU."""
        chosen = core_list(cores)
        return any(c in chosen for c in (self.client, self.downstream) if c is not None)


def core_list(cores: CoreSet) -> tuple[int, ...]:
    if cores is None:
        return ()
    return (cores,) if isinstance(cores, int) else tuple(cores)


def plan_cores() -> Cores:
    """Server alone on the first usable CPU; wrk (and the runner) on the second; the downstream on a third
    if there is one, else sharing wrk's CPU (so nothing but the server under test ever runs on its CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return Cores(None, None, None, tuple(cpus))
    return Cores(cpus[0], cpus[1], cpus[2] if len(cpus) > 2 else cpus[1], tuple(cpus))


def pin_self(core: int | None) -> None:
    """Keep the runner (polling /proc, parsing results) off the server's CPU."""
    if core is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})


NICE = 0  # set by the runner (--nice): applied to every benchmark child


def pinned(cmd: list[str], core: CoreSet) -> list[str]:
    """``taskset`` (and ``nice``) exec the command, so the child's pid is the command's own pid."""
    if core is not None:
        cmd = ["taskset", "-c", ",".join(str(c) for c in core_list(core)), *cmd]
    if NICE:
        cmd = ["nice", "-n", str(NICE), *cmd]
    return cmd


def raise_fd_limit(wanted: int = 65_536) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by children: wrk needs one fd per connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def machine_info() -> dict[str, object]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = "not found"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
        wrk_version = (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "wrk": wrk_version,
    }


# ------------------------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcStat:
    rss_bytes: int
    hwm_bytes: int
    fds: int
    threads: int
    cpu_s: float  # user + system, all threads


def proc_stat(pid: int) -> ProcStat | None:
    """One sample of a live process, or ``None`` once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0])
    if "VmRSS" not in values:  # a zombie: exited, not yet reaped
        return None
    # Fields after the command name (which may contain spaces): utime and stime are fields 14 and 15.
    after = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(after[11]) + int(after[12])) / CLK_TCK
    return ProcStat(
        rss_bytes=values.get("VmRSS", 0) * 1024,
        hwm_bytes=values.get("VmHWM", 0) * 1024,
        fds=fds,
        threads=values.get("Threads", 0),
        cpu_s=cpu_s,
    )


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per-CPU ``(busy, total)`` jiffies from /proc/stat (busy excludes idle and iowait)."""
    out: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *fields = line.split()
            values = [int(v) for v in fields[:8]]
            total = sum(values)
            out[int(name[3:])] = (total - values[3] - values[4], total)
    return out


def busy_pct(before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]]) -> dict[int, float]:
    pct = {}
    for cpu, (busy1, total1) in after.items():
        busy0, total0 = before.get(cpu, (0, 0))
        pct[cpu] = round(100.0 * (busy1 - busy0) / (total1 - total0), 1) if total1 > total0 else 0.0
    return pct


def machine_busy(seconds: float = 1.0) -> float:
    """Whole-machine CPU busy share over ``seconds`` (100 = every CPU busy)."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    busy = sum(a[0] - before.get(c, (0, 0))[0] for c, a in after.items())
    total = sum(a[1] - before.get(c, (0, 0))[1] for c, a in after.items())
    return round(100.0 * busy / total, 1) if total else 0.0


def wait_for_quiet(max_busy_pct: float, max_wait_s: float, say: Callable[[str], None]) -> float:
    """Other work on a shared machine skews numbers: wait (bounded) until it is mostly idle."""
    deadline = time.monotonic() + max_wait_s
    busy = machine_busy()
    warned = False
    while busy > max_busy_pct and time.monotonic() < deadline:
        if not warned:
            say(f"      machine busy ({busy:.0f}% CPU from other processes); waiting up to {max_wait_s:.0f} s ...")
            warned = True
        time.sleep(1.0)
        busy = machine_busy()
    return busy


def runqueue_wait_s(pid: int) -> float | None:
    """Time the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat).

    On a shared machine this shows starvation that CPU% cannot: a client starved of CPU is a bottleneck
    even when its own CPU% is low.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (a ``WORKERS`` supervisor's workers, a postmaster's backends); ``[]``
    once ``pid`` is gone. From /proc/<pid>/task/*/children where the kernel has it, else the parent pids in
    /proc/*/stat (a scan of every process: slower)."""
    if not Path(f"/proc/{pid}").exists():
        return []
    if not Path(f"/proc/{pid}/task/{pid}/children").exists():
        return _process_tree_by_scan(pid)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
    return out


def _process_tree_by_scan(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of ``pid`` and its live descendants; None once ``pid`` is gone."""
    stats = [st for p in process_tree(pid) if (st := proc_stat(p)) is not None]
    return sum(st.cpu_s for st in stats) if stats else None


@dataclass
class Series:
    t: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    hwm_mb: float = 0.0  # peak RSS: of the process, or (a tree) the sum of its processes' peaks
    processes: int = 1  # the most processes seen at once (a tree)


@dataclass
class _Group:
    """One sampled party: a process, or (``tree``) a process and its descendants, found again at every sample
    (workers are replaced, backends come and go). CPU and run-queue wait are summed per pid over the window; a
    pid first seen during the window counts from zero (it started during it)."""

    pid: int
    tree: bool
    cpu0: dict[int, float] = field(default_factory=dict)
    cpu1: dict[int, float] = field(default_factory=dict)
    wait0: dict[int, float] = field(default_factory=dict)
    wait1: dict[int, float] = field(default_factory=dict)
    hwm: dict[int, int] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return process_tree(self.pid) if self.tree else [self.pid]

    def start(self) -> None:
        for pid in self.pids():
            st = proc_stat(pid)
            if st is not None:
                self.cpu0[pid] = self.cpu1[pid] = st.cpu_s
            wait = runqueue_wait_s(pid)
            if wait is not None:
                self.wait0[pid] = self.wait1[pid] = wait

    def sample(self) -> tuple[int, int, int, int] | None:
        """Update CPU / wait / peaks; return (rss bytes, fds, threads, processes) summed, or None if all gone."""
        rss = fds = threads = n = 0
        for pid in self.pids():
            st = proc_stat(pid)
            if st is None:
                continue
            n += 1
            rss, fds, threads = rss + st.rss_bytes, fds + st.fds, threads + st.threads
            self.cpu0.setdefault(pid, 0.0)
            self.cpu1[pid] = st.cpu_s
            self.hwm[pid] = max(self.hwm.get(pid, 0), st.hwm_bytes)
            wait = runqueue_wait_s(pid)
            if wait is not None:
                self.wait0.setdefault(pid, 0.0)
                self.wait1[pid] = wait
        return (rss, fds, threads, n) if n else None

    def cpu_s(self) -> float:
        return sum(self.cpu1[p] - self.cpu0[p] for p in self.cpu1)

    def wait_s(self) -> float:
        return sum(self.wait1[p] - self.wait0[p] for p in self.wait1)


class Sampler:
    """Samples RSS / fds / threads of some processes every ``interval`` seconds, in a thread. Names listed in
    ``trees`` are sampled with their descendants (summed)."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.5, *, trees: Iterable[str] = ()) -> None:
        tree_names = set(trees)
        self.groups = {name: _Group(pid, name in tree_names) for name, pid in pids.items()}
        self.interval = interval
        self.series = {name: Series() for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="proc-sampler", daemon=True)
        self._t0 = 0.0
        self._wall = 0.0
        self._cpus0: dict[int, tuple[int, int]] = {}
        self.core_busy: dict[int, float] = {}

    def __enter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpus0 = cpu_times()
        for group in self.groups.values():
            group.start()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        self._wall = time.monotonic() - self._t0
        self.core_busy = busy_pct(self._cpus0, cpu_times())

    def _sample(self) -> None:
        now = time.monotonic() - self._t0
        for name, group in self.groups.items():
            got = group.sample()
            if got is None:
                continue
            rss, fds, threads, n = got
            s = self.series[name]
            s.t.append(round(now, 2))
            s.rss_mb.append(round(rss / 2**20, 2))
            s.fds.append(fds)
            s.threads.append(threads)
            s.hwm_mb = max(s.hwm_mb, sum(group.hwm.values()) / 2**20)
            s.processes = max(s.processes, n)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def latest(self, name: str) -> tuple[float, int]:
        s = self.series[name]
        return (s.rss_mb[-1], s.fds[-1]) if s.t else (0.0, 0)

    def wait_pct(self, name: str) -> float:
        """Run-queue wait over the window, as % of wall time (summed over threads and processes)."""
        if self._wall <= 0:
            return 0.0
        return 100.0 * self.groups[name].wait_s() / self._wall

    def cpu_pct(self, name: str) -> float:
        """Busy share of one CPU over the sampled window (100 = one core fully busy; a tree can exceed it)."""
        if self._wall <= 0:
            return 0.0
        return 100.0 * self.groups[name].cpu_s() / self._wall


# ------------------------------------------------------------------------------------------- processes


CODE_PARTS = ("service", "devstack", "bench")


def snapshot_code(dest: Path) -> dict[str, object]:
    """Copy the code under test to ``dest`` and return what it is (commit, local changes, content hash).

    Other people may edit the repository while a long run goes on; children started from the snapshot (their
    working directory, so ``python -m service`` imports it first) all run the same code, and the report
    names it exactly.
    """
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for part in CODE_PARTS:
        shutil.copytree(REPO_ROOT / part, dest / part, ignore=ignore)
    digest = hashlib.sha256()
    for path in sorted((dest / "service").rglob("*.py")):
        digest.update(str(path.relative_to(dest)).encode())
        digest.update(path.read_bytes())

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "local_changes": [line for line in git("status", "--porcelain", "--", "service").splitlines() if line],
        "service_sha256": digest.hexdigest()[:16],
    }


def spawn(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    core: CoreSet = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, output to ``log`` (or discarded), registered for cleanup."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            pinned(cmd, core),
            cwd=cwd or REPO_ROOT,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    CHILDREN.append(proc)
    prioritize(proc.pid)
    return proc


def prioritize(pid: int) -> None:
    """Apply ``NICE`` to the child's scheduler autogroup too: each child is a session leader, so with
    ``kernel.sched_autogroup_enabled`` it competes as its own group and a per-process nice alone would not
    count against other sessions' work."""
    if NICE:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(f"{NICE}\n")


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 15.0) -> int | None:
    """SIGTERM the child's process group (graceful: the gateway drains and checkpoints), then SIGKILL."""
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        else:
            # the leader is gone; make sure nothing it started lingers
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc in CHILDREN:
            CHILDREN.remove(proc)
    return proc.returncode


def stop_all() -> None:
    for proc in list(reversed(CHILDREN)):
        with contextlib.suppress(Exception):
            stop(proc, timeout=8)


def http_get(url: str, *, timeout: float = 5.0, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_http(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 30.0, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail fast (with the log's tail) if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode} during start-up\n{tail(log)}")
        with contextlib.suppress(OSError):
            status, _ = http_get(url, timeout=2)
            if status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s\n{tail(log)}")


def wait_workers(
    metrics_url: str, workers: int, proc: subprocess.Popen[bytes], *, timeout: float = 60.0, log: Path | None = None
) -> None:
    """With ``WORKERS`` > 1 the first worker answers ready before the others have started: wait until /metrics
    shows every worker's loop-lag gauge (one series per live worker, label pid)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} while its workers started\n{tail(log)}")
        with contextlib.suppress(OSError, RuntimeError):
            seen = sum(1 for key in scrape(metrics_url) if key.startswith(LAG_MAX + "{"))
            if seen >= workers:
                return
        time.sleep(0.2)
    raise RuntimeError(f"only {seen} of {workers} workers reported in /metrics within {timeout:.0f} s\n{tail(log)}")


def tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 16_384))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def count_lines(path: Path, needles: Iterable[str]) -> int:
    """How many log lines contain any of ``needles`` (tracebacks, errors) - read in chunks, logs can be big."""
    wanted = [n.encode() for n in needles]
    n = 0
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        for line in f:
            if any(w in line for w in wanted):
                n += 1
    return n


# ------------------------------------------------------------------------------------------- /metrics


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> ``{'name{labels}': value}`` (labels kept verbatim)."""
    status, body = http_get(url, timeout=10)
    if status != 200:
        raise RuntimeError(f"{url} answered {status}")
    return parse_metrics(body.decode())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{'name{labels}': value}`` (what ``scrape`` returns; comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


LAG_MAX = "event_loop_lag_max_seconds"
LAG_HIST = "event_loop_lag_seconds_distribution"


def lag_buckets(metrics: Mapping[str, float]) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` pairs of the event-loop lag histogram, ``+Inf`` last."""
    prefix = LAG_HIST + '_bucket{le="'
    pairs = []
    for key, value in metrics.items():
        if key.startswith(prefix):
            le = key[len(prefix) : key.index('"', len(prefix))]
            pairs.append((float("inf") if le == "+Inf" else float(le), value))
    return sorted(pairs)


def lag_window(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float | int | None]:
    """Event-loop lag over a window, from two scrapes (the histogram is cumulative since start-up).

    ``p99_le_s``: the smallest bucket bound holding >= 99% of the window's samples (so "p99 <= this");
    ``max_s``: exact when the max gauge (each worker's, with ``WORKERS`` > 1) rose during the window, else
    bounded by the highest non-empty bucket of the window (never above the since-start gauge).
    """
    b0 = dict(lag_buckets(before))
    b1 = lag_buckets(after)
    delta = [(le, c - b0.get(le, 0.0)) for le, c in b1]
    total = delta[-1][1] if delta else 0.0
    p99_le: float | None = None
    top_bucket: float | None = None
    prev_cum = 0.0
    prev_le = 0.0
    for le, cum in delta:
        if cum > prev_cum:
            top_bucket = le if le != float("inf") else prev_le
        if p99_le is None and total > 0 and cum >= 0.99 * total:
            p99_le = le
        prev_cum, prev_le = cum, le
    # one max gauge per worker with WORKERS > 1 (label pid), a bare one otherwise
    gauges_before = lag_max_gauges(before)
    gauges_after = lag_max_gauges(after)
    rose = [v for key, v in gauges_after.items() if v > gauges_before.get(key, 0.0)]
    gauge_after = max(gauges_after.values(), default=0.0)
    if rose and len(rose) == len(gauges_after):
        max_s: float | None = max(rose)
        exact = True
    else:
        # the gauges that did not rise bound their worker's window max by the histogram's top bucket
        rest = [v for key, v in gauges_after.items() if v <= gauges_before.get(key, 0.0)]
        bounded = min(max(rest, default=0.0), top_bucket) if top_bucket is not None else None
        candidates = [v for v in (*rose, bounded) if v is not None]
        max_s = max(candidates) if candidates else None
        exact = False
    return {
        "samples": int(total),
        "p99_le_s": None if p99_le is None or p99_le == float("inf") else p99_le,
        "max_s": max_s,
        "max_exact": exact,
        "max_since_start_s": gauge_after,
    }


def lag_max_gauges(metrics: Mapping[str, float]) -> dict[str, float]:
    """``event_loop_lag_max_seconds`` series by their full key (``...{pid="123"}`` per worker)."""
    return {k: v for k, v in metrics.items() if k == LAG_MAX or k.startswith(LAG_MAX + "{")}
