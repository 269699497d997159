"""The markdown library, called as the EBARS frontend calls it, against real SQLite files and PostgreSQL.

Source: ``frontend/lib/api.ts`` of github.com/EngindalgaMaku/ebars (commit 07c644e): ``uploadMarkdownFile``,
``listMarkdownFiles``, ``getMarkdownFileContent``, ``deleteMarkdownFile`` and ``deleteAllMarkdownFiles``. The
browser goes through the Next.js ``/api`` rewrite, so the paths carry ``/api``; the bearer token is the only
addition the gateway requires.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sessions_kit import db_path, error_of, sql

from support.inprocess import AppGatewayFactory, InProcessServer
from support.servers import auth

pytestmark = pytest.mark.engines

MD = b"# Photosynthesis\n\nChlorophyll absorbs blue and red light. \xc3\xa7\xc4\x9f\n"


def frontend_upload(name: str, data: bytes = MD, ctype: str = "text/markdown") -> dict[str, Any]:
    # api.ts uploadMarkdownFile(file): `formData.append("file", file)`, then
    # fetch(`${getApiUrl()}/documents/upload-markdown`, {method: "POST", body: formData}): the browser names the
    # part "file" with the File's name and type.
    return {"files": {"file": (name, data, ctype)}}


async def upload(client: httpx.AsyncClient, name: str, role: str = "teacher", **kw: Any) -> httpx.Response:
    return await client.post("/api/documents/upload-markdown", headers=auth(role), **frontend_upload(name, **kw))


async def listing(client: httpx.AsyncClient, role: str = "teacher") -> list[str]:
    # api.ts listMarkdownFiles(): fetch(`${getApiUrl()}/documents/list-markdown`) then `data.markdown_files`
    r = await client.get("/api/documents/list-markdown", headers=auth(role))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["markdown_files"]) and all(isinstance(n, str) for n in body["markdown_files"])
    return list(body["markdown_files"])


async def stored_rows(gateway: InProcessServer) -> int:
    [(count,)] = await sql(db_path(gateway), "SELECT count(*) FROM library_files")
    return int(count)


async def test_upload_list_get_delete_round_trip(client: httpx.AsyncClient) -> None:
    r = await upload(client, "bio.md")
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "message": "bio.md uploaded", "markdown_filename": "bio.md"}
    assert await listing(client) == ["bio.md"]
    # api.ts getMarkdownFileContent(filename): `/documents/markdown/${encodeURIComponent(filename)}` -> {content}
    r = await client.get(f"/api/documents/markdown/{quote('bio.md')}", headers=auth("teacher"))
    assert r.status_code == 200 and r.json()["content"] == MD.decode()
    # the unprefixed twin is the same route
    assert (await client.get("/documents/markdown/bio.md", headers=auth("teacher"))).json()["content"] == MD.decode()
    # api.ts deleteMarkdownFile(filename) -> {deleted, filename}
    r = await client.delete("/api/documents/markdown/bio.md", headers=auth("teacher"))
    assert r.status_code == 200 and r.json() == {"deleted": True, "filename": "bio.md"}
    assert await listing(client) == []
    error_of(await client.get("/api/documents/markdown/bio.md", headers=auth("teacher")), 404)
    error_of(await client.delete("/api/documents/markdown/bio.md", headers=auth("teacher")), 404)


async def test_unicode_and_spaces_in_names_round_trip(client: httpx.AsyncClient) -> None:
    name = "Fotosentez notları 1.md"
    assert (await upload(client, name)).json()["markdown_filename"] == name
    r = await client.get(f"/api/documents/markdown/{quote(name)}", headers=auth("teacher"))
    assert r.status_code == 200 and r.json()["content"] == MD.decode()


async def test_delete_all(client: httpx.AsyncClient) -> None:
    for name in ("a.md", "b.md", "c.md"):
        assert (await upload(client, name)).status_code == 200
    assert (await upload(client, "theirs.md", role="teacher2")).status_code == 200
    error_of(await client.delete("/api/documents/markdown", headers=auth("teacher")), 422)  # the flag is required
    assert await listing(client) == ["a.md", "b.md", "c.md"]
    # api.ts deleteAllMarkdownFiles(): `/documents/markdown?delete_all=true` -> {deleted, count}
    r = await client.delete("/api/documents/markdown?delete_all=true", headers=auth("teacher"))
    assert r.status_code == 200 and r.json() == {"deleted": True, "count": 3}
    assert await listing(client) == []
    assert await listing(client, "teacher2") == ["theirs.md"]


async def test_taken_names_get_numbered_suffixes(client: httpx.AsyncClient) -> None:
    got = [(await upload(client, "notes.md", data=f"v{i}".encode())).json()["markdown_filename"] for i in range(3)]
    assert got == ["notes.md", "notes_1.md", "notes_2.md"]
    assert (await upload(client, "notes_1.md")).json()["markdown_filename"] == "notes_1_1.md"
    await client.delete("/api/documents/markdown/notes_1.md", headers=auth("teacher"))
    assert (await upload(client, "notes.md")).json()["markdown_filename"] == "notes_1.md"  # the first free one
    r = await client.get("/api/documents/markdown/notes_2.md", headers=auth("teacher"))
    assert r.json()["content"] == "v2"
    # another owner's file of the same name takes nothing from this owner
    assert (await upload(client, "notes.md", role="teacher2")).json()["markdown_filename"] == "notes.md"
    long = "x" * 197 + ".md"
    assert (await upload(client, long)).json()["markdown_filename"] == long
    second = (await upload(client, long)).json()["markdown_filename"]
    assert second == "x" * 195 + "_1.md" and len(second) == 200


@pytest.mark.parametrize(
    ("name", "data", "ctype", "status"),
    [
        ("../x.md", MD, "text/markdown", 422),
        ("a/b.md", MD, "text/markdown", 422),
        ("..\\x.md", MD, "text/markdown", 422),
        ("a\\b.md", MD, "text/markdown", 422),
        (".hidden.md", MD, "text/markdown", 422),
        ("a..b.md", MD, "text/markdown", 422),
        ("x" * 198 + ".md", MD, "text/markdown", 422),
        (".md", MD, "text/markdown", 422),
        ("notes.txt", MD, "text/plain", 415),
        ("notes.md.exe", MD, "text/markdown", 415),
        ("notes.md", MD, "image/png", 415),
        ("latin1.md", "café".encode("latin-1"), "text/markdown", 422),
        ("nul-content.md", b"# a\x00b", "text/markdown", 422),
        ("empty.md", b"", "text/markdown", 422),
        ("blank.md", b"  \n\t\n", "text/markdown", 422),
    ],
)
async def test_bad_uploads_are_refused_and_nothing_is_stored(
    gateway: InProcessServer, client: httpx.AsyncClient, name: str, data: bytes, ctype: str, status: int
) -> None:
    r = await upload(client, name, data=data, ctype=ctype)
    error_of(r, status)
    assert await stored_rows(gateway) == 0
    assert await listing(client) == []


@pytest.mark.parametrize("name", [b"nul\x00.md", b"tab\t.md", b"bell\x07.md", b"esc\x1b.md"])
async def test_control_characters_in_names_are_refused(
    gateway: InProcessServer, client: httpx.AsyncClient, name: bytes
) -> None:
    """Sent raw (httpx would percent-encode them): the bytes a hostile client can put in the part's header."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
        b"Content-Type: text/markdown\r\n\r\n" + MD + b"\r\n--B--\r\n"
    )
    headers = {**auth("teacher"), "Content-Type": "multipart/form-data; boundary=B"}
    r = await client.post("/api/documents/upload-markdown", headers=headers, content=body)
    assert r.status_code in (400, 422), r.text
    error_of(r, r.status_code)
    assert await stored_rows(gateway) == 0


