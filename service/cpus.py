"""How many CPUs this process may use: what ``WORKERS=auto`` resolves to.

``os.cpu_count()`` counts the host's CPUs; a container usually gets fewer, by an affinity mask (``--cpuset-cpus``)
or by a CFS quota (``--cpus``, Kubernetes CPU limits). The smaller of the two counts, the quota rounded down (a
1.5-CPU quota runs one worker, not two that get throttled), and at least one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MAX_WORKERS = 64  # the bound of WORKERS; ``auto`` is clamped to it


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ancestors(root: Path, relative: str) -> list[Path]:
    """``root/relative`` and each parent up to ``root``: a limit set higher in the hierarchy applies too."""
    parts = [p for p in relative.split("/") if p]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_limit(cgroup_root: Path, relative: str) -> float | None:
    limits: list[float] = []
    for directory in _ancestors(cgroup_root, relative):
        text = _read(directory / "cpu.max")  # "max 100000" or "<quota> <period>" (microseconds)
        if text is None:
            continue
        quota, _, period = text.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _v1_limit(cgroup_root: Path, controllers: str, relative: str) -> float | None:
    limits: list[float] = []
    for mount in (cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
        # Without a cgroup namespace the mount's root is already this container's group and ``relative`` is the
        # host's path to it: look both under the path and at the mount itself.
        for directory in [*_ancestors(mount, relative), mount]:
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota is None or period is None:
                continue
            if quota.lstrip("-").isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))
        if limits:
            break
    return min(limits) if limits else None


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The CFS quota of this process's cgroup in CPUs (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None if
    there is none. ``root`` stands for ``/`` (tests point it at fake ``proc`` and ``sys`` trees)."""
    text = _read(root / "proc/self/cgroup") or ""
    cgroup_root = root / "sys/fs/cgroup"
    v2_path: str | None = None
    v1: list[tuple[str, str]] = []
    for line in text.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1.append((controllers, path))
    if v2_path is not None:
        limit = _v2_limit(cgroup_root, v2_path)
        if limit is not None:
            return limit
    for controllers, path in v1:
        limit = _v1_limit(cgroup_root, controllers, path)
        if limit is not None:
            return limit
    return None


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def available_cpus(root: Path = Path("/"), *, affinity: int | None = None) -> int:
    """The CPUs this process can use, 1..``MAX_WORKERS``: the affinity mask bounded by the cgroup quota."""
    count = affinity if affinity is not None else affinity_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.floor(limit))
    return max(1, min(count, MAX_WORKERS))
