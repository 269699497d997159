"""All configuration, read once from the environment (12-factor).

Nothing else in the package reads ``os.environ``: the app factory takes a ``Settings`` so tests build the
service from explicit values.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.config import Config


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    database_path: str = "./data/sessions.db"
    auth_service_url: str = "http://127.0.0.1:8100"
    rag_service_url: str = "http://127.0.0.1:8100"
    question_service_url: str = "http://127.0.0.1:8100"
    log_level: str = "info"
    log_json: bool = False
    access_log: bool = True
    # SQLite
    db_read_connections: int = 2
    db_cache_size_kib: int = 32768
    db_busy_timeout_ms: int = 5000
    db_synchronous: str = "NORMAL"
    # auth
    auth_cache_ttl_s: float = 30.0
    auth_cache_max_entries: int = 10000
    # downstream client
    http_transport: str = "aiohttp"
    http_max_connections: int = 200
    http_max_keepalive: int = 100
    http_connect_timeout_s: float = 3.0
    http_read_timeout_s: float = 30.0
    http_pool_timeout_s: float = 2.0
    http_keepalive_expiry_s: float = 4.0
    http_retries: int = 2
    http_retry_backoff_s: float = 0.05
    downstream_max_concurrency: int = 256
    forward_authorization: bool = False
    # limits
    max_body_bytes: int = 1_048_576
    max_upload_bytes: int = 10_485_760
    max_upload_files: int = 20
    max_metadata_bytes: int = 65_536
    max_event_data_bytes: int = 16_384
    max_page_size: int = 500
    max_in_flight: int = 2000
    body_read_timeout_s: float = 30.0
    # RAG defaults (used when neither the request nor the session sets them)
    rag_default_top_k: int = 5
    rag_default_use_rerank: bool = False
    rag_default_min_score: float = 0.0
    rag_default_max_context_chars: int = 4000
    rag_default_model: str = "default"
    rag_default_chain_type: str = "stuff"
    rag_default_embedding_model: str = "default"
    rag_default_max_tokens: int = 512
    question_context_max_chars: int = 8000
    question_context_max_chunks: int = 40
    question_model: str = "default"
    # operations
    shutdown_timeout_s: int = 8
    backup_dir: str = "./data/backups"
    cursor_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    loop_lag_interval_s: float = 0.1
    # per-request metrics (the lag probe always runs); off only to measure their overhead
    metrics_enabled: bool = True

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment; every field has an upper-case env var of the same name."""
    config = Config(environ=dict(os.environ if environ is None else environ))
    defaults = Settings()
    values: dict[str, object] = {}
    for f in dataclasses.fields(Settings):
        raw = config(f.name.upper(), cast=str, default=None)
        if raw is None:
            continue
        default = getattr(defaults, f.name)
        caster: type | object = _bool if isinstance(default, bool) else type(default)
        try:
            values[f.name] = caster(raw)  # type: ignore[operator]
        except ValueError:
            raise ValueError(f"{f.name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
    settings = defaults.replace(**values)
    if settings.db_synchronous.upper() not in {"NORMAL", "FULL", "EXTRA"}:
        raise ValueError("DB_SYNCHRONOUS must be NORMAL, FULL or EXTRA")
    return settings
