"""Downstream faults end to end: the reference downstream misbehaves (fault knobs restricted by ``fault_paths``),
the gateway answers 502/503/504 within its deadline, the session stays consistent and no connection leaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from blockbuster import BlockBuster

from service.downstream import Downstream
from support.inprocess import AppGatewayFactory, InProcessServer
from support.ports import closed_port_url
from support.servers import ServerThread, auth, gateway_settings
from support.session_view import counters_of

DOC = """# Photosynthesis

Photosynthesis converts light energy into chemical energy stored in glucose.

Chlorophyll in the chloroplasts absorbs mostly blue and red light.

The Calvin cycle fixes carbon dioxide into sugars using ATP and NADPH.
"""
READ_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 1.0
# The hard deadline of one downstream call is connect + read timeout; allow scheduling slack on a busy CI box.
DEADLINE_S = CONNECT_TIMEOUT_S + READ_TIMEOUT_S
SLACK_S = 2.0


@pytest.fixture(autouse=True)
def httpcore_lazy_import(blockbuster: BlockBuster) -> None:
    """httpcore runs ``import sniffio`` each time it sets up a sync primitive; sniffio is not installed (anyio 4
    dropped it), so every attempt takes the import lock, and the test client's loop and the gateway's (with the
    ``httpx`` transport) contend for it. A third-party lazy import, not this code's: allow exactly that call (the
    fix is to depend on sniffio so the import is cached)."""
    lock = blockbuster.functions["threading.Lock.acquire"]
    lock.can_block_in("httpcore/_synchronization.py", "current_async_library")


@dataclass
class Faulty:
    server: InProcessServer
    downstream: Downstream
    devstack: ServerThread


async def start_faulty(
    make_app_gateway: AppGatewayFactory, tmp_path: Path, devstack: ServerThread, **overrides: Any
) -> Faulty:
    """A gateway whose Downstream the test keeps (built off the loop: it loads CA certificates)."""
    downstream = await asyncio.to_thread(Downstream, gateway_settings(tmp_path, devstack.url, **overrides))
    return Faulty(await make_app_gateway(downstream=downstream, **overrides), downstream, devstack)


@pytest.fixture
async def faulty(
    request: pytest.FixtureRequest,
    make_app_gateway: AppGatewayFactory,
    tmp_path: Path,
    devstack: ServerThread,
    reset_devstack: None,
) -> Faulty:
    """A gateway with short timeouts whose Downstream the test can inspect; the transport is ``aiohttp`` (the
    default) unless a test parametrizes ``faulty`` indirectly."""
    overrides: dict[str, Any] = {
        "http_read_timeout_s": READ_TIMEOUT_S,
        "http_connect_timeout_s": CONNECT_TIMEOUT_S,
        "http_transport": getattr(request, "param", "aiohttp"),
    }
    return await start_faulty(make_app_gateway, tmp_path, devstack, **overrides)


@pytest.fixture
async def client(faulty: Faulty) -> AsyncIterator[httpx.AsyncClient]:
    async with faulty.server.client(timeout=30) as c:
        yield c


@pytest.fixture
async def control(devstack: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=devstack.url, timeout=10) as c:
        yield c


@pytest.fixture
def closed_port() -> str:
    """A 127.0.0.1 URL on which nothing listens (connection refused)."""
    return closed_port_url()


async def set_fault(control: httpx.AsyncClient, **knobs: Any) -> None:
    r = await control.post("/_control", json={"reset_counts": True, **knobs})
    assert r.status_code == 200, r.text


async def clear_faults(control: httpx.AsyncClient) -> None:
    assert (await control.post("/_control/reset")).status_code == 200


async def counts(control: httpx.AsyncClient) -> dict[str, int]:
    found: dict[str, int] = (await control.get("/_control")).json()["counts"]
    return found


async def new_session_with_docs(client: httpx.AsyncClient) -> str:
    r = await client.post("/sessions", json={"name": "Faults"}, headers=auth("teacher"))
    assert r.status_code == 201, r.text
    sid = str(r.json()["session_id"])
    r = await client.post(
        "/api/documents/process-and-store",
        data={"session_id": sid, "chunk_size": "200", "chunk_overlap": "20", "chunk_strategy": "paragraph"},
        files=[("files", ("bio.md", DOC.encode(), "text/markdown"))],
        headers=auth("teacher"),
    )
    assert r.status_code == 200, r.text
    return sid


async def snapshot(client: httpx.AsyncClient, sid: str) -> tuple[dict[str, int], list[str]]:
    r = await client.get(f"/sessions/{sid}?include=events", headers=auth("teacher"))
    assert r.status_code == 200, r.text
    body = r.json()
    return counters_of(body), [e["event_type"] for e in body["events"]]


async def no_leak(downstream: Downstream) -> None:
    """The pool is idle once every response is out (a closing connection may need one loop turn)."""
    for _ in range(50):
        if downstream.pool_stats()["in_use"] == 0:
            return
        await asyncio.sleep(0.02)
    assert downstream.pool_stats()["in_use"] == 0


def assert_error(r: httpx.Response, status: int, started: float) -> dict[str, Any]:
    elapsed = time.perf_counter() - started
    assert r.status_code == status, r.text
    assert elapsed < DEADLINE_S + SLACK_S, f"answered after {elapsed:.2f}s"
    body: dict[str, Any] = r.json()["error"]
    assert body["code"] == {502: "bad_gateway", 503: "service_unavailable", 504: "gateway_timeout"}[status]
    assert r.headers["x-request-id"]
    return body


QUERY_FAULTS = [
    pytest.param({"fault": "error500"}, 502, {"status": 500}, id="error500"),
    pytest.param({"fault": "status_503"}, 502, {"status": 503}, id="status503"),
    pytest.param({"fault": "status_404"}, 502, {"status": 404}, id="status404"),
    pytest.param({"fault": "invalid_json"}, 502, {"status": 200}, id="invalid-json"),
    pytest.param({"fault": "disconnect"}, 502, {}, id="mid-body-disconnect"),
    pytest.param({"fault": "hang"}, 504, {}, id="hang"),
    pytest.param({"latency_ms": 1500}, 504, {}, id="slow-beyond-read-timeout"),
    pytest.param(
        {"fault": "slow_body", "slow_body_delay_ms": 200}, 504, {"deadline_s": DEADLINE_S}, id="trickle-hard-deadline"
    ),
]


@pytest.mark.parametrize("faulty", ["aiohttp", "httpx"], indirect=True)
@pytest.mark.parametrize(("knobs", "status", "details"), QUERY_FAULTS)
async def test_query_fault(
    faulty: Faulty,
    client: httpx.AsyncClient,
    control: httpx.AsyncClient,
    knobs: dict[str, Any],
    status: int,
    details: dict[str, Any],
) -> None:
    sid = await new_session_with_docs(client)
    before = await snapshot(client, sid)
    await set_fault(control, fault_paths=["/query"], **knobs)

    started = time.perf_counter()
    r = await client.post("/rag/query", json={"session_id": sid, "query": "chlorophyll"}, headers=auth("student"))
    error = assert_error(r, status, started)
    assert error["details"] == {**error["details"], "service": "rag", **details}
    assert (await counts(control)).get("/query") == 1  # a POST that reached the downstream is never retried

    assert await snapshot(client, sid) == before  # no counter bumped, no event recorded
    await no_leak(faulty.downstream)

    # the worker and the pool are fine: the next query works
    await clear_faults(control)
    r = await client.post("/rag/query", json={"session_id": sid, "query": "chlorophyll"}, headers=auth("student"))
    assert r.status_code == 200, r.text
    counters, types = await snapshot(client, sid)
    assert counters["query_count"] == 1 and types.count("RAG_QUERY") == 1
    await no_leak(faulty.downstream)


@pytest.mark.parametrize(
    ("knobs", "status", "chunk_calls"),
    [
        pytest.param({"fault": "status_503", "fault_paths": ["/sessions/*/chunks"]}, 502, 3, id="chunks-503-retried"),
        pytest.param({"fault": "hang", "fault_paths": ["/sessions/*/chunks"]}, 504, 1, id="chunks-hang"),
        pytest.param({"fault": "error500", "fault_paths": ["/models/generate"]}, 502, 1, id="llm-500"),
        pytest.param({"fault": "invalid_json", "fault_paths": ["/models/generate"]}, 502, 1, id="llm-invalid-json"),
        pytest.param({"fault": "disconnect", "fault_paths": ["/models/generate"]}, 502, 1, id="llm-disconnect"),
        pytest.param({"fault": "hang", "fault_paths": ["/models/generate"]}, 504, 1, id="llm-hang"),
    ],
)
async def test_generate_questions_fault(
    faulty: Faulty,
    client: httpx.AsyncClient,
    control: httpx.AsyncClient,
    knobs: dict[str, Any],
    status: int,
    chunk_calls: int,
) -> None:
    sid = await new_session_with_docs(client)
    before = await snapshot(client, sid)
    await set_fault(control, **knobs)
    started = time.perf_counter()
    r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 3}, headers=auth("teacher"))
    assert_error(r, status, started)
    seen = await counts(control)
    assert seen.get(f"/sessions/{sid}/chunks") == chunk_calls  # GET retried on 503 only
    assert seen.get("/models/generate", 0) <= 1
    assert await snapshot(client, sid) == before
    await no_leak(faulty.downstream)


@pytest.mark.parametrize(
    ("fault", "status"), [("error500", 502), ("invalid_json", 502), ("disconnect", 502), ("hang", 504)]
)
async def test_reprocess_fault(
    faulty: Faulty, client: httpx.AsyncClient, control: httpx.AsyncClient, fault: str, status: int
) -> None:
    sid = await new_session_with_docs(client)
    before = await snapshot(client, sid)
    await set_fault(control, fault=fault, fault_paths=["/sessions/*/reprocess"])
    started = time.perf_counter()
    r = await client.post(
        f"/sessions/{sid}/reprocess", json={"chunk_size": 80, "chunk_overlap": 10}, headers=auth("teacher")
    )
    assert_error(r, status, started)
    assert (await counts(control)).get(f"/sessions/{sid}/reprocess") == 1
    assert await snapshot(client, sid) == before
    await no_leak(faulty.downstream)


@pytest.mark.parametrize(("fault", "status"), [("invalid_json", 502), ("disconnect", 502), ("hang", 504)])
async def test_upload_fault(
    faulty: Faulty, client: httpx.AsyncClient, control: httpx.AsyncClient, fault: str, status: int
) -> None:
    r = await client.post("/sessions", json={"name": "Faults"}, headers=auth("teacher"))
    sid = r.json()["session_id"]
    before = await snapshot(client, sid)
    await set_fault(control, fault=fault, fault_paths=["/process-and-store"])
    started = time.perf_counter()
    r = await client.post(
        "/api/documents/process-and-store",
        data={"session_id": sid},
        files=[("files", (f"f{n}.md", DOC.encode(), "text/markdown")) for n in range(3)],
        headers=auth("teacher"),
    )
    error = assert_error(r, status, started)
    assert [f["error"]["status"] for f in error["details"]["files"]] == [status] * 3
    assert (await counts(control)).get("/process-and-store") == 3
    assert await snapshot(client, sid) == before
    await no_leak(faulty.downstream)


# -- connection refused ---------------------------------------------------------------------------------------------
@pytest.fixture
async def unreachable_rag(
    make_app_gateway: AppGatewayFactory, tmp_path: Path, devstack: ServerThread, closed_port: str
) -> Faulty:
    overrides = {"rag_service_url": closed_port, "question_service_url": closed_port}
    return await start_faulty(make_app_gateway, tmp_path, devstack, **overrides)


async def test_rag_and_question_services_unreachable(unreachable_rag: Faulty, closed_port: str) -> None:
    async with unreachable_rag.server.client(timeout=30) as client:
        r = await client.post("/sessions", json={"name": "Refused"}, headers=auth("teacher"))
        assert r.status_code == 201  # sessions need only the auth service
        sid = r.json()["session_id"]
        before = await snapshot(client, sid)

        started = time.perf_counter()
        r = await client.post("/rag/query", json={"session_id": sid, "query": "x"}, headers=auth("teacher"))
        assert assert_error(r, 503, started)["details"]["service"] == "rag"
        started = time.perf_counter()
        r = await client.post(f"/sessions/{sid}/generate-questions", json={"count": 2}, headers=auth("teacher"))
        assert_error(r, 503, started)
        started = time.perf_counter()
        r = await client.post(f"/sessions/{sid}/reprocess", json={}, headers=auth("teacher"))
        assert_error(r, 503, started)
        started = time.perf_counter()
        r = await client.post(
            "/api/documents/process-and-store",
            data={"session_id": sid},
            files=[("files", ("a.md", DOC.encode(), "text/markdown")), ("files", ("b.md", b"Text.", "text/plain"))],
            headers=auth("teacher"),
        )
        error = assert_error(r, 503, started)  # every file failed because the service is unreachable
        assert [f["error"]["status"] for f in error["details"]["files"]] == [503, 503]
        assert await snapshot(client, sid) == before

        r = await client.get("/profile", headers=auth("teacher"))
        assert r.status_code == 200
        r = await client.get("/health/services")
        assert r.status_code == 503
        services = r.json()["services"]
        assert services["auth"]["status"] == "ok"
        assert services["rag"]["status"] == services["question"]["status"] == "error"
        assert services["rag"]["detail"]["status"] == 503 and services["rag"]["url"] == closed_port
    await no_leak(unreachable_rag.downstream)


@pytest.fixture
async def unreachable_all(make_app_gateway: AppGatewayFactory, closed_port: str) -> InProcessServer:
    urls = {"auth_service_url": closed_port, "rag_service_url": closed_port, "question_service_url": closed_port}
    return await make_app_gateway(**urls)


async def test_auth_service_unreachable(unreachable_all: InProcessServer) -> None:
    async with unreachable_all.client(timeout=30) as client:
        for method, path in (("GET", "/profile"), ("POST", "/rag/query"), ("GET", "/sessions")):
            started = time.perf_counter()
            r = await client.request(method, path, json={"session_id": "s", "query": "q"}, headers=auth("teacher"))
            assert_error(r, 503, started)
            assert r.headers["retry-after"] == "1"
        r = await client.get("/health/services")
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        assert (await client.get("/health")).status_code == 200


# -- overload, and a storm of mixed faults -------------------------------------------------------------------------
@pytest.fixture
async def bounded(
    make_app_gateway: AppGatewayFactory, tmp_path: Path, devstack: ServerThread, reset_devstack: None
) -> Faulty:
    overrides = {"downstream_max_concurrency": 2, "http_pool_timeout_s": 0.1}
    return await start_faulty(make_app_gateway, tmp_path, devstack, **overrides)


async def test_concurrency_bound_turns_overload_into_fast_503(bounded: Faulty, control: httpx.AsyncClient) -> None:
    async with bounded.server.client(timeout=30) as client:
        sid = await new_session_with_docs(client)
        await set_fault(control, latency_ms=1000, fault_paths=["/query"])

        async def one() -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            r = await client.post("/rag/query", json={"session_id": sid, "query": "light"}, headers=auth("teacher"))
            return r, time.perf_counter() - started

        results = await asyncio.gather(*(one() for _ in range(8)))
        ok = [r for r, _ in results if r.status_code == 200]
        shed = [(r, t) for r, t in results if r.status_code == 503]
        assert len(ok) + len(shed) == 8, [r.text for r, _ in results]
        assert 1 <= len(ok) <= 2 * 2  # at most two calls in flight at any time; both slots are used
        assert len(shed) >= 4
        for r, elapsed in shed:
            assert r.json()["error"]["details"]["reason"] == "overloaded"
            assert r.headers["retry-after"] == "1"
            assert elapsed < 1.0  # rejected after the 0.1 s slot wait, not after the 1 s downstream latency
        counters, types = await snapshot(client, sid)
        assert counters["query_count"] == len(ok) == types.count("RAG_QUERY")
        assert (await counts(control)).get("/query") == len(ok)
    await no_leak(bounded.downstream)


@pytest.fixture(params=["aiohttp", "httpx"])
async def tiny_pool(
    request: pytest.FixtureRequest,
    make_app_gateway: AppGatewayFactory,
    tmp_path: Path,
    devstack: ServerThread,
    reset_devstack: None,
) -> Faulty:
    """One pooled connection, and a concurrency bound above it: overload surfaces as a pool wait."""
    overrides = {
        "http_max_connections": 1,
        "http_max_keepalive": 1,
        "http_pool_timeout_s": 0.2,
        "downstream_max_concurrency": 50,
        "http_transport": request.param,
    }
    return await start_faulty(make_app_gateway, tmp_path, devstack, **overrides)


async def test_exhausted_connection_pool_is_503(tiny_pool: Faulty, control: httpx.AsyncClient) -> None:
    async with tiny_pool.server.client(timeout=30) as client:
        sid = await new_session_with_docs(client)
        await set_fault(control, latency_ms=2000, fault_paths=["/query"])

        async def one() -> httpx.Response:
            return await client.post("/rag/query", json={"session_id": sid, "query": "x"}, headers=auth("teacher"))

        results = await asyncio.gather(*(one() for _ in range(4)))
        statuses = [r.status_code for r in results]
        assert set(statuses) <= {200, 503}, [r.text for r in results]
        assert statuses.count(200) >= 1 and statuses.count(503) >= 1
        for r in results:
            if r.status_code == 503:
                assert r.json()["error"]["details"]["service"] == "rag"
        counters, types = await snapshot(client, sid)
        assert counters["query_count"] == statuses.count(200) == types.count("RAG_QUERY")
    await no_leak(tiny_pool.downstream)


@pytest.mark.parametrize("faulty", ["aiohttp", "httpx"], indirect=True)
async def test_random_faults_keep_counters_exact(
    faulty: Faulty, client: httpx.AsyncClient, control: httpx.AsyncClient
) -> None:
    sid = await new_session_with_docs(client)
    await set_fault(control, error_rate=0.5, fault_paths=["/query"])
    gate = asyncio.Semaphore(10)

    async def one(n: int) -> int:
        async with gate:
            r = await client.post(
                "/rag/query", json={"session_id": sid, "query": f"light {n}"}, headers=auth("student")
            )
            return r.status_code

    statuses = await asyncio.gather(*(one(n) for n in range(40)))
    assert set(statuses) <= {200, 502}
    counters, types = await snapshot(client, sid)
    assert counters["query_count"] == statuses.count(200) == types.count("RAG_QUERY")
    await no_leak(faulty.downstream)
