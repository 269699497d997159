from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.settings import (
    DatabaseSettings,
    DownstreamSettings,
    LimitSettings,
    OperationSettings,
    RagDefaults,
    ServerSettings,
    Settings,
    SettingsError,
    load_settings,
)
from service.storage.sqlite import Database

README = Path(__file__).resolve().parents[2] / "README.md"
SECRET = "a-cursor-secret-nobody-may-see-0123456789"


def test_every_setting_is_documented_in_readme() -> None:
    text = README.read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in text]
    assert missing == []


def test_env_values_are_cast_to_the_field_types() -> None:
    s = load_settings(
        {
            "PORT": "9001",
            "LOG_JSON": "true",
            "HTTP_READ_TIMEOUT_S": "2.5",
            "DATABASE_PATH": "/tmp/x.db",
            "DB_SYNCHRONOUS": "FULL",
        }
    )
    assert (s.port, s.log_json, s.http_read_timeout_s, s.database_path, s.db_synchronous) == (
        9001,
        True,
        2.5,
        "/tmp/x.db",
        "FULL",
    )
    assert load_settings({}).port == Settings().port


# Every one of these was taken (or silently turned into something else) by the hand-written loader.
BAD = [
    ("PORT", "-1", "must be an integer >= 1 and <= 65535"),
    ("PORT", "0", "must be an integer >= 1 and <= 65535"),
    ("PORT", "65536", "must be an integer >= 1 and <= 65535"),
    ("PORT", "eighty", "must be an integer"),
    ("HTTP_TRANSPORT", "foo", "allowed values are native, aiohttp, httpx"),
    ("LOG_LEVEL", "verbose", "allowed values are debug, info, warning, error, critical"),
    ("LOG_JSON", "ture", "allowed values are true, false, 1, 0, yes, no, on, off"),
    ("ACCESS_LOG", "t", "allowed values are true, false"),
    ("METRICS_ENABLED", "2", "allowed values are true, false"),
    ("DB_READ_CONNECTIONS", "-3", "must be an integer >= 1"),
    ("DB_READ_CONNECTIONS", "0", "must be an integer >= 1"),
    ("DB_CACHE_SIZE_KIB", "0", "must be an integer >= 1"),
    ("DB_BUSY_TIMEOUT_MS", "-1", "must be an integer >= 0"),
    ("DB_SYNCHRONOUS", "OFF", "allowed values are NORMAL, FULL, EXTRA"),
    ("HTTP_READ_TIMEOUT_S", "0", "must be a number > 0"),
    ("HTTP_READ_TIMEOUT_S", "soon", "must be a number > 0"),
    ("HTTP_CONNECT_TIMEOUT_S", "-1", "must be a number > 0"),
    ("BODY_READ_TIMEOUT_S", "0", "must be a number > 0"),
    ("SHUTDOWN_TIMEOUT_S", "0", "must be an integer >= 1"),
    ("HTTP_MAX_CONNECTIONS", "0", "must be an integer >= 1"),
    ("HTTP_RETRIES", "-1", "must be an integer >= 0"),
    ("DOWNSTREAM_MAX_CONCURRENCY", "0", "must be an integer >= 1"),
    ("MAX_IN_FLIGHT", "0", "must be an integer >= 1"),
    ("MAX_PAGE_SIZE", "0", "must be an integer >= 1 and <= 10000"),
    ("MAX_PAGE_SIZE", "10001", "must be an integer >= 1 and <= 10000"),
    ("MAX_BODY_BYTES", "0", "must be an integer >= 1"),
    ("AUTH_SERVICE_URL", "ftp://auth.example", "must be an http:// or https:// URL"),
    ("RAG_SERVICE_URL", "localhost:8100", "must be an http:// or https:// URL"),
    ("QUESTION_SERVICE_URL", "", "http"),
    ("DATABASE_PATH", "", "characters long"),
    ("RAG_DEFAULT_TOP_K", "0", "must be an integer >= 1 and <= 50"),
    ("RAG_DEFAULT_MIN_SCORE", "1.5", "must be a number >= 0.0 and <= 1.0"),
    ("RAG_DEFAULT_CHAIN_TYPE", "map reduce", "must match"),
    ("QUESTION_CONTEXT_MAX_CHUNKS", "0", "must be an integer >= 1"),
    ("LOOP_LAG_INTERVAL_S", "0", "must be a number > 0"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_bad_values_are_refused_in_one_line_naming_variable_value_and_what_is_allowed(
    name: str, value: str, allowed: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({name: value})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{name}="), message
    assert value in message and "is invalid: " in message and allowed in message, message


def test_the_message_reads_as_documented() -> None:
    with pytest.raises(SettingsError, match=r"^PORT=-1 is invalid: must be an integer >= 1 and <= 65535$"):
        load_settings({"PORT": "-1"})
    with pytest.raises(
        SettingsError, match=r"^HTTP_TRANSPORT=foo is invalid: allowed values are native, aiohttp, httpx$"
    ):
        load_settings({"HTTP_TRANSPORT": "foo"})
    with pytest.raises(SettingsError, match=r"^LOG_LEVEL='very verbose' is invalid"):  # quoted when not plain
        load_settings({"LOG_LEVEL": "very verbose"})


def test_a_settings_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_settings({"PORT": "x"})


def test_several_bad_values_are_all_named_on_one_line() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"PORT": "-1", "LOG_JSON": "ture", "HTTP_TRANSPORT": "foo"})
    message = str(caught.value)
    assert "\n" not in message
    assert all(f"{name}=" in message for name in ("PORT", "LOG_JSON", "HTTP_TRANSPORT")), message


def test_a_keepalive_pool_larger_than_the_pool_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^HTTP_MAX_KEEPALIVE=300 is invalid: must be <= HTTP_MAX_CONNECTIONS"):
        load_settings({"HTTP_MAX_CONNECTIONS": "200", "HTTP_MAX_KEEPALIVE": "300"})
    ok = load_settings({"HTTP_MAX_CONNECTIONS": "50", "HTTP_MAX_KEEPALIVE": "50"})
    assert (ok.http_max_connections, ok.http_max_keepalive) == (50, 50)


@pytest.mark.parametrize(
    ("word", "value"),
    [(w, True) for w in ("true", "TRUE", "True", "1", "yes", "Yes", "on", " ON ")]
    + [(w, False) for w in ("false", "FALSE", "0", "no", "NO", "off", "Off")],
)
def test_booleans_take_exactly_the_usual_words_in_any_case(word: str, value: bool) -> None:
    s = load_settings({"LOG_JSON": word, "ACCESS_LOG": word, "FORWARD_AUTHORIZATION": word})
    assert (s.log_json, s.access_log, s.forward_authorization) == (value, value, value)


def test_good_values_are_accepted_and_normalised() -> None:
    s = load_settings(
        {
            "PORT": "65535",
            "LOG_LEVEL": "WARNING",
            "HTTP_TRANSPORT": "HTTPX",
            "DB_SYNCHRONOUS": "extra",
            "MAX_PAGE_SIZE": "10000",
            "DB_BUSY_TIMEOUT_MS": "0",
            "HTTP_RETRIES": "0",
            "AUTH_SERVICE_URL": "https://auth.example:8443/base",
            "RAG_SERVICE_URL": "http://10.0.0.7:8000",
            "QUESTION_SERVICE_URL": "http://llm",
            "RAG_DEFAULT_MIN_SCORE": "0.25",
        }
    )
    assert (s.port, s.log_level, s.http_transport, s.db_synchronous, s.max_page_size) == (
        65535,
        "warning",
        "httpx",
        "EXTRA",
        10000,
    )
    assert (s.db_busy_timeout_ms, s.http_retries, s.rag_default_min_score) == (0, 0, 0.25)
    # URLs stay the strings given (call sites join paths onto them)
    assert s.auth_service_url == "https://auth.example:8443/base" and isinstance(s.auth_service_url, str)
    assert (s.rag_service_url, s.question_service_url) == ("http://10.0.0.7:8000", "http://llm")
    assert load_settings({"PORT": "1"}).port == 1


def test_env_names_are_case_insensitive_and_unrelated_variables_are_ignored() -> None:
    s = load_settings({"port": "9100", "Log_Level": "debug", "PATH": "/usr/bin", "HOME": "/root", "PORTS": "x"})
    assert (s.port, s.log_level) == (9100, "debug")


def test_explicit_construction_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("LOG_LEVEL", "bogus")
    assert Settings().port == 8000
    assert Settings(port=8001).port == 8001
    with pytest.raises(SettingsError, match="^LOG_LEVEL=bogus"):
        load_settings()  # the environment, this time
    monkeypatch.setenv("LOG_LEVEL", "error")
    assert (load_settings().port, load_settings().log_level) == (1234, "error")


def test_explicit_values_are_validated_too() -> None:
    with pytest.raises(SettingsError, match="^PORT=-1 is invalid"):
        Settings(port=-1)
    with pytest.raises(SettingsError, match="^DB_READ_CONNECTIONS=0 is invalid"):
        DatabaseSettings(db_read_connections=0)
    with pytest.raises(SettingsError, match="^NO_SUCH_SETTING is not a setting$"):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_replace_returns_a_new_validated_settings() -> None:
    base = Settings(cursor_secret=SecretStr(SECRET))
    changed = base.replace(port=9002, log_level="ERROR")
    assert isinstance(changed, Settings) and changed is not base
    assert (changed.port, changed.log_level, base.port) == (9002, "error", 8000)
    assert changed.cursor_secret.get_secret_value() == SECRET  # everything else carried over
    with pytest.raises(SettingsError, match="^PORT=0 is invalid"):
        base.replace(port=0)
    with pytest.raises(SettingsError, match="^HTTP_MAX_KEEPALIVE=500 is invalid"):
        base.replace(http_max_keepalive=500)
    with pytest.raises(SettingsError, match="^PROT is not a setting"):
        base.replace(prot=1)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValueError):
        s.port = 1
    assert s.port == 8000


