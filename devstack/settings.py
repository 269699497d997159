"""Settings of the reference downstream (dev/test only, not product code).

Read like the gateway's (pydantic-settings, typed and bounded, one-line errors), from ``DEVSTACK_*`` variables;
kept apart from ``service.settings`` because the devstack never imports the product.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

FAULT_MODES = frozenset({"none", "error500", "invalid_json", "hang", "disconnect", "slow_body"})
ENV_PREFIX = "DEVSTACK_"


class DevstackSettingsError(ValueError):
    """A bad setting; the message is one line naming the variable, the value and what is allowed."""


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


def _split_paths(value: object) -> object:
    # The env form is a comma-separated list; in code it is a tuple already.
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return value


Count = Annotated[int, Field(ge=1, le=1 << 40)]
Paths = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_paths), AfterValidator(validate_paths)]


class DevstackSettings(BaseModel):
    """Configuration; ``DevstackSettings(...)`` takes explicit values, :meth:`from_env` reads ``DEVSTACK_*``."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8100
    latency_ms: Annotated[float, Field(ge=0, le=3_600_000)] = 0.0
    error_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    seed: int | None = None
    fault: Annotated[str, AfterValidator(validate_fault)] = "none"
    fault_paths: Paths = ()
    hang_seconds: Annotated[float, Field(gt=0, le=86_400)] = 3600.0
    slow_body_chunk_bytes: Annotated[int, Field(ge=1, le=1 << 20)] = 16
    slow_body_delay_ms: Annotated[float, Field(ge=0, le=60_000)] = 50.0
    max_body_bytes: Count = 24 * 1024 * 1024
    max_document_chars: Count = 5_000_000
    max_chunks_per_collection: Count = 20_000
    max_total_chunks: Count = 1_000_000
    max_total_document_chars: Count = 256_000_000

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise DevstackSettingsError(_one_line(exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DevstackSettings:
        """Build settings from ``DEVSTACK_*`` variables (blank ones count as unset); a bad value raises
        ``DevstackSettingsError`` at start-up."""
        return cls(**_MappingSource(os.environ if env is None else env)())


class _FromEnvironment(BaseSettings, DevstackSettings):
    """The fields as pydantic-settings sees them; never instantiated (``DevstackSettings`` validates)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore")


class _MappingSource(EnvSettingsSource):
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_FromEnvironment, case_sensitive=False, env_prefix=ENV_PREFIX, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items() if value.strip()}


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        name = f"{ENV_PREFIX}{'.'.join(str(p) for p in error['loc'][:1]).upper()}"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            parts.append(f"{name} is not a setting")
        else:
            parts.append(f"{name}={error['input']!r} is invalid: {message[:1].lower()}{message[1:]}")
    return "; ".join(parts).replace("\n", " ")