async def test_malformed_multipart_bodies(gateway: InProcessServer, client: httpx.AsyncClient) -> None:
    h = auth("teacher")
    path = "/api/documents/upload-markdown"
    error_of(await client.post(path, headers=h, json={"file": "x"}), 415)
    error_of(await client.post(path, headers=h, files={"files": ("a.md", MD, "text/markdown")}), 422)  # wrong part
    two = [("file", ("a.md", MD, "text/markdown")), ("file", ("b.md", MD, "text/markdown"))]
    error_of(await client.post(path, headers=h, files=two), 422)
    error_of(await client.post(path, headers=h, data={"note": "x"}, files={"file": ("a.md", MD, "text/md")}), 422)
    no_boundary = {**h, "Content-Type": "multipart/form-data"}  # nothing parseable: no file part
    error_of(await client.post(path, headers=no_boundary, content=b"--B\r\n\r\n--B--\r\n"), 400)
    assert await stored_rows(gateway) == 0


async def test_oversize_upload_is_413(make_app_gateway: AppGatewayFactory) -> None:
    gateway = await make_app_gateway(max_upload_bytes=1000, max_body_bytes=2000)
    async with gateway.client(timeout=30) as client:
        error_of(await upload(client, "big.md", data=b"a" * 1001), 413)
        error_of(await upload(client, "huge.md", data=b"a" * 200_000), 413)  # past the body limit itself
        assert (await upload(client, "fits.md", data=b"a" * 1000)).status_code == 200
        assert await stored_rows(gateway) == 1


