"""The token cache in isolation: TTL, size bound, de-duplication, failures, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.auth import Authenticator
from service.downstream import Downstream
from service.errors import Forbidden, ServiceUnavailable, Unauthorized
from service.settings import Settings


class FakeAuthService:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.status = 200
        self.role = "teacher"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        self.calls.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return httpx.Response(self.status, json={"detail": "no"})
        if token.startswith("bad"):
            return httpx.Response(401, json={"detail": "invalid"})
        return httpx.Response(200, json={"id": f"id-{token}", "username": token, "role_name": self.role})


@pytest.fixture
async def fake() -> FakeAuthService:
    return FakeAuthService()


@pytest.fixture
async def downstream(fake: FakeAuthService) -> AsyncIterator[Downstream]:
    settings = Settings(auth_service_url="http://auth.test", http_retries=0, http_read_timeout_s=2.0)
    ds = Downstream(settings, transport=httpx.MockTransport(fake))
    yield ds
    await ds.aclose()


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_hit_miss_and_ttl(fake: FakeAuthService, downstream: Downstream, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("service.auth.time.monotonic", lambda: clock[0])
    auth = Authenticator(downstream, ttl_s=30, max_entries=10)
    p = await auth.resolve(bearer("t1"))
    assert (p.id, p.role, p.username) == ("id-t1", "teacher", "t1")
    await auth.resolve(bearer("t1"))
    assert fake.calls == ["t1"]
    clock[0] += 29.9
    await auth.resolve(bearer("t1"))
    assert fake.calls == ["t1"]
    clock[0] += 0.2  # past the TTL: looked up again
    await auth.resolve(bearer("t1"))
    assert fake.calls == ["t1", "t1"]


async def test_size_bound_evicts_least_recently_used(fake: FakeAuthService, downstream: Downstream) -> None:
    auth = Authenticator(downstream, ttl_s=60, max_entries=3)
    for t in ("a", "b", "c"):
        await auth.resolve(bearer(t))
    await auth.resolve(bearer("a"))  # a is now the most recently used
    await auth.resolve(bearer("d"))  # evicts b
    assert len(auth._cache) == 3
    fake.calls.clear()
    for t in ("a", "c", "d"):
        await auth.resolve(bearer(t))
    assert fake.calls == []
    await auth.resolve(bearer("b"))
    assert fake.calls == ["b"]
    assert len(auth._cache) == 3


async def test_concurrent_misses_share_one_lookup(fake: FakeAuthService, downstream: Downstream) -> None:
    auth = Authenticator(downstream, ttl_s=60, max_entries=100)
    fake.gate = asyncio.Event()
    waiters = [asyncio.ensure_future(auth.resolve(bearer("same"))) for _ in range(50)]
    others = [asyncio.ensure_future(auth.resolve(bearer("other"))) for _ in range(5)]
    await asyncio.sleep(0.01)
    # the first caller goes away: the shared lookup goes on for the others
    waiters[0].cancel()
    fake.gate.set()
    results = await asyncio.gather(*waiters[1:], *others)
    assert {p.id for p in results} == {"id-same", "id-other"}
    assert sorted(fake.calls) == ["other", "same"]
    assert waiters[0].cancelled()
    await auth.resolve(bearer("same"))
    assert len(fake.calls) == 2


async def test_failures_are_not_cached(fake: FakeAuthService, downstream: Downstream) -> None:
    auth = Authenticator(downstream, ttl_s=60, max_entries=100)
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await auth.resolve(bearer("bad-token"))
    assert fake.calls == ["bad-token", "bad-token"]
    fake.status = 500
    with pytest.raises(ServiceUnavailable):
        await auth.resolve(bearer("good"))
    fake.status = 200
    assert (await auth.resolve(bearer("good"))).id == "id-good"
    fake.role = "parent"
    with pytest.raises(Forbidden):
        await auth.resolve(bearer("stranger"))
    assert len(auth._cache) == 1


async def test_unreachable_auth_service_is_503() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    settings = Settings(auth_service_url="http://auth.test", http_retries=1, http_retry_backoff_s=0.001)
    ds = Downstream(settings, transport=httpx.MockTransport(refuse))
    try:
        auth = Authenticator(ds, ttl_s=60, max_entries=10)
        with pytest.raises(ServiceUnavailable) as info:
            await auth.resolve(bearer("t"))
        assert info.value.status == 503 and info.value.headers.get("Retry-After") == "1"
        assert len(auth._cache) == 0
    finally:
        await ds.aclose()


async def test_raw_token_is_not_a_cache_key(fake: FakeAuthService, downstream: Downstream) -> None:
    auth = Authenticator(downstream, ttl_s=60, max_entries=10)
    await auth.resolve(bearer("secret-token-value"))
    keys: Any = list(auth._cache)
    assert keys and all("secret-token-value" not in k for k in keys)


async def test_forget_drops_the_entry_and_a_lookup_in_flight(fake: FakeAuthService, downstream: Downstream) -> None:
    auth = Authenticator(downstream, ttl_s=3600, max_entries=10)
    await auth.resolve(bearer("t1"))
    auth.forget(bearer("t1"))
    await auth.resolve(bearer("t1"))
    assert fake.calls == ["t1", "t1"]  # forgotten: looked up again despite the long TTL
    # a lookup that started before the change answers its waiters but is not cached (it may predate the change)
    fake.gate = asyncio.Event()
    auth.forget(bearer("t1"))
    stale = asyncio.ensure_future(auth.resolve(bearer("t1")))
    await asyncio.sleep(0.01)
    auth.forget(bearer("t1"))
    fake.gate.set()
    assert (await stale).id == "id-t1"
    await auth.resolve(bearer("t1"))
    assert fake.calls == ["t1"] * 4
    await auth.resolve(bearer("t1"))
    assert fake.calls == ["t1"] * 4  # the fresh lookup is cached as usual
