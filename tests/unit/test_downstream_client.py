"""The downstream client's policy with ``httpx.MockTransport``: retries, error mapping, deadline, concurrency."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey

from service.context import request_id_var
from service.downstream import Downstream
from service.downstream import client as client_module
from service.downstream.aiohttp_transport import mapped
from service.downstream.client import DownstreamBadAnswer, DownstreamTimeout, DownstreamUnavailable
from service.settings import Settings

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Script:
    """A MockTransport handler that plays a list of outcomes (a status, a response or an exception to raise)
    and records every request it saw."""

    def __init__(self, *outcomes: int | httpx.Response | Exception | Handler) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self.outcomes[min(len(self.requests), len(self.outcomes)) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, httpx.Response):
            return outcome
        if isinstance(outcome, int):
            return httpx.Response(outcome, json={"status": outcome})
        return await outcome(request)

    @property
    def attempts(self) -> int:
        return len(self.requests)


def settings(**overrides: Any) -> Settings:
    base = Settings(
        auth_service_url="http://auth.test",
        rag_service_url="http://rag.test/",
        question_service_url="http://question.test",
        http_retries=2,
        http_retry_backoff_s=0.001,
        http_connect_timeout_s=1.0,
        http_read_timeout_s=2.0,
    )
    return base.replace(**overrides)


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Downstream]]:
    made: list[Downstream] = []

    def build(script: Script, **overrides: Any) -> Downstream:
        ds = Downstream(settings(**overrides), transport=httpx.MockTransport(script))
        made.append(ds)
        return ds

    yield build
    for ds in made:
        await ds.aclose()


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the attempt number of every backoff (the sleep itself still runs)."""
    seen: list[int] = []
    original = Downstream._backoff

    async def recording(self: Downstream, attempt: int) -> None:
        seen.append(attempt)
        await original(self, attempt)

    monkeypatch.setattr(Downstream, "_backoff", recording)
    return seen


def connect_error() -> httpx.ConnectError:
    return httpx.ConnectError("connection refused")


# -- success and error mapping ----------------------------------------------------------------------------------
async def test_ok_reply_url_and_body(make: Callable[..., Downstream]) -> None:
    script = Script(httpx.Response(200, json={"answer": "yes"}))
    ds = make(script)
    reply = await ds.call("rag", "POST", "/query", json_body={"q": 1})
    assert reply.status == 200 and reply.body == {"answer": "yes"} and reply.elapsed_s >= 0
    assert str(script.requests[0].url) == "http://rag.test/query"  # trailing slash of the base URL dropped
    assert json.loads(script.requests[0].content) == {"q": 1}


async def test_empty_body_is_none(make: Callable[..., Downstream]) -> None:
    ds = make(Script(httpx.Response(204)))
    assert (await ds.call("rag", "DELETE", "/sessions/x/collection")).body is None


async def test_request_id_and_extra_headers_are_sent(make: Callable[..., Downstream]) -> None:
    script = Script(200)
    ds = make(script)
    token = request_id_var.set("req-abc-123")
    try:
        await ds.call("auth", "GET", "/users/me", headers={"Authorization": "Bearer t"})
    finally:
        request_id_var.reset(token)
    assert script.requests[0].headers["x-request-id"] == "req-abc-123"
    assert script.requests[0].headers["authorization"] == "Bearer t"


async def test_error_status_is_502_with_downstream_status(make: Callable[..., Downstream]) -> None:
    ds = make(Script(httpx.Response(500, json={"detail": "boom"})))
    with pytest.raises(DownstreamBadAnswer) as info:
        await ds.call("rag", "POST", "/query", json_body={})
    assert info.value.status == 502
    assert info.value.details["status"] == 500
    assert info.value.details["service"] == "rag"
    assert info.value.details["body"] == {"detail": "boom"}


async def test_non_json_error_body_is_kept_as_text(make: Callable[..., Downstream]) -> None:
    ds = make(Script(httpx.Response(500, text="<html>Internal Server Error</html>")))
    with pytest.raises(DownstreamBadAnswer) as info:
        await ds.call("rag", "POST", "/query", json_body={})
    assert info.value.details["status"] == 500
    assert "Internal Server Error" in info.value.details["body"]


