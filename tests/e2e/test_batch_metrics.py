"""``/metrics`` shows how full the SQLite batches are: every awaited database call is counted in exactly one batch."""

from __future__ import annotations

import asyncio
import re

import pytest

from support.inprocess import AppGatewayFactory
from support.servers import auth


def sample(metrics: str, name: str, kind: str) -> float:
    found = re.search(rf'^{name}\{{kind="{kind}"\}} (\S+)$', metrics, re.M)
    assert found, f"{name}{{kind={kind}}} missing from /metrics"
    return float(found.group(1))


@pytest.mark.sqlite_only
async def test_batch_sizes_account_for_every_database_call(make_app_gateway: AppGatewayFactory) -> None:
    gateway = await make_app_gateway()
    async with gateway.client(timeout=30) as client:
        created = await asyncio.gather(
            *(client.post("/sessions", json={"name": f"b{i}"}, headers=auth("teacher")) for i in range(100))
        )
        assert [r.status_code for r in created] == [201] * 100
        ids = [r.json()["session_id"] for r in created]
        read = await asyncio.gather(*(client.get(f"/sessions/{sid}", headers=auth("teacher")) for sid in ids))
        assert [r.status_code for r in read] == [200] * 100
        metrics = (await client.get("/metrics")).text
    for kind in ("read", "write"):
        calls = sample(metrics, "db_operation_duration_seconds_count", kind)
        batched = sample(metrics, "db_batch_size_sum", kind)
        batches = sample(metrics, "db_batch_size_count", kind)
        assert batched == calls  # each call in one batch, none lost or counted twice
        assert calls >= 100 and batches < calls  # 100 requests at once share hops
    assert re.search(r'^db_batch_size_bucket\{kind="write",le="256\.0"\} ', metrics, re.M)
