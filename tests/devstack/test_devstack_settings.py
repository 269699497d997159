"""DEVSTACK_* settings: typed and bounded, read with pydantic-settings, one-line errors like the gateway's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.settings import DevstackSettings, DevstackSettingsError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("DEVSTACK_PORT", "x", "valid integer"),
        ("DEVSTACK_PORT", "0", "greater than or equal to 1"),
        ("DEVSTACK_PORT", "70000", "less than or equal to 65535"),
        ("DEVSTACK_LATENCY_MS", "-5", "greater than or equal to 0"),
        ("DEVSTACK_ERROR_RATE", "2", "less than or equal to 1"),
        ("DEVSTACK_SEED", "abc", "valid integer"),
        ("DEVSTACK_FAULT", "explode", "status_<400..599>"),
        ("DEVSTACK_FAULT_PATHS", "/query,models", "must start with '/'"),
        ("DEVSTACK_HANG_SECONDS", "0", "greater than 0"),
        ("DEVSTACK_SLOW_BODY_CHUNK_BYTES", "0", "greater than or equal to 1"),
        ("DEVSTACK_MAX_BODY_BYTES", "0", "greater than or equal to 1"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str, allowed: str) -> None:
    with pytest.raises(DevstackSettingsError) as caught:
        DevstackSettings.from_env({name: value})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{name}="), message
    assert "is invalid: " in message and allowed in message, message


def test_env_names_ignore_case_blank_means_unset_and_other_variables_are_ignored() -> None:
    s = DevstackSettings.from_env(
        {"devstack_port": "9100", "DEVSTACK_SEED": " ", "DEVSTACK_NOT_A_KNOB": "1", "PORT": "x", "FAULT": "x"}
    )
    assert (s.port, s.seed) == (9100, None)


def test_fault_paths_are_a_comma_separated_list_in_the_environment_and_a_tuple_in_code() -> None:
    assert DevstackSettings.from_env({"DEVSTACK_FAULT_PATHS": " /query , ,/models/*"}).fault_paths == (
        "/query",
        "/models/*",
    )
    assert DevstackSettings(fault_paths=("/query",)).fault_paths == ("/query",)


def test_explicit_values_never_read_the_environment_and_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_PORT", "x")
    assert DevstackSettings(latency_ms=5).port == 8100
    with pytest.raises(DevstackSettingsError, match="^DEVSTACK_ERROR_RATE=1.5 is invalid"):
        DevstackSettings(error_rate=1.5)
    with pytest.raises(DevstackSettingsError, match="^DEVSTACK_LATENCY is not a setting$"):
        DevstackSettings(latency=5)


def test_python_m_devstack_refuses_a_bad_setting_with_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVSTACK_")}
    env.update(DEVSTACK_PORT="-1", DEVSTACK_HOST="127.0.0.1")
    result = subprocess.run(  # our own interpreter and module
        [sys.executable, "-m", "devstack"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "configuration error: DEVSTACK_PORT='-1' is invalid: input should be greater than or equal to 1"
    ]