async def test_invalid_json_on_success_is_502(make: Callable[..., Downstream]) -> None:
    ds = make(Script(httpx.Response(200, content=b'{"answer": "cut sh', headers={"content-type": "application/json"})))
    with pytest.raises(DownstreamBadAnswer) as info:
        await ds.call("rag", "POST", "/query", json_body={})
    assert info.value.status == 502
    assert "invalid JSON" in info.value.message


async def test_ok_statuses_come_back_as_replies(make: Callable[..., Downstream]) -> None:
    ds = make(Script(401))
    reply = await ds.call("auth", "GET", "/users/me", ok_statuses=frozenset({401}))
    assert reply.status == 401


# -- retry policy ------------------------------------------------------------------------------------------------
async def test_get_is_retried_on_503_with_backoff(make: Callable[..., Downstream], backoffs: list[int]) -> None:
    script = Script(503, 503, 200)
    ds = make(script)
    reply = await ds.call("rag", "GET", "/sessions/x/chunks")
    assert reply.status == 200
    assert script.attempts == 3
    assert backoffs == [1, 2]


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_get_gives_up_after_the_retries(
    make: Callable[..., Downstream], backoffs: list[int], status: int
) -> None:
    script = Script(status)
    ds = make(script)
    with pytest.raises(DownstreamBadAnswer) as info:
        await ds.call("rag", "GET", "/sessions/x/chunks")
    assert info.value.details["status"] == status
    assert script.attempts == 3
    assert backoffs == [1, 2]


async def test_get_is_not_retried_on_500_or_4xx(make: Callable[..., Downstream]) -> None:
    for status in (500, 404, 422):
        script = Script(status)
        with pytest.raises(DownstreamBadAnswer):
            await make(script).call("rag", "GET", "/sessions/x/chunks")
        assert script.attempts == 1


async def test_get_is_retried_on_connect_error(make: Callable[..., Downstream], backoffs: list[int]) -> None:
    script = Script(connect_error(), connect_error(), 200)
    reply = await make(script).call("question", "GET", "/health")
    assert reply.status == 200
    assert script.attempts == 3
    assert backoffs == [1, 2]


async def test_get_is_retried_on_read_error(make: Callable[..., Downstream]) -> None:
    script = Script(httpx.ReadError("reset"), 200)
    assert (await make(script).call("rag", "GET", "/sessions/x/chunks")).status == 200
    assert script.attempts == 2


async def test_connect_errors_beyond_the_retries_are_503(make: Callable[..., Downstream]) -> None:
    script = Script(connect_error())
    with pytest.raises(DownstreamUnavailable) as info:
        await make(script).call("rag", "POST", "/query", json_body={})
    assert info.value.status == 503
    assert script.attempts == 3


async def test_no_retries_when_disabled(make: Callable[..., Downstream]) -> None:
    script = Script(connect_error())
    with pytest.raises(DownstreamUnavailable):
        await make(script, http_retries=0).call("rag", "GET", "/health")
    assert script.attempts == 1


async def test_post_is_retried_on_connect_error(make: Callable[..., Downstream], backoffs: list[int]) -> None:
    script = Script(connect_error(), 200)
    reply = await make(script).call("rag", "POST", "/process-and-store", json_body={"text": "x"})
    assert reply.status == 200
    assert script.attempts == 2
    assert backoffs == [1]
    assert json.loads(script.requests[1].content) == {"text": "x"}


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (httpx.ReadError("connection reset mid-answer"), DownstreamBadAnswer),
        (httpx.RemoteProtocolError("server disconnected"), DownstreamBadAnswer),
        (httpx.WriteError("broken pipe"), DownstreamBadAnswer),
        (httpx.ReadTimeout("read timed out"), DownstreamTimeout),
    ],
)
async def test_post_is_not_retried_after_a_sent_request_fails(
    make: Callable[..., Downstream], backoffs: list[int], failure: Exception, expected: type[Exception]
) -> None:
    script = Script(failure, 200)
    with pytest.raises(expected):
        await make(script).call("rag", "POST", "/query", json_body={})
    assert script.attempts == 1
    assert backoffs == []


