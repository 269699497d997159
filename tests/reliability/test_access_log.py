"""The access log of a real ``python -m service serve``: INFO records that follow LOG_LEVEL; ACCESS_LOG=false
silences them at any level."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from reliability_kit import GatewayProcess

DOWNSTREAM = "http://127.0.0.1:9"  # /health needs none


async def access_lines(tmp_path: Path, *, log_level: str, access_log: str) -> list[str]:
    """Access-log lines written while serving three ``GET /health`` (after start-up), up to a clean exit."""
    gw = GatewayProcess(tmp_path, DOWNSTREAM, log_level=log_level, access_log=access_log)
    try:
        await gw.start()
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            for _ in range(3):
                assert (await client.get("/health", params={"probe": "access-log"})).status_code == 200
        gw.signal(signal.SIGTERM)
        assert await gw.wait_exit(15) == 0, gw.log_text()
    finally:
        gw.close()
    lines = gw.log_text().splitlines()
    assert "Traceback" not in gw.log_text()
    return [line for line in lines if " service.access " in line and "GET /health" in line]


@pytest.mark.parametrize("log_level", ["warning", "error"])
async def test_access_lines_are_info_records_that_log_level_filters(tmp_path: Path, log_level: str) -> None:
    assert await access_lines(tmp_path, log_level=log_level, access_log="true") == []


@pytest.mark.parametrize("log_level", ["info", "debug"])
async def test_access_lines_are_written_at_info_and_below(tmp_path: Path, log_level: str) -> None:
    lines = await access_lines(tmp_path, log_level=log_level, access_log="true")
    assert len(lines) >= 3, lines
    assert all(" INFO service.access " in line and " 200 " in line for line in lines), lines


@pytest.mark.parametrize("log_level", ["debug", "info"])
async def test_access_log_false_silences_them_at_any_level(tmp_path: Path, log_level: str) -> None:
    assert await access_lines(tmp_path, log_level=log_level, access_log="false") == []
