"""All configuration: typed, bounded, validated once at start-up (12-factor, environment only).

Nothing else in the package reads ``os.environ``: the app factory takes a ``Settings`` so tests build the
service from explicit values (``Settings(**values)`` never looks at the environment); ``load_settings`` is the
one place the environment is read. Every default is written here and only here.

The fields are grouped by concern (``ServerSettings``, ``DatabaseSettings``, ...) so a component can ask for just
its group (``Database`` takes a ``DatabaseSettings``), while ``Settings`` keeps one flat namespace: the env var
of a field is its upper-cased name. A bad value raises ``SettingsError`` with one line naming the variable, the
value given (never a secret's) and what is allowed.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from service.sessions.domain import PAGE_SIZE_LIMIT
from service.sessions.models import ChainType, MaxContextChars, MinScore, ModelName, TopK


class SettingsError(ValueError):
    """A setting with a value outside what is allowed; the message is one line, safe to print and log."""


# -- value types ---------------------------------------------------------------------------------------------
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_FLAG_WORDS = "true, false, 1, 0, yes, no, on, off"


def _flag(value: object) -> object:
    # pydantic's own bool also takes t/f/y/n; a typo such as "ture" must not quietly become false either.
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise PydanticCustomError("flag", "not a boolean word")
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _workers(value: object) -> object:
    # "auto": the CPUs this process may use (affinity and cgroup quota), resolved once, here.
    if isinstance(value, str) and value.strip().lower() == "auto":
        from service.cpus import available_cpus

        return available_cpus()
    return value


def _upper(value: object) -> object:
    return value.strip().upper() if isinstance(value, str) else value


_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _http_url(value: str) -> str:
    # Validated as a URL, kept as the string given: call sites join paths onto it.
    try:
        _HTTP_URL.validate_python(value)
    except ValidationError:
        raise PydanticCustomError("http_url", "not an http(s) URL") from None
    return value


def _postgres_url(value: SecretStr) -> SecretStr:
    # The URL carries the password: checked for its scheme only, and never shown (``_shown`` masks secrets).
    text = value.get_secret_value()
    if text and text.split("://", 1)[0].lower() not in ("postgresql", "postgres"):
        raise PydanticCustomError("postgres_url", "not a postgresql:// URL")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]
PostgresUrl = Annotated[SecretStr, Field(max_length=4096), AfterValidator(_postgres_url)]  # "" = unset
Url = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_http_url)]
Text = Annotated[str, Field(min_length=1, max_length=4096)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]
LogLevel = Annotated[Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)]
Transport = Annotated[Literal["native", "aiohttp", "httpx"], BeforeValidator(_lower)]  # service.downstream.client
Workers = Annotated[int, Field(ge=1, le=64), BeforeValidator(_workers)]  # 64: service.cpus.MAX_WORKERS
Synchronous = Annotated[Literal["NORMAL", "FULL", "EXTRA"], BeforeValidator(_upper)]
_GIB = 1 << 30


def _random_secret() -> SecretStr:
    # Per Settings (the process has one; ``replace`` carries it over): gateways not given a shared secret in one
    # test process are keyed apart, as separate deployments are.
    return SecretStr(secrets.token_hex(32))


# -- groups ----------------------------------------------------------------------------------------------------
class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True, validate_default=True)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # ``from None``: pydantic's error repeats every input, and a chained traceback would print a secret.
            raise SettingsError(describe_errors(type(self), exc)) from None

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated like a fresh instance (``model_copy`` would not validate)."""
        return type(self)(**{**dict(self), **changes})


class ServerSettings(_Group):
    host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    port: Port = 8000
    log_level: LogLevel = "info"
    log_json: Flag = False
    access_log: Flag = True
    shutdown_timeout_s: Annotated[int, Field(ge=1, le=3600)] = 8
    # Worker processes of ``serve`` on one port (``service.supervisor``); 1 = today's single process, no supervisor.
    workers: Workers = 1


class DatabaseSettings(_Group):
    database_path: Text = "./data/sessions.db"
    db_read_connections: Annotated[int, Field(ge=1, le=64)] = 2
    db_cache_size_kib: Annotated[int, Field(ge=1, le=16 * 1024 * 1024)] = 32768
    db_busy_timeout_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 5000
    db_synchronous: Synchronous = "NORMAL"
    # WAL pages between automatic checkpoints (SQLite's default 1000), and the size the WAL file is cut back to
    # after a checkpoint: together they bound the WAL on disk (bench/README.md, "WAL checkpoints")
    db_wal_autocheckpoint: Annotated[int, Field(ge=100, le=1_000_000)] = 1000
    db_journal_size_limit_bytes: Annotated[int, Field(ge=1_048_576, le=2**40)] = 64 * 1024 * 1024
    # PostgreSQL instead of the SQLite file when set (``service/storage/postgres``); the pool is per process.
    database_url: PostgresUrl = SecretStr("")
    db_pool_size: Annotated[int, Field(ge=1, le=1000)] = 8
    db_pool_timeout_s: Seconds = 2.0  # a request waiting longer for a pooled connection answers 503


