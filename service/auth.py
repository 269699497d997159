"""Who is calling: bearer token -> Principal via the auth service, cached briefly and de-duplicated."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from service.downstream.client import Downstream, DownstreamError
from service.errors import Forbidden, ServiceUnavailable, Unauthorized

Role = Literal["admin", "teacher", "student"]
ROLES: frozenset[Role] = frozenset(("admin", "teacher", "student"))


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    role: Role
    username: str
    profile: dict[str, object]


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization header", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 4096:
        raise Unauthorized("Authorization must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    return token


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()  # the raw token is never kept as a key


class Authenticator:
    """Token cache: bounded LRU with a TTL; concurrent misses for one token share a single lookup."""

    def __init__(self, downstream: Downstream, *, ttl_s: float, max_entries: int) -> None:
        self._downstream = downstream
        self._ttl = ttl_s
        self._max = max_entries
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Principal]] = {}

    async def resolve(self, header: str | None) -> Principal:
        token = bearer_token(header)
        key = _key(token)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        task = self._pending.get(key)
        if task is None:
            # The lookup runs as its own task so a caller that goes away does not cancel it for the others.
            task = asyncio.ensure_future(self._lookup(token))
            self._pending[key] = task
            task.add_done_callback(lambda t: self._settle(key, t))
        return await asyncio.shield(task)

    def forget(self, header: str | None) -> None:
        """Drop the token's cached principal (and any lookup in flight, whose answer may predate a change), so
        the next request reads the user afresh: called after the caller changed their profile."""
        key = _key(bearer_token(header))
        self._cache.pop(key, None)
        self._pending.pop(key, None)

    def _settle(self, key: str, task: asyncio.Future[Principal]) -> None:
        if self._pending.get(key) is not task:
            return  # forgotten meanwhile: its answer may be stale, so it is not cached
        del self._pending[key]
        if not task.cancelled() and task.exception() is None:
            self._store(key, task.result())

    def _store(self, key: str, principal: Principal) -> None:
        self._cache[key] = (time.monotonic() + self._ttl, principal)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    async def _lookup(self, token: str) -> Principal:
        try:
            reply = await self._downstream.call(
                "auth",
                "GET",
                "/users/me",
                headers={"Authorization": f"Bearer {token}"},
                deadline_s=min(10.0, self._downstream.settings.http_read_timeout_s),
                ok_statuses=frozenset({401, 403}),
            )
        except DownstreamError as exc:
            raise ServiceUnavailable(
                "authentication service unavailable; try again shortly",
                details={"cause": exc.message},
                headers={"Retry-After": "1"},
            ) from None
        if reply.status in (401, 403):
            raise Unauthorized("invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
        body = reply.body
        if not isinstance(body, dict) or "id" not in body:
            raise ServiceUnavailable("authentication service gave an unusable answer")
        role = str(body.get("role_name") or body.get("role") or "")
        if role not in ROLES:
            raise Forbidden("your role has no access to this service", details={"role": role})
        return Principal(
            id=str(body["id"]),
            role=role,
            username=str(body.get("username", "")),
            profile=dict(body),
        )
