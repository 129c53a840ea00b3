"""The peer server over real loopback HTTP (httpx as the client)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import httpx
import pytest
import trio

from flashback.peer.listing import encode_cursor
from tests.conftest import BIG_FILE_BYTES


def assert_json_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code
    assert "Traceback" not in response.text


async def test_index_md_created_with_links(client: httpx.AsyncClient, share: Path) -> None:
    index = (share / "index.md").read_text()
    assert "[hello.txt](hello.txt)" in index
    assert "[docs/](docs/)" in index
    assert "(r%C3%A9sum%C3%A9.txt)" in index
    assert ".secret" not in index and "escape" not in index
    response = await client.get("/content/index.md")
    assert response.text == index


async def test_existing_index_md_untouched(tmp_path: Path, nursery: trio.Nursery) -> None:
    from functools import partial

    from flashback.peer.app import ShareSettings
    from flashback.peer.serve import serve_peer

    (tmp_path / "index.md").write_text("mine\n")
    await nursery.start(partial(serve_peer, ShareSettings(tmp_path), "127.0.0.1", 0))
    assert (tmp_path / "index.md").read_text() == "mine\n"


async def test_listing_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/files")
    assert response.status_code == 200
    body = response.json()
    assert body["path"] == ""
    assert body["next_cursor"] is None
    names = [e["name"] for e in body["entries"]]
    assert names == sorted(names)
    # hidden files and symlinks leaving the root are never listed
    assert ".secret" not in names and ".hiddendir" not in names
    assert "escape" not in names and "escape-dir" not in names
    assert {"alias.txt", "docs", "hello.txt", "résumé.txt", "index.md"} <= set(names)
    by_name = {e["name"]: e for e in body["entries"]}
    assert by_name["hello.txt"] == {
        "name": "hello.txt",
        "path": "hello.txt",
        "type": "file",
        "size": 13,
        "mtime": by_name["hello.txt"]["mtime"],
        "mime": "text/plain",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", by_name["hello.txt"]["mtime"])
    assert by_name["docs"]["type"] == "dir" and by_name["docs"]["mime"] is None


async def test_listing_subdirectory(client: httpx.AsyncClient) -> None:
    for url in ("/api/files/docs", "/api/files/docs/"):
        body = (await client.get(url)).json()
        assert body["path"] == "docs"
        assert [(e["name"], e["path"]) for e in body["entries"]] == [
            ("deep", "docs/deep"),
            ("readme.md", "docs/readme.md"),
        ]


async def test_listing_pagination(client: httpx.AsyncClient, share: Path) -> None:
    many = share / "many"
    many.mkdir()
    names = [f"f{i:04d}" for i in range(250)]
    for name in names:
        (many / name).write_bytes(b"")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "100"} | ({"cursor": cursor} if cursor else {})
        body = (await client.get("/api/files/many", params=params)).json()
        seen += [e["name"] for e in body["entries"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == names
    assert pages == 3


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "bad_limit"),
        ({"limit": "10001"}, "bad_limit"),
        ({"limit": "-1"}, "bad_limit"),
        ({"limit": "abc"}, "bad_limit"),
        ({"limit": "9" * 5000}, "bad_limit"),
        ({"cursor": "!!!"}, "bad_cursor"),
        ({"cursor": "aGVsbG8"}, "bad_cursor"),  # valid base64, not ours
    ],
)
async def test_listing_bad_query(
    client: httpx.AsyncClient, params: dict[str, str], code: str
) -> None:
    assert_json_error(await client.get("/api/files", params=params), 400, code)


async def test_listing_cursor_is_opaque_but_stable(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/files", params={"cursor": encode_cursor("hello.txt")})).json()
    assert all(e["name"] > "hello.txt" for e in body["entries"])


@pytest.mark.parametrize(
    "url",
    [
        "/api/files/hello.txt",
        "/api/files/.hiddendir",
        "/api/files/escape-dir",
        "/api/files/nope",
        "/content/docs",
        "/content/.secret",
        "/content/.hiddendir/inner.txt",
        "/content/escape",
        "/content/escape-dir/passwd",
        "/download/nope.txt",
        "/nope",
        "/",
    ],
)
async def test_refusals_are_json_404(client: httpx.AsyncClient, url: str) -> None:
    assert_json_error(await client.get(url), 404)


async def test_content_inline(client: httpx.AsyncClient) -> None:
    response = await client.get("/content/hello.txt")
    assert response.status_code == 200
    assert response.content == b"hello, world\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == "13"
    assert "content-disposition" not in response.headers
    assert response.headers["etag"].startswith('"')
    assert response.headers["last-modified"].endswith("GMT")


async def test_html_content_is_sandboxed(client: httpx.AsyncClient) -> None:
    response = await client.get("/content/page.html")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_media_content_is_not_sandboxed_but_svg_is(
    client: httpx.AsyncClient, share: Path
) -> None:
    """A sandboxed media document has a null origin and Chromium will not play it."""
    (share / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3")
    (share / "pic.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script/></svg>")
    video = await client.get("/content/clip.webm")
    assert video.headers["content-type"] == "video/webm"
    assert "content-security-policy" not in video.headers
    assert video.headers["x-content-type-options"] == "nosniff"
    svg = await client.get("/content/pic.svg")
    assert svg.headers["content-security-policy"] == "sandbox"


async def test_symlink_inside_root_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/content/alias.txt")).content == b"hello, world\n"


async def test_download_attachment_unicode(client: httpx.AsyncClient) -> None:
    response = await client.get("/download/r%C3%A9sum%C3%A9.txt")
    assert response.status_code == 200
    assert response.content == b"unicode name\n"
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"
    )


async def test_big_download_is_exact(client: httpx.AsyncClient, share: Path) -> None:
    expected = hashlib.sha256((share / "big.bin").read_bytes()).hexdigest()
    digest = hashlib.sha256()
    async with client.stream("GET", "/download/big.bin") as response:
        assert response.headers["content-length"] == str(BIG_FILE_BYTES)
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == expected


async def test_empty_file(client: httpx.AsyncClient) -> None:
    response = await client.get("/content/empty.txt")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-length"] == "0"


async def test_head_is_get_without_body(client: httpx.AsyncClient) -> None:
    get = await client.get("/download/big.bin")
    head = await client.head("/download/big.bin")
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-length", "etag", "last-modified", "content-type", "accept-ranges"):
        assert head.headers[name] == get.headers[name]


async def test_conditional_get(client: httpx.AsyncClient) -> None:
    first = await client.get("/content/hello.txt")
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    again = await client.get("/content/hello.txt", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    since = await client.get("/content/hello.txt", headers={"If-Modified-Since": modified})
    assert since.status_code == 304
    other = await client.get("/content/hello.txt", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    failed = await client.get("/content/hello.txt", headers={"If-Match": '"other"'})
    assert_json_error(failed, 412, "precondition_failed")


async def test_single_ranges(client: httpx.AsyncClient, share: Path) -> None:
    data = (share / "big.bin").read_bytes()
    size = len(data)
    cases = {
        "bytes=0-99": (0, 99),
        "bytes=100-": (100, size - 1),
        "bytes=-5": (size - 5, size - 1),
        f"bytes=10-{size + 1000}": (10, size - 1),
    }
    for header, (first, last) in cases.items():
        response = await client.get("/download/big.bin", headers={"Range": header})
        assert response.status_code == 206, header
        assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert response.headers["content-length"] == str(last - first + 1)
        assert response.content == data[first : last + 1]


async def test_multiple_ranges(client: httpx.AsyncClient) -> None:
    response = await client.get("/content/hello.txt", headers={"Range": "bytes=0-4,-6"})
    assert response.status_code == 206
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=")[1]
    body = response.content
    assert len(body) == int(response.headers["content-length"])
    assert f"--{boundary}\r\n".encode() in body
    assert b"Content-Range: bytes 0-4/13\r\n\r\nhello\r\n" in body
    assert b"Content-Range: bytes 7-12/13\r\n\r\nworld\n\r\n" in body
    assert body.endswith(f"--{boundary}--\r\n".encode())


async def test_unsatisfiable_range(client: httpx.AsyncClient) -> None:
    response = await client.get("/content/hello.txt", headers={"Range": "bytes=100-200"})
    assert_json_error(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == "bytes */13"


async def test_overlong_range_numbers_are_positions_not_a_500(client: httpx.AsyncClient) -> None:
    for header in ("bytes=" + "9" * 5000 + "-", "bytes=99999999999999999999999999-"):
        response = await client.get("/content/hello.txt", headers={"Range": header})
        assert response.status_code == 416  # a first-pos beyond the end, however long
        assert response.headers["content-range"] == "bytes */13"
    response = await client.get("/content/hello.txt", headers={"Range": "bytes=0-" + "9" * 5000})
    assert response.status_code == 206
    assert response.content == b"hello, world\n"


async def test_invalid_range_ignored(client: httpx.AsyncClient) -> None:
    response = await client.get("/content/hello.txt", headers={"Range": "bytes=5-1"})
    assert response.status_code == 200
    assert response.content == b"hello, world\n"


async def test_range_ignored_for_head(client: httpx.AsyncClient) -> None:
    response = await client.head("/content/hello.txt", headers={"Range": "bytes=0-1"})
    assert response.status_code == 200
    assert response.headers["content-length"] == "13"


async def test_if_range(client: httpx.AsyncClient) -> None:
    etag = (await client.head("/content/hello.txt")).headers["etag"]
    match = await client.get("/content/hello.txt", headers={"Range": "bytes=0-4", "If-Range": etag})
    assert match.status_code == 206 and match.content == b"hello"
    stale = await client.get(
        "/content/hello.txt", headers={"Range": "bytes=0-4", "If-Range": '"stale"'}
    )
    assert stale.status_code == 200 and stale.content == b"hello, world\n"
    weak = await client.get(
        "/content/hello.txt", headers={"Range": "bytes=0-4", "If-Range": "W/" + etag}
    )
    assert weak.status_code == 200


async def test_method_not_allowed(client: httpx.AsyncClient) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = await client.request(method, "/content/hello.txt")
        assert_json_error(response, 405)
    assert (await client.get("/content/hello.txt")).content == b"hello, world\n"


async def test_info(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/info")).json()
    assert body["name"] == "test-peer"
    assert body["peer_id"] is None
    assert isinstance(body["version"], str)


async def test_show_hidden(share: Path, nursery: trio.Nursery) -> None:
    from functools import partial

    from flashback.peer.app import ShareSettings
    from flashback.peer.serve import serve_peer

    settings = ShareSettings(share, show_hidden=True)
    address = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0))
    async with httpx.AsyncClient(base_url=address.url) as http:
        assert (await http.get("/content/.secret")).text == "top secret\n"
        names = [e["name"] for e in (await http.get("/api/files")).json()["entries"]]
        assert ".secret" in names and ".hiddendir" in names
        # still never outside the root
        assert (await http.get("/content/escape")).status_code == 404


async def test_generated_index_md_lists_files_added_later(
    client: httpx.AsyncClient, share: Path
) -> None:
    assert "later.txt" not in (share / "index.md").read_text()
    (share / "later.txt").write_text("new\n")
    response = await client.get("/content/index.md")
    assert response.status_code == 200
    assert "[later.txt](later.txt)" in response.text
    assert (share / "index.md").read_text() == response.text
    assert not [name for name in os.listdir(share) if name.endswith(".tmp")]


async def test_owners_index_md_is_never_rewritten(tmp_path: Path, nursery: trio.Nursery) -> None:
    from functools import partial

    from flashback.peer.app import ShareSettings
    from flashback.peer.serve import serve_peer

    (tmp_path / "index.md").write_text("mine\n")
    address = await nursery.start(partial(serve_peer, ShareSettings(tmp_path), "127.0.0.1", 0))
    (tmp_path / "later.txt").write_text("new\n")
    async with httpx.AsyncClient(base_url=address.url) as client:
        assert (await client.get("/content/index.md")).text == "mine\n"
    assert (tmp_path / "index.md").read_text() == "mine\n"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8080", True),
        ("192.0.2.7", True),
        ("[::1]:3912", True),
        ("[::1]", True),
        ("localhost:1", True),
        ("LOCALHOST.", True),
        ("share.example:80", True),  # a name it serves
        ("evil.example", False),
        ("evil.example:8080", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example", False),
        ("[::1]x", False),
        ("::1", False),  # unbracketed: no Host
        ("a:b", False),
        (None, True),  # HTTP/1.0, no browser
    ],
)
def test_host_header_rule(host: str | None, allowed: bool) -> None:
    from flashback.protocol.hosts import host_header_allowed

    assert host_header_allowed(host, frozenset({"share.example"})) is allowed


async def test_a_rebound_name_is_refused(client: httpx.AsyncClient) -> None:
    """DNS rebinding: a page on evil.example re-pointed at our address sends its own name."""
    for route in ("/api/files", "/api/info", "/content/hello.txt"):
        refused = await client.get(route, headers={"host": "evil.example:8080"})
        assert_json_error(refused, 421, "misdirected_request")
    assert (await client.get("/api/files", headers={"host": "localhost"})).status_code == 200
    assert (await client.get("/content/hello.txt")).text == "hello, world\n"  # 127.0.0.1:PORT


async def test_post_api_stream_asks_the_door_with_the_client_address(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """``POST /api/stream`` (§3, §4): JSON only, the daemon's door answers, and a
    refusal keeps its code; without a door (``flashback serve``) it is 503."""
    from functools import partial

    from flashback.peer.app import ShareSettings, StreamDoor
    from flashback.peer.serve import serve_peer
    from flashback.protocol.messages import FileStreamReady, StreamError

    asked: list[tuple[str, object]] = []

    async def door(path: str, client: object) -> FileStreamReady | StreamError:
        asked.append((path, client))
        if path == "ok.bin":
            return FileStreamReady("r1", "127.0.0.1", 4242, "tok", "ok.bin", 7, 60, to="fp")
        return StreamError("r2", "not_found", f"no such file: {path}", to="fp")

    streams = StreamDoor()
    settings = ShareSettings(tmp_path, streams=streams)
    address = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0))
    async with httpx.AsyncClient(base_url=address.url) as client:
        assert_json_error(await client.post("/api/stream", json={"path": "ok.bin"}), 503)
        streams.open = door
        ok = await client.post("/api/stream", json={"path": "ok.bin"})
        assert ok.status_code == 200
        assert ok.json()["type"] == "file-stream-ready" and ok.json()["port"] == 4242
        assert_json_error(await client.post("/api/stream", json={"path": "x"}), 404, "not_found")
        for bad in (
            client.post("/api/stream", content=b'{"path": "ok.bin"}'),  # not application/json
            client.post("/api/stream", json={"path": 5}),
            client.post("/api/stream", json=["ok.bin"]),
            client.post("/api/stream", json={"path": ""}),
        ):
            assert_json_error(await bad, 400)
        garbage = await client.post(
            "/api/stream", content=b"garbage", headers={"Content-Type": "application/json"}
        )
        assert_json_error(garbage, 400, "invalid_json")  # said as what it is
    assert [path for path, _ in asked] == ["ok.bin", "x"]
    client_address = asked[0][1]  # what the daemon names the requester by
    assert isinstance(client_address, tuple | list) and client_address[0] == "127.0.0.1"