class DownstreamSettings(_Group):
    auth_service_url: Url = "http://127.0.0.1:8100"
    rag_service_url: Url = "http://127.0.0.1:8100"
    question_service_url: Url = "http://127.0.0.1:8100"
    auth_cache_ttl_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    auth_cache_max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10000
    http_transport: Transport = "native"
    http_max_connections: Annotated[int, Field(ge=1, le=100_000)] = 200
    http_max_keepalive: Annotated[int, Field(ge=0, le=100_000)] = 100
    http_connect_timeout_s: Seconds = 3.0
    http_read_timeout_s: Seconds = 30.0
    http_pool_timeout_s: Seconds = 2.0
    http_keepalive_expiry_s: Seconds = 4.0
    http_retries: Annotated[int, Field(ge=0, le=100)] = 2
    http_retry_backoff_s: Annotated[float, Field(ge=0, le=60)] = 0.05
    downstream_max_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 256
    forward_authorization: Flag = False

    @model_validator(mode="after")
    def _keepalive_within_pool(self) -> Self:
        if self.http_max_keepalive > self.http_max_connections:
            raise PydanticCustomError(
                "cross_field",
                "HTTP_MAX_KEEPALIVE={keepalive} is invalid: must be <= HTTP_MAX_CONNECTIONS ({connections})",
                {"keepalive": self.http_max_keepalive, "connections": self.http_max_connections},
            )
        return self


class LimitSettings(_Group):
    max_body_bytes: Annotated[int, Field(ge=1, le=_GIB)] = 1_048_576
    max_upload_bytes: Annotated[int, Field(ge=1, le=_GIB)] = 10_485_760
    max_upload_files: Annotated[int, Field(ge=1, le=1000)] = 20
    library_max_files: Annotated[int, Field(ge=1, le=1_000_000)] = 1000  # markdown library files per owner
    ingestion_poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 1.0  # runner's look for queued jobs
    ingestion_lease_s: Annotated[float, Field(ge=1, le=3600)] = 30.0  # a claimed job's lease, renewed while working
    ingestion_concurrency: Annotated[int, Field(ge=1, le=64)] = 2  # jobs one process runs at once
    max_metadata_bytes: Annotated[int, Field(ge=1, le=_GIB)] = 65_536
    max_event_data_bytes: Annotated[int, Field(ge=1, le=_GIB)] = 16_384
    max_page_size: Annotated[int, Field(ge=1, le=PAGE_SIZE_LIMIT)] = 500  # what the listings' models accept
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    body_read_timeout_s: Seconds = 30.0


class RagDefaults(_Group):
    """Used when neither the request nor the session sets them; bounded like the requests that override them."""

    rag_default_top_k: TopK = 5
    rag_default_use_rerank: Flag = False
    rag_default_min_score: MinScore = 0.0
    rag_default_max_context_chars: MaxContextChars = 4000
    rag_default_model: ModelName = "default"
    rag_default_chain_type: ChainType = "stuff"
    rag_default_embedding_model: ModelName = "default"
    rag_default_use_direct_llm: Flag = False
    rag_default_use_reranker_service: Flag = False
    rag_default_max_tokens: Annotated[int, Field(ge=1, le=8192)] = 512  # as RagQueryRequest.max_tokens
    question_context_max_chars: Annotated[int, Field(ge=1, le=10_000_000)] = 8000
    question_context_max_chunks: Annotated[int, Field(ge=1, le=100_000)] = 40
    question_model: ModelName = "default"


class OperationSettings(_Group):
    backup_dir: Text = "./data/backups"
    # HMAC key of pagination cursors; random per process unless set (then cursors survive restarts and workers).
    cursor_secret: Annotated[SecretStr, Field(min_length=16, max_length=4096)] = Field(default_factory=_random_secret)
    loop_lag_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.1
    # per-request metrics (the lag probe always runs); off only to measure their overhead
    metrics_enabled: Flag = True


# Bases listed last-first: pydantic collects fields from the last base on, so the order reads server first.
class Settings(OperationSettings, RagDefaults, LimitSettings, DownstreamSettings, DatabaseSettings, ServerSettings):
    """Every setting, one flat namespace; built from explicit values, never from the environment."""


