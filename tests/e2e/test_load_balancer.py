"""The shipped nginx configuration (docker/nginx/gateway.conf.template) in front of two real gateways.

The compose scale-out variant mounts that template into the nginx image; here Debian's nginx renders the same
server block. Two gateways share one database (one SQLite file here; the PostgreSQL replicas are tested in
tests/storage/postgres); requests through nginx reach both, keep the gateway's own answers (413, 401, ids),
and a replica that is down is skipped for requests nginx may repeat.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML (via schemathesis), no stubs in the lock

from support.nginx import REPO, Nginx, nginx_binary
from support.servers import GatewayFactory, ServerThread, auth


@pytest.fixture
def pair(make_gateway: GatewayFactory, tmp_path: Path) -> Iterator[tuple[Nginx, list[ServerThread]]]:
    if nginx_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is missing: make test installs Debian's nginx")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    secret = "lb-test-cursor-secret-0123456789"
    gateways = [make_gateway(cursor_secret=secret) for _ in range(2)]
    lb = Nginx(tmp_path / "nginx", [g.url.removeprefix("http://") for g in gateways]).start()
    yield lb, gateways
    lb.stop()


async def test_requests_through_nginx_reach_both_replicas_and_keep_the_gateways_answers(
    pair: tuple[Nginx, list[ServerThread]],
) -> None:
    lb, gateways = pair
    async with httpx.AsyncClient(base_url=lb.url, timeout=10) as client:
        ids = []
        for i in range(20):
            r = await client.post("/sessions", json={"name": f"lb-{i}", "start_state": 0}, headers=auth("teacher"))
            assert r.status_code == 201, r.text
            ids.append(r.json()["session_id"])
        # the caller's request id and the gateway's error envelope pass through unchanged
        r = await client.get("/sessions", headers={**auth("teacher"), "X-Request-ID": "lb-trace-1"})
        assert r.headers["x-request-id"] == "lb-trace-1"
        r = await client.get("/sessions", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"]
        r = await client.post(
            "/sessions", content=b"x" * 2_000_000, headers={**auth("teacher"), "Content-Type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        # a cursor walk whose pages come from either replica returns every session once
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            page = await client.get("/sessions", params=params, headers=auth("teacher"), timeout=10)
            assert page.status_code == 200, page.text
            seen += [s["session_id"] for s in page.json()]
            cursor = page.headers.get("x-next-cursor")
            if not cursor:
                break
        assert sorted(seen) == sorted(ids)
    # round robin: both replicas answered (their own request counters moved)
    for g in gateways:
        async with httpx.AsyncClient() as direct:
            metrics = (await direct.get(f"{g.url}/metrics")).text
        served = [line for line in metrics.splitlines() if line.startswith("http_requests_total{") and "POST" in line]
        assert served, f"replica {g.url} served nothing"


def test_a_replica_that_is_down_is_skipped(pair: tuple[Nginx, list[ServerThread]]) -> None:
    lb, gateways = pair
    gateways[1].stop()
    with httpx.Client(base_url=lb.url, timeout=10) as client:
        statuses = [client.get("/health/ready").status_code for _ in range(10)]
        assert statuses == [200] * 10  # a refused connection is retried on the live replica


def test_compose_scale_out_variant_is_complete() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.scale.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "gateway", "lb", "devstack"} <= set(services)
    gateway, migrate, lb = services["gateway"], services["migrate"], services["lb"]
    assert gateway["deploy"]["replicas"] == 3
    assert migrate["command"] == ["python", "-m", "service", "migrate"] and migrate["restart"] == "no"
    # replicas never race the migration, nginx starts once they are ready, every service has a health check
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert lb["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert "/health/ready" in " ".join(gateway["healthcheck"]["test"])
    for name in ("postgres", "gateway", "lb"):
        assert services[name]["healthcheck"]["test"]
    # over TCP: on a fresh volume the image's init server listens on the unix socket only, and is not the real one
    assert "-h 127.0.0.1" in " ".join(services["postgres"]["healthcheck"]["test"])
    env = gateway["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://") and "CURSOR_SECRET" in env
    assert "${POSTGRES_PASSWORD:?" in env["DATABASE_URL"]  # no password baked into the file
    mounted = lb["volumes"][0].split(":")[0]
    assert (REPO / "docker" / mounted).resolve() == (REPO / "docker" / "nginx" / "gateway.conf.template")
    assert "GATEWAY_UPSTREAM_SERVERS" in lb["environment"] and "LB_PORT" in lb["environment"]
