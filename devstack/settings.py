"""Settings of the reference downstream (dev/test only, not product code)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

FAULT_MODES = frozenset({"none", "error500", "invalid_json", "hang", "disconnect", "slow_body"})


def validate_fault(fault: str) -> str:
    """Return ``fault`` if it names a known fault mode, else raise ``ValueError``."""
    if fault in FAULT_MODES:
        return fault
    if fault.startswith("status_"):
        code = fault.removeprefix("status_")
        if code.isdigit() and 400 <= int(code) <= 599:
            return fault
    raise ValueError(f"unknown fault {fault!r}: expected one of {sorted(FAULT_MODES)} or status_<400..599>")


def validate_paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        if not path.startswith("/") or len(path) > 256:
            raise ValueError(f"fault path {path!r} must start with '/' (max 256 chars)")
    return paths


@dataclass(frozen=True, slots=True)
class DevstackSettings:
    """Configuration; every field has an env var (see :meth:`from_env`)."""

    host: str = "127.0.0.1"
    port: int = 8100
    latency_ms: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    fault: str = "none"
    fault_paths: tuple[str, ...] = ()
    hang_seconds: float = 3600.0
    slow_body_chunk_bytes: int = 16
    slow_body_delay_ms: float = 50.0
    max_body_bytes: int = 24 * 1024 * 1024
    max_document_chars: int = 5_000_000
    max_chunks_per_collection: int = 20_000
    max_total_chunks: int = 1_000_000
    max_total_document_chars: int = 256_000_000

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within 0..1")
        validate_fault(self.fault)
        validate_paths(self.fault_paths)
        if self.hang_seconds <= 0 or self.slow_body_chunk_bytes < 1 or self.slow_body_delay_ms < 0:
            raise ValueError("hang_seconds, slow_body_chunk_bytes and slow_body_delay_ms must be positive")
        limits = (
            self.max_body_bytes,
            self.max_document_chars,
            self.max_chunks_per_collection,
            self.max_total_chunks,
            self.max_total_document_chars,
        )
        if min(limits) < 1:
            raise ValueError("size limits must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DevstackSettings:
        """Build settings from ``DEVSTACK_*`` variables; a bad value raises ``ValueError`` at start-up."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"DEVSTACK_{name}")
            return value.strip() if value is not None and value.strip() else None

        def num(name: str, default: float) -> float:
            raw = get(name)
            try:
                return default if raw is None else float(raw)
            except ValueError:
                raise ValueError(f"DEVSTACK_{name} must be a number, got {raw!r}") from None

        def integer(name: str, default: int) -> int:
            raw = get(name)
            try:
                return default if raw is None else int(raw)
            except ValueError:
                raise ValueError(f"DEVSTACK_{name} must be an integer, got {raw!r}") from None

        seed_raw = get("SEED")
        paths_raw = get("FAULT_PATHS")
        d = cls()
        return cls(
            host=get("HOST") or d.host,
            port=integer("PORT", d.port),
            latency_ms=num("LATENCY_MS", d.latency_ms),
            error_rate=num("ERROR_RATE", d.error_rate),
            seed=None if seed_raw is None else integer("SEED", 0),
            fault=get("FAULT") or d.fault,
            fault_paths=tuple(p.strip() for p in (paths_raw or "").split(",") if p.strip()),
            hang_seconds=num("HANG_SECONDS", d.hang_seconds),
            slow_body_chunk_bytes=integer("SLOW_BODY_CHUNK_BYTES", d.slow_body_chunk_bytes),
            slow_body_delay_ms=num("SLOW_BODY_DELAY_MS", d.slow_body_delay_ms),
            max_body_bytes=integer("MAX_BODY_BYTES", d.max_body_bytes),
            max_document_chars=integer("MAX_DOCUMENT_CHARS", d.max_document_chars),
            max_chunks_per_collection=integer("MAX_CHUNKS_PER_COLLECTION", d.max_chunks_per_collection),
            max_total_chunks=integer("MAX_TOTAL_CHUNKS", d.max_total_chunks),
            max_total_document_chars=integer("MAX_TOTAL_DOCUMENT_CHARS", d.max_total_document_chars),
        )