async def test_post_is_not_retried_on_503(make: Callable[..., Downstream]) -> None:
    script = Script(503, 200)
    with pytest.raises(DownstreamBadAnswer) as info:
        await make(script).call("rag", "POST", "/query", json_body={})
    assert info.value.details["status"] == 503
    assert script.attempts == 1


async def test_post_marked_idempotent_is_retried(make: Callable[..., Downstream]) -> None:
    script = Script(httpx.ReadError("reset"), 200)
    assert (await make(script).call("rag", "POST", "/x", json_body={}, idempotent=True)).status == 200
    assert script.attempts == 2


async def test_timeouts_are_504_and_not_retried(make: Callable[..., Downstream]) -> None:
    script = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(DownstreamTimeout) as info:
        await make(script).call("rag", "GET", "/sessions/x/chunks")
    assert info.value.status == 504
    assert script.attempts == 1


async def test_pool_timeout_is_503(make: Callable[..., Downstream]) -> None:
    script = Script(httpx.PoolTimeout("no connection available"))
    with pytest.raises(DownstreamUnavailable):
        await make(script, http_retries=0).call("rag", "POST", "/query", json_body={})


async def test_connect_timeout_is_503_and_retried_even_for_post(make: Callable[..., Downstream]) -> None:
    script = Script(httpx.ConnectTimeout("no answer to SYN"), httpx.PoolTimeout("pool full"), 200)
    assert (await make(script).call("rag", "POST", "/query", json_body={})).status == 200
    assert script.attempts == 3
    script = Script(httpx.ConnectTimeout("no answer to SYN"))
    with pytest.raises(DownstreamUnavailable):
        await make(script).call("rag", "POST", "/query", json_body={})
    assert script.attempts == 3


def aiohttp_failure(exc: aiohttp.ClientError) -> Exception:
    """The httpx exception the aiohttp transport raises for an aiohttp one (``__cause__`` kept)."""
    try:
        raise mapped(exc, httpx.Request("POST", "http://rag.test/query")) from exc
    except httpx.HTTPError as raised:
        return raised


class _Key:
    host, port, ssl = "127.0.0.1", 9, False


@pytest.mark.parametrize(
    ("failure", "expected", "attempts"),
    [
        # connection refused / no free pooled connection in time: never sent, retried, 503
        (
            aiohttp.ClientConnectorError(cast(ConnectionKey, _Key()), ConnectionRefusedError(111, "refused")),
            DownstreamUnavailable,
            3,
        ),
        (aiohttp.ConnectionTimeoutError("pool wait"), DownstreamUnavailable, 3),
        # the request went out: not retried for a POST
        (aiohttp.SocketTimeoutError("read"), DownstreamTimeout, 1),
        (aiohttp.ServerDisconnectedError(), DownstreamBadAnswer, 1),
        (aiohttp.ClientPayloadError("Response payload is not completed"), DownstreamBadAnswer, 1),
    ],
)
async def test_aiohttp_failures_are_classified_through_the_mapping(
    make: Callable[..., Downstream], failure: aiohttp.ClientError, expected: type[Exception], attempts: int
) -> None:
    script = Script(aiohttp_failure(failure))
    with pytest.raises(expected):
        await make(script).call("rag", "POST", "/query", json_body={})
    assert script.attempts == attempts


async def test_backoff_grows_with_jitter(monkeypatch: pytest.MonkeyPatch, make: Callable[..., Downstream]) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *args: Any) -> None:
        delays.append(delay)
        await real_sleep(0)

    ds = make(Script(200), http_retry_backoff_s=0.1)
    monkeypatch.setattr("service.downstream.client.asyncio.sleep", fake_sleep)
    for attempt in (1, 2, 3):
        for _ in range(20):
            await ds._backoff(attempt)
    monkeypatch.undo()
    for attempt in (1, 2, 3):
        mine = delays[(attempt - 1) * 20 : attempt * 20]
        base = 0.1 * 2 ** (attempt - 1)
        assert all(0.5 * base <= d <= 1.5 * base for d in mine)
        assert len(set(mine)) > 1  # jitter


