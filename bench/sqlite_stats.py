"""What a gateway run on SQLite did to its database: the ``-wal`` file's size over the measured window (sampled in
a thread) and the ``db_batch_size`` histogram's delta between two /metrics scrapes (calls per batch handed to one
SQLite connection). Both are cheap, so every gateway SQLite run records them: they show whether the WAL stays
bounded and whether group commit forms large batches under load."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

BATCH_HIST = "db_batch_size"
BATCH_KINDS = ("write", "read")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def file_size(path: Path) -> int:
    """Size in bytes; 0 while the file does not exist (SQLite creates the WAL on first write, may delete it)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


class WalWatch:
    """Samples the size of one file (a database's ``-wal``) every ``interval`` seconds in a thread, from entering
    to leaving the block: ``max_bytes`` and ``end_bytes`` (the last sample, taken on exit). ``path`` None: a
    no-op (runs without a SQLite file), both figures None."""

    def __init__(self, path: Path | None, interval: float = 0.25) -> None:
        self.path = path
        self.interval = interval
        self.max_bytes: int | None = None
        self.end_bytes: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wal-watch", daemon=True)

    def __enter__(self) -> WalWatch:
        if self.path is not None:
            self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self.end_bytes = self._sample()

    def _sample(self) -> int:
        assert self.path is not None
        size = file_size(self.path)
        self.max_bytes = size if self.max_bytes is None else max(self.max_bytes, size)
        self.samples += 1
        return size

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def record(self) -> dict[str, int | None]:
        return {"wal_bytes_max": self.max_bytes, "wal_bytes_end": self.end_bytes}


def _labels(key: str) -> dict[str, str]:
    brace = key.find("{")
    return dict(LABEL.findall(key[brace:])) if brace >= 0 else {}


def batch_series(metrics: Mapping[str, float], kind: str) -> tuple[float, float, list[tuple[float, float]]]:
    """``(count, sum, [(le, cumulative count), ...])`` of ``db_batch_size{kind=...}`` in one scrape, ``+Inf``
    last (labels matched by name, in any order; with WORKERS > 1 the scrape is already summed over workers)."""
    count = total = 0.0
    buckets: list[tuple[float, float]] = []
    for key, value in metrics.items():
        if not key.startswith(BATCH_HIST + "_"):
            continue
        labels = _labels(key)
        if labels.get("kind") != kind:
            continue
        name = key.split("{", 1)[0]
        if name == BATCH_HIST + "_count":
            count += value
        elif name == BATCH_HIST + "_sum":
            total += value
        elif name == BATCH_HIST + "_bucket" and "le" in labels:
            bound = labels["le"]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), value))
    merged: dict[float, float] = {}
    for le, c in buckets:
        merged[le] = merged.get(le, 0.0) + c
    return count, total, sorted(merged.items())


def quantile(delta: list[tuple[float, float]], q: float) -> float | None:
    """Approximate ``q``-quantile of integer batch sizes from cumulative ``(le, count)`` buckets: bucket (a, b]
    holds the sizes a+1 .. b, and the rank is placed linearly among them (Prometheus' histogram_quantile on
    integers). In the ``+Inf`` bucket: the highest finite bound (the true value is above it)."""
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_cum = 0.0, 0.0
    for le, cum in delta:
        if cum >= rank and cum > prev_cum:
            if le == float("inf"):
                return prev_le
            lo = prev_le + 1 if le > prev_le + 1 else le
            fraction = (rank - prev_cum) / (cum - prev_cum)
            return round(lo + fraction * (le - lo), 1)
        prev_le, prev_cum = (le if le != float("inf") else prev_le), cum
    return prev_le


def batch_window(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per kind (write, read), over the window between two scrapes: batches, calls, mean calls per batch,
    approximate p50 / p99 (``quantile``) and ``max_le``, the bound of the highest bucket that grew (None:
    the ``+Inf`` bucket, above the top bound)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in BATCH_KINDS:
        c0, s0, b0 = batch_series(before, kind)
        c1, s1, b1 = batch_series(after, kind)
        start = dict(b0)
        delta = [(le, c - start.get(le, 0.0)) for le, c in b1]
        batches = int(round(c1 - c0))
        calls = int(round(s1 - s0))
        max_le: float | None = None
        prev = 0.0
        for le, cum in delta:
            if cum > prev:
                max_le = None if le == float("inf") else le
            prev = cum
        out[kind] = {
            "batches": batches,
            "calls": calls,
            "mean": round(calls / batches, 2) if batches > 0 else None,
            "p50": quantile(delta, 0.50),
            "p99": quantile(delta, 0.99),
            "max_le": max_le if batches > 0 else None,
        }
    return out