async def test_someone_elses_file_is_a_404_and_absent_from_their_list(client: httpx.AsyncClient) -> None:
    assert (await upload(client, "mine.md")).status_code == 200
    assert await listing(client, "teacher2") == []
    for method in ("GET", "DELETE"):
        other = error_of(await client.request(method, "/api/documents/markdown/mine.md", headers=auth("teacher2")), 404)
        missing = error_of(
            await client.request(method, "/api/documents/markdown/none.md", headers=auth("teacher2")), 404
        )
        assert other["code"] == missing["code"] and other["message"] == missing["message"]
    assert await listing(client) == ["mine.md"]  # still there
    r = await client.delete("/api/documents/markdown?delete_all=true", headers=auth("teacher2"))
    assert r.json() == {"deleted": True, "count": 0}
    assert await listing(client) == ["mine.md"]


async def test_admin_sees_every_owner_and_prefers_own_file_of_a_name(client: httpx.AsyncClient) -> None:
    assert (await upload(client, "shared.md", data=b"teacher's")).status_code == 200
    assert (await upload(client, "t2.md", role="teacher2")).status_code == 200
    assert sorted(await listing(client, "admin")) == ["shared.md", "t2.md"]
    r = await client.get("/api/documents/markdown/shared.md", headers=auth("admin"))
    assert r.json()["content"] == "teacher's"  # no file of that name of the admin's own: the teacher's
    assert (await upload(client, "shared.md", role="admin", data=b"admin's")).json()["markdown_filename"] == "shared.md"
    assert sorted(await listing(client, "admin")) == ["shared.md", "shared.md", "t2.md"]
    r = await client.get("/api/documents/markdown/shared.md", headers=auth("admin"))
    assert r.json()["content"] == "admin's"  # the admin's own comes first
    assert (await client.delete("/api/documents/markdown/t2.md", headers=auth("admin"))).status_code == 200
    assert await listing(client, "teacher2") == []


async def test_students_get_403_on_every_library_route(client: httpx.AsyncClient) -> None:
    assert (await upload(client, "bio.md")).status_code == 200
    s = auth("student")
    error_of(await upload(client, "s.md", role="student"), 403)
    error_of(await client.get("/api/documents/list-markdown", headers=s), 403)
    error_of(await client.get("/api/documents/markdown/bio.md", headers=s), 403)
    error_of(await client.delete("/api/documents/markdown/bio.md", headers=s), 403)
    error_of(await client.delete("/api/documents/markdown?delete_all=true", headers=s), 403)
    error_of(await client.get("/api/documents/list-markdown"), 401)
    assert await listing(client) == ["bio.md"]


async def test_per_owner_count_bound(make_app_gateway: AppGatewayFactory) -> None:
    gateway = await make_app_gateway(library_max_files=3)
    async with gateway.client(timeout=30) as client:
        for i in range(3):
            assert (await upload(client, f"f{i}.md")).status_code == 200
        full = error_of(await upload(client, "f3.md"), 409)
        assert full["details"] == {"max_files": 3}
        assert (await upload(client, "other.md", role="teacher2")).status_code == 200  # per owner
        await client.delete("/api/documents/markdown/f0.md", headers=auth("teacher"))
        assert (await upload(client, "f3.md")).status_code == 200
        assert await stored_rows(gateway) == 4


async def test_every_worker_sees_one_library(make_app_gateway: AppGatewayFactory, tmp_path: Any) -> None:
    """Two gateways on one database file (two workers or replicas): an upload through one is read through the other."""
    path = str(tmp_path / "shared-library.db")
    first = await make_app_gateway(database_path=path)
    second = await make_app_gateway(database_path=path)
    async with first.client(timeout=30) as a, second.client(timeout=30) as b:
        assert (await upload(a, "one.md")).status_code == 200
        assert await listing(b) == ["one.md"]
        assert (await b.get("/api/documents/markdown/one.md", headers=auth("teacher"))).json()["content"] == MD.decode()


async def test_an_upper_case_suffix_is_listed_as_md(client: httpx.AsyncClient) -> None:
    assert (await upload(client, "Notes.MD")).json()["markdown_filename"] == "Notes.md"
    assert (await upload(client, "Notes.md")).json()["markdown_filename"] == "Notes_1.md"


@pytest.mark.sqlite_only  # a PostgreSQL backup is pg_dump's: the endpoint answers 501
async def test_a_backup_holds_the_library(gateway: InProcessServer, client: httpx.AsyncClient) -> None:
    assert (await upload(client, "kept.md")).status_code == 200
    r = await client.post("/admin/backup", headers=auth("admin"))
    assert r.status_code == 201, r.text
    rows = await sql(r.json()["path"], "SELECT filename, content FROM library_files")
    assert rows == [("kept.md", MD.decode())]