# -- the environment --------------------------------------------------------------------------------------------
class _FromEnvironment(BaseSettings, Settings):
    """The fields of ``Settings`` as pydantic-settings sees them; never instantiated (``Settings`` validates)."""

    model_config = SettingsConfigDict(case_sensitive=False, env_prefix="", extra="ignore")


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_FromEnvironment, case_sensitive=False, env_ignore_empty=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


def load_settings(environ: Mapping[str, str] | None = None, *, serving: bool = True) -> Settings:
    """Settings from the environment (``os.environ`` unless given); unrelated variables are ignored.

    No ``.env`` file: the process environment is the whole configuration, as the container gets it. ``serving``
    False (the maintenance commands: ``migrate``, ``copy-to-postgres``, ...) skips what only a server needs: they
    sign no cursors, so a one-off migration job needs no ``CURSOR_SECRET``."""
    values = _MappingSource(os.environ if environ is None else environ)()
    settings = Settings(**values)
    if serving:
        _check_several_processes(settings, values)
    return settings


def _check_several_processes(settings: Settings, values: Mapping[str, Any]) -> None:
    """What several processes (workers, replicas) need: one database they share (an in-memory one is per process)
    and one key to sign and check cursors with (the random default is per process, so a cursor made by one would
    be refused by the next). Checked here, where "not set" is still visible (``Settings`` fills in the random
    default, and ``replace`` passes every field)."""
    if settings.workers > 1 and settings.database_path == ":memory:" and not settings.database_url.get_secret_value():
        raise SettingsError(
            "WORKERS > 1 needs a database file the workers share: DATABASE_PATH=:memory: is one database per process"
        )
    if "cursor_secret" in values:
        return
    auto = str(values.get("workers", "")).strip().lower() == "auto"
    reasons = [
        *(["WORKERS=auto" if auto else f"WORKERS={settings.workers}"] if auto or settings.workers > 1 else []),
        *(["DATABASE_URL is set"] if settings.database_url.get_secret_value() else []),
    ]
    if reasons:
        raise SettingsError(
            f"CURSOR_SECRET is required with {' and '.join(reasons)}: every process must sign pagination cursors "
            "with the same key (set it to a random string of 16 or more characters)"
        )


# -- one-line errors --------------------------------------------------------------------------------------------
_PLAIN = re.compile(r"[\w.:/@+,=%-]{1,80}")


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    if _PLAIN.fullmatch(text):
        return text
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _allowed(field: FieldInfo) -> str:
    """What a field accepts, read from its type and constraints (so the message cannot drift from the check)."""
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "allowed values are " + ", ".join(str(a) for a in get_args(annotation))
    if annotation is bool:
        return f"allowed values are {_FLAG_WORDS} (any case)"
    words = {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}
    bounds = [
        f"{symbol} {getattr(m, attr)}"
        for symbol, attr in words.items()
        for m in field.metadata
        if isinstance(m, getattr(annotated_types, attr.capitalize()))
    ]
    if any(isinstance(m, BeforeValidator) and m.func is _workers for m in field.metadata):
        return "must be auto or an integer " + " and ".join(bounds)
    if annotation in (int, float):
        kind = "an integer" if annotation is int else "a number"
        return f"must be {kind}" + (" " + " and ".join(bounds) if bounds else "")
    if any(isinstance(m, AfterValidator) and m.func is _http_url for m in field.metadata):
        return "must be an http:// or https:// URL"
    if any(isinstance(m, AfterValidator) and m.func is _postgres_url for m in field.metadata):
        return "must be a postgresql:// URL (postgresql://user:password@host:port/database)"
    pattern = next((m.pattern for m in field.metadata if getattr(m, "pattern", None)), None)
    if pattern:
        return f"must match {pattern}"
    shortest = next((m.min_length for m in field.metadata if isinstance(m, annotated_types.MinLen)), 0)
    longest = next((m.max_length for m in field.metadata if isinstance(m, annotated_types.MaxLen)), None)
    if longest is not None:
        return f"must be {shortest} to {longest} characters long"
    return f"must be at least {shortest} characters long" if shortest else "not a valid value"


def describe_errors(model: type[BaseModel], exc: ValidationError, *, env_prefix: str = "") -> str:
    """One line for every problem in ``exc``: ``NAME=value is invalid: what is allowed``, joined by ``; ``."""
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if not loc:  # a cross-field check words its own message
            parts.append(error["msg"])
            continue
        name = str(loc[0])
        env = f"{env_prefix}{name.upper()}"
        field = model.model_fields.get(name)
        if error["type"] == "extra_forbidden" or field is None:
            parts.append(f"{env} is not a setting")
            continue
        secret = field.annotation is SecretStr
        parts.append(f"{env}={'***' if secret else _shown(error['input'])} is invalid: {_allowed(field)}")
    return "; ".join(dict.fromkeys(parts))