def test_settings_are_grouped_by_concern_with_flat_names() -> None:
    s = Settings()
    groups = (ServerSettings, DatabaseSettings, DownstreamSettings, LimitSettings, RagDefaults, OperationSettings)
    assert all(isinstance(s, group) for group in groups)
    names = [list(group.model_fields) for group in groups]
    assert sorted(sum(names, [])) == sorted(Settings.model_fields)  # each setting in exactly one group
    assert set(DatabaseSettings.model_fields) == {
        "database_path",
        "db_read_connections",
        "db_cache_size_kib",
        "db_busy_timeout_ms",
        "db_synchronous",
        "db_wal_autocheckpoint",
        "db_journal_size_limit_bytes",
        "database_url",
        "db_pool_size",
        "db_pool_timeout_s",
    }


def test_the_cursor_secret_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    s = load_settings({"CURSOR_SECRET": SECRET})
    assert s.cursor_secret.get_secret_value() == SECRET
    with caplog.at_level(logging.INFO):
        logging.getLogger("service.test").info("settings: %s %r", s, s)
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump()), f"{s}", caplog.text):
        assert SECRET not in text
    assert "cursor_secret" in repr(s)


def test_a_bad_cursor_secret_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"CURSOR_SECRET": "short-secret"})
    assert str(caught.value).startswith("CURSOR_SECRET=*** is invalid: must be 16 to")
    assert "short-secret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_default_cursor_secret_is_random_and_kept_by_replace() -> None:
    first = Settings()
    secret = first.cursor_secret.get_secret_value()
    assert len(secret) == 64
    assert Settings().cursor_secret.get_secret_value() != secret
    assert load_settings({}).cursor_secret.get_secret_value() not in (secret, "")
    assert first.replace(port=9).cursor_secret.get_secret_value() == secret


async def test_database_takes_its_configuration_from_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        database_path=str(tmp_path / "cfg.db"),
        db_cache_size_kib=1234,
        db_busy_timeout_ms=4321,
        db_synchronous="FULL",
        db_read_connections=3,
    )
    db = Database.from_settings(settings)
    await db.open()
    try:
        assert Path(db.path) == tmp_path / "cfg.db"
        pragmas = ("cache_size", "busy_timeout", "synchronous")
        for _ in range(3):  # round-robin over every reader
            rows = await db.read_fn(lambda c: [c.execute(f"PRAGMA {p}").fetchone()[0] for p in pragmas])
            assert rows == [-1234, 4321, 2]
        writer = await db.run_on_writer(lambda c: [c.execute(f"PRAGMA {p}").fetchone()[0] for p in pragmas])
        assert writer == [-1234, 4321, 2]
    finally:
        await db.close()