# -- deadline and concurrency bound -----------------------------------------------------------------------------
async def test_hard_deadline_is_504(make: Callable[..., Downstream]) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    ds = make(Script(never))
    with pytest.raises(DownstreamTimeout) as info:
        await ds.call("rag", "POST", "/query", json_body={}, deadline_s=0.05)
    assert info.value.details == {"service": "rag", "deadline_s": 0.05}
    assert ds.in_flight["rag"] == 0


async def test_deadline_covers_the_retries(make: Callable[..., Downstream]) -> None:
    script = Script(connect_error())
    ds = make(script, http_retries=100, http_retry_backoff_s=0.01)
    with pytest.raises(DownstreamTimeout):
        await ds.call("rag", "GET", "/health", deadline_s=0.1)
    assert script.attempts < 100


async def test_concurrency_bound_turns_overload_into_fast_503(make: Callable[..., Downstream]) -> None:
    release = asyncio.Event()
    both_in = asyncio.Event()
    entered = 0

    async def held(request: httpx.Request) -> httpx.Response:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        return httpx.Response(200, json={"ok": True})

    script = Script(held)
    ds = make(script, downstream_max_concurrency=2, http_pool_timeout_s=0.1)
    first = [asyncio.create_task(ds.call("rag", "POST", "/query", json_body={})) for _ in range(2)]
    await both_in.wait()
    assert ds.in_flight["rag"] == 2
    with pytest.raises(DownstreamUnavailable) as info:
        await ds.call("rag", "POST", "/query", json_body={})
    assert info.value.details["reason"] == "overloaded"
    assert info.value.headers == {"Retry-After": "1"}
    assert script.attempts == 2  # the rejected call never reached the transport
    # the bound is per service: another service still has its slots
    release.set()
    assert [r.status for r in await asyncio.gather(*first)] == [200, 200]
    assert ds.in_flight["rag"] == 0
    assert (await ds.call("rag", "POST", "/query", json_body={})).status == 200


async def test_slots_are_released_after_failures(make: Callable[..., Downstream]) -> None:
    script = Script(httpx.ReadError("x"), 500, connect_error())
    ds = make(script, downstream_max_concurrency=1, http_pool_timeout_s=0.05, http_retries=0)
    for _ in range(5):
        with pytest.raises((DownstreamBadAnswer, DownstreamUnavailable)):
            await ds.call("rag", "POST", "/query", json_body={})
    assert ds.in_flight["rag"] == 0
    assert not ds._slots["rag"].locked()


async def test_cancelled_call_releases_its_slot(make: Callable[..., Downstream]) -> None:
    sent = asyncio.Event()

    async def never(request: httpx.Request) -> httpx.Response:
        sent.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    ds = make(Script(never), downstream_max_concurrency=1)
    task = asyncio.create_task(ds.call("rag", "POST", "/query", json_body={}))
    await sent.wait()
    assert ds.in_flight["rag"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ds.in_flight["rag"] == 0
    assert not ds._slots["rag"].locked()


async def test_observer_sees_each_outcome(make: Callable[..., Downstream]) -> None:
    seen: list[tuple[str, str]] = []
    script = Script(200, 500, connect_error(), httpx.ReadTimeout("slow"))
    ds = Downstream(
        settings(http_retries=0),
        transport=httpx.MockTransport(script),
        observer=lambda service, outcome, elapsed: seen.append((service, outcome)),
    )
    try:
        await ds.call("rag", "POST", "/q", json_body={})
        for _ in range(3):
            with pytest.raises((DownstreamBadAnswer, DownstreamUnavailable, DownstreamTimeout)):
                await ds.call("rag", "POST", "/q", json_body={})
    finally:
        await ds.aclose()
    assert seen == [("rag", "ok"), ("rag", "bad_status"), ("rag", "unavailable"), ("rag", "timeout")]


def test_unknown_transport_is_rejected() -> None:
    with pytest.raises(ValueError, match="HTTP_TRANSPORT"):
        client_module.build_transport(settings(http_transport="curl"))


def test_pool_stats_without_a_pool() -> None:
    ds = Downstream(settings(), transport=httpx.MockTransport(Script(200)))
    assert ds.pool_stats() == {"in_use": 0}
