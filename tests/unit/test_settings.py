from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service.settings import Settings, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_readme() -> None:
    text = README.read_text()
    missing = [f.name.upper() for f in dataclasses.fields(Settings) if f"`{f.name.upper()}`" not in text]
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


@pytest.mark.parametrize(
    ("name", "value"), [("PORT", "eighty"), ("HTTP_READ_TIMEOUT_S", "soon"), ("DB_SYNCHRONOUS", "OFF")]
)
def test_bad_values_are_refused_with_the_variable_name(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_settings({name: value})
