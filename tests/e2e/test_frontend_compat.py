"""The EBARS web frontend's own calls, as its TypeScript builds them, against the gateway.

Source: ``frontend/lib/api.ts`` and ``frontend/app/profile/page.tsx`` of github.com/EngindalgaMaku/ebars (api.ts at
commit 07c644e). The browser reaches the gateway through the Next.js ``/api`` rewrite (``getApiUrl()`` is
``"/api"`` client-side), so every path here carries the ``/api`` prefix; the only change the frontend needs is that
it must send its bearer token on every call (it does whenever it has one). Each request below is written down as
the data the TypeScript sends (method, path, headers, body), and each answer is checked for every field the
frontend reads, with its type.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import httpx
import pytest
from sessions_kit import create

from support.inprocess import AppGatewayFactory
from support.servers import ServerThread

pytestmark = pytest.mark.engines

_users = itertools.count(1)


def token_headers(token: str) -> dict[str, str]:
    # api.ts: `headers: { ...(token ? { Authorization: `Bearer ${token}` } : {}) }`
    return {"Authorization": f"Bearer {token}"}


def json_headers(token: str) -> dict[str, str]:
    # api.ts (updateProfile, changePassword): `"Content-Type": "application/json"` plus the bearer token
    return {"Content-Type": "application/json", **token_headers(token)}


def fresh_user(role: str = "teacher") -> str:
    """A reference-downstream token for a user no other test touches (profile changes are real there)."""
    return f"dev:{role}:fe-{next(_users)}"


def assert_user_profile(body: Any) -> None:
    """api.ts ``interface UserProfile``: the fields profile/page.tsx reads (username, email, first_name,
    last_name fill the form; role_name, is_active, created_at, last_login the sidebar, the dates through
    ``new Date(...)``)."""
    assert isinstance(body, dict), body
    for name in ("username", "email", "first_name", "last_name", "role_name", "created_at"):
        assert isinstance(body[name], str), (name, body)
    assert isinstance(body["is_active"], bool) and isinstance(body["role_id"], int)
    assert isinstance(body["id"], str | int)
    datetime.fromisoformat(body["created_at"])
    assert body["last_login"] is None or datetime.fromisoformat(body["last_login"])


async def test_list_sessions_is_an_array(client: httpx.AsyncClient) -> None:
    # api.ts line 92, listSessions(): fetch(`${getApiUrl()}/sessions`, {cache: "no-store", headers: {Authorization}})
    # then `return res.json()` typed Promise<SessionMeta[]>: the body must be the array itself.
    token = "dev-teacher-token"
    made = [(await create(client, name=f"course {i}", category="biology"))["session_id"] for i in range(3)]
    r = await client.get("/api/sessions", headers=token_headers(token))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    sessions = r.json()
    assert isinstance(sessions, list) and [s["session_id"] for s in sessions] == made[::-1]
    for s in sessions:  # the SessionMeta fields this gateway fills
        assert isinstance(s["session_id"], str) and isinstance(s["name"], str) and isinstance(s["status"], str)
        assert isinstance(s["category"], str) and isinstance(s["created_at"], str)
    assert "link" not in r.headers  # one page: the frontend never pages, and needs not


async def test_profile_page_reads_the_auth_services_user(client: httpx.AsyncClient, reset_devstack: None) -> None:
    # api.ts getProfile(): fetch(`${getApiUrl()}/profile`, {headers: {Authorization}}) -> UserProfile
    r = await client.get("/api/profile", headers=token_headers("dev-student-token"))
    assert r.status_code == 200, r.text
    assert_user_profile(r.json())
    assert r.json()["role_name"] == "student" and r.json()["username"] == "student"


async def test_update_profile_as_the_form_sends_it(make_app_gateway: AppGatewayFactory) -> None:
    # A long token cache: the change must show at once anyway (the gateway forgets the caller's cached user).
    gw = await make_app_gateway(auth_cache_ttl_s=3600)
    token = fresh_user()
    async with gw.client() as c:
        before = (await c.get("/api/profile", headers=token_headers(token))).json()
        # profile/page.tsx handleProfileUpdate() -> api.ts updateProfile(profileFormData):
        # method "PUT", body JSON.stringify({username, email, first_name, last_name}), all four, from the form
        form = {"username": f"ada-{before['id']}", "email": "ada@example.org", "first_name": "Ada", "last_name": "L"}
        r = await c.put("/api/profile", json=form, headers=json_headers(token))
        assert r.status_code == 200, r.text
        updated = r.json()  # setUserProfile(updated): the answer replaces the page's profile
        assert_user_profile(updated)
        assert {k: updated[k] for k in form} == form and updated["id"] == before["id"]
        assert updated["role_name"] == "teacher" and updated["created_at"] == before["created_at"]
        # the next loadProfile() shows the change although the token's user was cached
        again = (await c.get("/api/profile", headers=token_headers(token))).json()
        assert {k: again[k] for k in form} == form
        # any role changes its own profile
        student = fresh_user("student")
        r = await c.put("/profile", json={"first_name": "Grace"}, headers=json_headers(student))
        assert r.status_code == 200 and r.json()["first_name"] == "Grace" and r.json()["role_name"] == "student"


async def test_update_profile_refusals_are_4xx_with_detail(client: httpx.AsyncClient) -> None:
    token = fresh_user()
    other = fresh_user()
    await client.get("/profile", headers=token_headers(other))  # the auth service now knows that user
    taken = await client.put("/profile", json={"username": other.split(":")[2]}, headers=json_headers(token))
    # the auth service's 400 passed through with its message; the page shows `await res.text()`
    assert taken.status_code == 400 and taken.json()["detail"] == "Username already taken", taken.text
    assert taken.json()["error"]["code"] == "bad_request"
    for bad in (
        {},  # nothing to change
        {"email": "not-an-email"},
        {"email": None},
        {"username": ""},
        {"username": "x" * 101},
        {"first_name": 5},
        {"role_name": "admin"},  # not a field the form sends: refused, never forwarded
    ):
        r = await client.put("/profile", json=bad, headers=json_headers(token))
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"] == r.json()["error"]["message"]
    assert (await client.put("/profile", json={"first_name": "x"})).status_code == 401


async def test_change_password_as_the_form_sends_it(client: httpx.AsyncClient) -> None:
    token = fresh_user("student")
    # profile/page.tsx handlePasswordChange() -> api.ts changePassword(current_password, new_password):
    # method "PUT", body JSON.stringify({old_password, new_password}); the page checks only `res.ok` and
    # the type is Promise<{success: boolean; message?: string}>. The reference users' password is dev-password.
    body = {"old_password": "dev-password", "new_password": "n3w-secret"}
    r = await client.put("/api/profile/change-password", json=body, headers=json_headers(token))
    assert r.status_code == 200, r.text
    assert r.json()["success"] is True and isinstance(r.json().get("message", ""), str)
    # the same request again: the old password is now wrong, and the auth service's 400 comes through (not a 5xx)
    wrong = await client.put("/api/profile/change-password", json=body, headers=json_headers(token))
    assert wrong.status_code == 400, wrong.text
    assert wrong.json()["detail"] == "Incorrect current password" == wrong.json()["error"]["message"]
    assert "Incorrect current password" in wrong.text  # what `throw new Error(await res.text())` shows
    changed = {"old_password": "n3w-secret", "new_password": "an0ther"}
    assert (await client.put("/profile/change-password", json=changed, headers=json_headers(token))).status_code == 200
    for bad in (
        {"old_password": "an0ther"},
        {"old_password": "an0ther", "new_password": "short"},  # the form requires 6 characters
        {"old_password": "an0ther", "new_password": "x" * 257},
        {"old_password": "an0ther", "new_password": "long enough", "confirm_password": "long enough"},
    ):
        r = await client.put("/profile/change-password", json=bad, headers=json_headers(token))
        assert r.status_code == 422, (bad, r.text)


async def test_password_with_spaces_is_sent_as_typed(client: httpx.AsyncClient) -> None:
    token = fresh_user()
    body = {"old_password": "dev-password", "new_password": "  spaced  "}
    assert (await client.put("/profile/change-password", json=body, headers=json_headers(token))).status_code == 200
    stripped = {"old_password": "spaced", "new_password": "whatever1"}
    r = await client.put("/profile/change-password", json=stripped, headers=json_headers(token))
    assert r.status_code == 400
    exact = {"old_password": "  spaced  ", "new_password": "whatever1"}
    assert (await client.put("/profile/change-password", json=exact, headers=json_headers(token))).status_code == 200


async def test_auth_service_failure_on_a_change_is_a_502(
    client: httpx.AsyncClient, devstack: ServerThread, reset_devstack: None
) -> None:
    token = fresh_user()
    async with httpx.AsyncClient(base_url=devstack.url) as ds:
        await ds.post("/_control", json={"fault": "status_500", "fault_paths": ["/users/me/password"]})
        body = {"old_password": "dev-password", "new_password": "n3w-secret"}
        r = await client.put("/profile/change-password", json=body, headers=json_headers(token))
    assert r.status_code == 502 and r.json()["detail"] == r.json()["error"]["message"]
    assert r.json()["error"]["details"]["service"] == "auth"
