"""The UI's pages for people, over real HTTP: a folder page (human sizes and dates,
icons, sort, filter, ``..``, counts, thumbnails, the index.md preview), error pages
with a way back, peers by name, the favicon, and the peer list's columns."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from flashback.daemon.context import DaemonContext
from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.protocol.messages import PeerInfo
from flashback.ui.app import PAGE_CSP
from flashback.ui.auth import COOKIE_NAME
from flashback.ui.kinds import MEDIA_CSP
from tests.test_ui_http import TOKEN, ui_context

BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8cfc0f01f0005000201ffa1c6a6e50000000049454e44ae426082"
)
INDEX = "# Holiday\n\n| day | place |\n|---|---|\n| 1 | Rome |\n\nSee [b](b.png).\n"
FP_ALICE = "sha256:" + "a1" * 32


def build_share(root: Path) -> None:
    (root / "photos").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (root / "photos" / name).write_bytes(PNG_1PX)
    (root / "photos" / "index.md").write_text(INDEX)
    with (root / "big.bin").open("wb") as f:
        f.truncate(1572864)
    (root / "mid.txt").write_bytes(b"m" * 2000)
    (root / "small.txt").write_bytes(b"abc")
    (root / "index.md").write_text("# Top\n")  # the owner's own: never rewritten
    (root / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(10))
    stamps = (("big.bin", 1_700_000_000), ("mid.txt", 1_600_000_000), ("index.md", 1_650_000_000))
    for name, stamp in stamps:
        os.utime(root / name, (stamp, stamp))
    os.utime(root / "small.txt", (1_800_000_000, 1_800_000_000))


@pytest.fixture
async def site(
    nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, DaemonContext]]:
    root = tmp_path / "share"
    build_share(root)
    async with httpx.AsyncClient() as probe:
        ctx, url = await ui_context(nursery, root, probe)
        base = url.split("/?", 1)[0]
        async with httpx.AsyncClient(base_url=base, cookies={COOKIE_NAME: TOKEN}) as http:
            yield http, ctx


def names(html: str) -> list[str]:
    return re.findall(r'<span class="fname">([^<]*)</span>', html)


async def test_a_folder_shows_sizes_and_dates_for_people_with_the_exact_values(
    site: tuple[httpx.AsyncClient, DaemonContext],
) -> None:
    http, _ = site
    page = (await http.get("/p/self/browse/")).text
    assert '<td class="col-size num" title="1,572,864 bytes">1.5 MiB</td>' in page
    assert '<td class="col-size num" title="2,000 bytes">2.0 KiB</td>' in page
    assert (
        '<time datetime="2023-11-14T22:13:20Z" title="2023-11-14T22:13:20Z">14 Nov 2023</time>'
        in page
    )
    assert "1572864<" not in page  # no raw byte count shown as the size
    icons = {
        name: icon
        for icon, name in re.findall(
            r'<tr class="file" data-icon="(\w+)"><td class="col-name"><a href="[^"]*/([^"/]+)"',
            page,
        )
    }
    assert icons == {
        "big.bin": "file",
        "clip.webm": "video",
        "index.md": "doc",
        "mid.txt": "text",
        "small.txt": "text",
    }
    assert '<use href="#i-folder"/></svg>photos/</a>' in page
    assert 'id="parent"' not in page  # the top of the share has nothing above
    counts = re.search(r'<p id="counts"[^>]*>(.*?)</p>', page, re.S)
    assert counts is not None and " ".join(counts[1].split()) == "1 folder, 5 files (1.5 MiB)"
    assert 'rel="icon"' in page and "favicon.svg" in page


async def test_sorting_by_name_size_and_date_by_query_string(
    site: tuple[httpx.AsyncClient, DaemonContext],
) -> None:
    http, _ = site
    assert names((await http.get("/p/self/browse/")).text) == [
        "big.bin", "clip.webm", "index.md", "mid.txt", "small.txt"
    ]  # fmt: skip
    by_size = (await http.get("/p/self/browse/", params={"sort": "size", "order": "desc"})).text
    assert names(by_size) == ["big.bin", "mid.txt", "clip.webm", "index.md", "small.txt"]
    assert (
        'aria-sort="descending"><a class="sort" data-sort="size"'
        ' href="/p/self/browse/?sort=size&amp;order=asc"' in by_size
    )
    by_date = (await http.get("/p/self/browse/", params={"sort": "mtime"})).text
    assert names(by_date) == ["mid.txt", "index.md", "big.bin", "clip.webm", "small.txt"]


async def test_the_filter_box_works_without_script(
    site: tuple[httpx.AsyncClient, DaemonContext],
) -> None:
    http, _ = site
    page = await http.get("/p/self/browse/", params={"q": "TXT", "sort": "size"})
    assert names(page.text) == ["small.txt", "mid.txt"]
    assert 'name="q" value="TXT"' in page.text
    counts = re.search(r'<p id="counts"[^>]*>(.*?)</p>', page.text, re.S)
    assert counts is not None and "4 hidden by the filter" in counts[1]
    assert "form-action 'self'" in page.headers["content-security-policy"]
    nothing = await http.get("/p/self/browse/", params={"q": "<zzz>"})
    assert "nothing matches the filter" in nothing.text and "&lt;zzz&gt;" in nothing.text


async def test_an_image_folder_has_thumbnails_a_parent_row_and_its_index_previewed(
    site: tuple[httpx.AsyncClient, DaemonContext],
) -> None:
    http, _ = site
    page = (await http.get("/p/self/browse/photos/")).text
    assert '<a id="parent" href="/p/self/browse/">' in page
    thumbs = re.findall(r'<img class="thumb" loading="lazy" src="([^"]+)"', page)
    assert thumbs == ["/p/self/content/photos/a.png", "/p/self/content/photos/b.png"]
    thumb = await http.get(thumbs[0])
    assert thumb.headers["content-type"] == "image/png" and thumb.content == PNG_1PX
    assert thumb.headers["content-security-policy"] == MEDIA_CSP
    preview = page.split('<section id="preview"', 1)[1]
    assert '<h1 id="holiday">Holiday</h1>' in preview
    assert "<td>Rome</td>" in preview and "|" not in preview.split("</section>")[0]
    assert 'href="/p/self/view/photos/b.png"' in preview  # links navigate inside the UI


async def test_errors_are_pages_with_a_way_back_for_browsers_and_json_for_api_callers(
    site: tuple[httpx.AsyncClient, DaemonContext],
) -> None:
    http, _ = site
    missing = await http.get("/p/self/browse/photos/nope/", headers=BROWSER)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert missing.headers["content-security-policy"] == PAGE_CSP
    assert "me has no folder /photos/nope" in missing.text
    assert '<a href="/p/self/browse/photos/">up to /photos</a>' in missing.text
    assert '<a href="/p/self/browse/">the top of the share</a>' in missing.text
    assert '<a href="/">all peers</a>' in missing.text
    unknown = await http.get("/p/<nobody>/browse/", headers=BROWSER)
    assert unknown.status_code == 404 and "&lt;nobody&gt;" in unknown.text
    assert "<nobody>" not in unknown.text and '<a href="/">all peers</a>' in unknown.text
    route = await http.get("/no/such/page", headers=BROWSER)
    assert route.status_code == 404 and '<a href="/">all peers</a>' in route.text
    for path in ("/p/self/browse/photos/nope/", "/p/nobody/browse/", "/no/such/page"):
        api = await http.get(path)  # */*: the contract's JSON
        assert api.status_code == 404 and api.json()["error"]["code"] in (
            "no_such_folder", "not_found", "unknown_peer",
        )  # fmt: skip
    async with httpx.AsyncClient(base_url=str(http.base_url)) as stranger:
        page = await stranger.get("/p/self/browse/", headers=BROWSER)
        assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
        assert "flashback ui" in page.text and "photos" not in page.text
        assert 'href="/access"' not in page.text and "ui.css" not in page.text
        csp = page.headers["content-security-policy"]  # its few rules inline, by hash only
        assert "style-src 'sha256-" in csp and "unsafe-inline" not in csp
        api = await stranger.get("/p/self/browse/")
        assert api.status_code == 403 and api.json()["error"]["code"] == "forbidden"


async def test_a_peer_is_found_by_its_name_and_the_list_shows_fingerprint_seen_and_route(
    site: tuple[httpx.AsyncClient, DaemonContext], nursery: trio.Nursery, tmp_path: Path
) -> None:
    http, ctx = site
    root = tmp_path / "alice"
    root.mkdir()
    (root / "from-alice.txt").write_text("hi\n")
    info = LocalInfo(name="alice", peer_id="p-alice")
    alice = await nursery.start(
        partial(serve_peer, ShareSettings(root, False, info), "127.0.0.1", 0)
    )
    seen = "2026-01-01T00:00:00Z"
    ctx.table.peers["p-alice"] = PeerInfo(
        "p-alice", "alice", "127.0.0.1", alice.port, last_seen=seen, fingerprint=FP_ALICE
    )
    ctx.set_connected(True)
    listed = (await http.get("/")).text
    row = listed.split('data-peer-id="p-alice"', 1)[1].split("</tr>", 1)[0]
    assert '<a class="peer-link" href="/p/p-alice/browse/">alice</a>' in row
    assert f'<td class="fp" title="{FP_ALICE}">sha256:{"a1" * 8}…</td>' in row
    # the daemon's copy of last_seen is not news (heartbeats are no changes): being
    # listed is, while the link is up; the tracker's own record is in the title
    assert re.search(
        f'<td class="seen" title="listed by the tracker[^"]*{seen}">online now</td>', row
    ), row
    assert '<td class="route">not yet used</td>' in row
    by_name = await http.get("/p/alice/browse/")
    assert by_name.status_code == 200 and "from-alice.txt" in by_name.text
    assert 'href="/p/p-alice/view/from-alice.txt"' in by_name.text  # links name her id
    listed = (await http.get("/")).text
    row = listed.split('data-peer-id="p-alice"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="route">direct</td>' in row  # the route this daemon used
    ctx.table.peers["p-alice-2"] = PeerInfo("p-alice-2", "alice", "127.0.0.1", alice.port)
    twice = await http.get("/p/alice/browse/", headers=BROWSER)
    assert twice.status_code == 409
    assert 'href="/p/p-alice/browse/"' in twice.text and 'href="/p/p-alice-2/browse/"' in twice.text
    own = await http.get("/p/me/browse/")  # this daemon by its own name
    assert own.status_code == 200 and "small.txt" in own.text


async def test_the_favicon_is_the_uis_own_svg(
    site: tuple[httpx.AsyncClient, DaemonContext],
) -> None:
    http, _ = site
    for path in ("/favicon.ico", "/static/favicon.svg"):
        icon = await http.get(path)
        assert icon.status_code == 200
        assert icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.headers["content-security-policy"] == "default-src 'none'"
        assert icon.text.startswith("<svg") and "<script" not in icon.text
