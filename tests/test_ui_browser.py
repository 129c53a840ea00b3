"""The web UI in a real browser: headless Debian chromium, real tracker and daemons.

Bob's daemon serves the UI; Alice (a remote peer, reached directly) holds
the files. The tour of every view with real content (not the hostile
fixtures here) is in ``test_ui_tour.py``; its screenshots make
``docs/screenshots/``.
"""

from __future__ import annotations

import signal
import struct
import zlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.browser import chromium, missing_browser
from tests.procs import event_is
from tests.test_daemon_system import start_daemon, start_tracker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser())),
]

FIXTURES = Path(__file__).parent / "fixtures"
WAIT_S = 30

INDEX_MD = """# Alice's notes

<script>document.title = 'pwned'; window.pwned = 1</script>

<img src="nothing.png" onerror="window.pwned = 2">

A [dead link](javascript:window.pwned=3) and <javascript:window.pwned=4>.

Read [the guide](docs/guide.md), or [escape](../../etc/passwd).

![a picture](pic.png)
"""

GUIDE_MD = "# The guide\n\nBack to [the notes](../index.md).\n"


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG: a blue-to-green gradient."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + b"".join(bytes((40, 80 + 150 * x // width, 200)) for x in range(width))
        for _ in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def alice_files() -> dict[str, bytes]:
    files = {
        "index.md": INDEX_MD.encode(),
        "docs/guide.md": GUIDE_MD.encode(),
        "docs/sub/deep.txt": b"deep\n",
        "notes.txt": b"<b>not bold</b> & plain\n",
        "pic.png": png(120, 80),
        "clip.webm": (FIXTURES / "clip.webm").read_bytes(),
        "tone.ogg": (FIXTURES / "tone.ogg").read_bytes(),
        "page.html": b"<script>document.title = 'pwned'</script><p>html</p>",
    }
    files |= {f"many/f{i:03}.txt": b"x" for i in range(230)}
    return files


def scenario(
    driver: Any,
    ui_url: str,
    alice_id: str,
    alice_server: str,
    start_carol: Callable[[], None],
    stop_carol: Callable[[], None],
    shots: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(predicate: Callable[[Any], Any]) -> Any:
        return WebDriverWait(driver, WAIT_S).until(predicate)

    def names() -> list[str]:
        return [
            e.text.split(" ")[0] for e in driver.find_elements(By.CSS_SELECTOR, "#peers td.name")
        ]

    def shot(name: str) -> None:
        driver.save_screenshot(str(shots / f"{name}.png"))

    base = ui_url.split("/?", 1)[0]

    # No token, no page (the browser has no cookie yet).
    driver.get(base + "/")
    assert "forbidden" in driver.find_element(By.TAG_NAME, "body").text

    # The tokened URL sets the cookie and drops the token from the address bar.
    driver.get(ui_url)
    assert "token" not in driver.current_url
    wait(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "1")
    wait(lambda d: sorted(names()) == ["alice", "bob"])
    routes = {
        row.get_attribute("data-peer-id"): row.find_element(By.CSS_SELECTOR, ".route").text
        for row in driver.find_elements(By.CSS_SELECTOR, "#peers tbody tr")
    }
    assert routes[alice_id] == "not yet used"  # no route tried yet: none is claimed
    assert "local" in routes.values()
    assert driver.find_element(By.ID, "tracker-state").text == "connected"

    # A third daemon appears and leaves without a reload.
    driver.execute_script("window.sameDocument = 42")
    start_carol()
    wait(lambda d: "carol" in names())
    shot("peers")
    stop_carol()
    wait(lambda d: "carol" not in names())
    assert driver.execute_script("return window.sameDocument") == 42

    # Into Alice's folder and back by breadcrumb.
    driver.find_element(By.CSS_SELECTOR, f'tr[data-peer-id="{alice_id}"] a.browse').click()
    wait(lambda d: d.find_elements(By.LINK_TEXT, "docs/"))
    shot("browse")
    driver.find_element(By.LINK_TEXT, "docs/").click()
    wait(lambda d: d.find_elements(By.LINK_TEXT, "sub/"))
    crumbs = driver.find_element(By.ID, "crumbs").text
    assert crumbs.replace(" ", "") == "alice/docs"
    driver.find_element(By.CSS_SELECTOR, "#crumbs a").click()
    wait(lambda d: d.find_elements(By.LINK_TEXT, "index.md"))

    # Paging: 230 entries, 200 a page.
    driver.find_element(By.LINK_TEXT, "many/").click()
    wait(lambda d: d.find_elements(By.ID, "next-page"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#listing tr.file")) == 200
    driver.find_element(By.ID, "next-page").click()
    wait(lambda d: d.find_elements(By.ID, "first-page"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#listing tr.file")) == 30
    driver.find_element(By.CSS_SELECTOR, "#crumbs a").click()

    # Markdown: rendered, nothing from the file runs, dead links are dead.
    wait(lambda d: d.find_elements(By.LINK_TEXT, "index.md"))
    driver.find_element(By.LINK_TEXT, "index.md").click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#rendered h1"))
    assert driver.find_element(By.CSS_SELECTOR, "#rendered h1").text == "Alice's notes"
    image = wait(lambda d: d.find_element(By.CSS_SELECTOR, "#rendered img"))
    wait(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
    shot("markdown")
    assert driver.title != "pwned"
    assert driver.execute_script("return typeof window.pwned") == "undefined"
    assert "<script>" in driver.find_element(By.ID, "rendered").text  # shown as text
    hrefs = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#rendered a")]
    assert all(h is None or h.startswith(base + "/p/") for h in hrefs), hrefs
    assert driver.find_element(By.LINK_TEXT, "escape").get_attribute("href") is None
    driver.find_element(By.LINK_TEXT, "the guide").click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#rendered h1"))
    assert driver.current_url == f"{base}/p/{alice_id}/view/docs/guide.md"
    assert driver.find_element(By.CSS_SELECTOR, "#rendered h1").text == "The guide"
    assert driver.find_element(By.ID, "crumbs").text.replace(" ", "") == "alice/docs/guide.md"
    assert (
        driver.find_element(By.ID, "download")
        .get_attribute("href")
        .endswith(f"/p/{alice_id}/download/docs/guide.md")
    )

    # Text is text.
    driver.get(f"{base}/p/{alice_id}/view/notes.txt")
    assert driver.find_element(By.ID, "text").text == "<b>not bold</b> & plain"
    assert not driver.find_elements(By.CSS_SELECTOR, "#text b")

    # An image.
    driver.get(f"{base}/p/{alice_id}/view/pic.png")
    image = driver.find_element(By.ID, "image")
    wait(lambda d: d.execute_script("return arguments[0].naturalWidth", image) == 120)

    # A video plays and seeks to its middle (Range requests through the UI to Alice).
    driver.get(f"{base}/p/{alice_id}/view/clip.webm")
    video = driver.find_element(By.ID, "video")
    driver.execute_script("arguments[0].muted = true; arguments[0].play()", video)
    wait(lambda d: d.execute_script("return arguments[0].readyState", video) >= 3)
    duration = driver.execute_script("return arguments[0].duration", video)
    assert 3.5 < duration < 4.5
    driver.execute_script(
        "arguments[0].pause(); arguments[0].currentTime = arguments[1]", video, duration / 2
    )
    wait(
        lambda d: d.execute_script(
            "const v = arguments[0]; return !v.seeking && v.readyState >= 3"
            " && Math.abs(v.currentTime - arguments[1]) < 0.2",
            video,
            duration / 2,
        )
    )
    assert driver.execute_script("return arguments[0].error", video) is None
    shot("video")

    # Audio plays and seeks the same way.
    driver.get(f"{base}/p/{alice_id}/view/tone.ogg")
    audio = driver.find_element(By.ID, "audio")
    driver.execute_script("arguments[0].muted = true; arguments[0].play()", audio)
    wait(lambda d: d.execute_script("return arguments[0].readyState", audio) >= 3)
    driver.execute_script("arguments[0].pause(); arguments[0].currentTime = 1", audio)
    wait(
        lambda d: d.execute_script(
            "const a = arguments[0]; return !a.seeking && Math.abs(a.currentTime - 1) < 0.2",
            audio,
        )
    )
    assert driver.execute_script("return arguments[0].error", audio) is None

    # Opened directly from the peer server, the video plays too (no sandbox on media) ...
    driver.get(f"{alice_server}/content/clip.webm")
    direct = wait(lambda d: d.find_element(By.TAG_NAME, "video"))
    driver.execute_script("arguments[0].muted = true; arguments[0].play()", direct)
    wait(lambda d: d.execute_script("return arguments[0].readyState", direct) >= 3)
    assert driver.execute_script("return arguments[0].error", direct) is None
    # ... while a shared HTML page still cannot run script.
    driver.get(f"{alice_server}/content/page.html")
    assert driver.find_element(By.TAG_NAME, "p").text == "html"
    assert driver.title != "pwned"


async def test_web_ui_in_a_real_browser(tmp_path: Path, nursery: trio.Nursery) -> None:
    shots = tmp_path / "shots"  # hostile fixtures: docs/screenshots come from the tour below
    await trio.to_thread.run_sync(partial(shots.mkdir, parents=True, exist_ok=True))
    async with AsyncExitStack() as stack:
        _, tracker_url = await start_tracker(stack, nursery, tmp_path)
        alice = await start_daemon(stack, nursery, tmp_path, "alice", tracker_url, alice_files())
        bob = await start_daemon(stack, nursery, tmp_path, "bob", tracker_url)
        ui_url = (await bob.wait_event(event_is("ui-ready")))["url"]
        server = (await alice.wait_event(event_is("peer-server-ready")))["url"]
        await bob.wait_event(
            lambda e: e.get("event") == "peer-joined" and e["peer"]["name"] == "alice"
        )
        async with httpx.AsyncClient() as http:
            alice_id = next(
                p["peer_id"]
                for p in (await http.get(f"{tracker_url}/api/peers/list")).json()["peers"]
                if p["name"] == "alice"
            )
        token = trio.lowlevel.current_trio_token()
        want_up, is_up, want_down, is_down = (trio.Event() for _ in range(4))

        async def carol() -> None:
            """Carol's whole life in one task (its process's nursery must stay in it)."""
            await want_up.wait()
            async with AsyncExitStack() as carol_stack:
                proc = await start_daemon(carol_stack, nursery, tmp_path, "carol", tracker_url)
                is_up.set()
                await want_down.wait()
                proc.signal(signal.SIGTERM)  # a clean leave: the tracker tells everyone at once
                assert await proc.wait_exit() == 0
            is_down.set()

        def start_carol() -> None:
            trio.from_thread.run_sync(want_up.set, trio_token=token)
            trio.from_thread.run(is_up.wait, trio_token=token)

        def stop_carol() -> None:
            trio.from_thread.run_sync(want_down.set, trio_token=token)
            trio.from_thread.run(is_down.wait, trio_token=token)

        def drive() -> None:
            with chromium(tmp_path / "profile") as driver:
                scenario(driver, ui_url, alice_id, server, start_carol, stop_carol, shots)

        async with trio.open_nursery() as carol_nursery:
            carol_nursery.start_soon(carol)
            with trio.fail_after(180):
                await trio.to_thread.run_sync(drive)
            carol_nursery.cancel_scope.cancel()
    for name in ("peers", "browse", "markdown", "video"):
        assert (shots / f"{name}.png").read_bytes().startswith(b"\x89PNG")


HOSTILE_SCRIPT = (
    b"<script>fetch('/api/peers').then(r => r.text())"
    b".then(t => { document.title = 'pwned ' + t.length })</script>"
    b"<script>document.title = 'pwned'</script><p>peer's page</p>"
)


async def test_a_peers_content_type_list_runs_no_script_on_the_ui_origin(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A peer that answers ``image/png, text/html`` (Chromium reads the last type) or
    plain ``text/html`` for any name: opened through the UI, its script never runs."""
    from flashback.protocol.messages import PeerInfo
    from tests.test_ui_http import hostile_http, serve_hostile_peer, ui_context

    hostile = hostile_http(
        {"Content-Type": "image/png, text/html", "Set-Cookie": "flashback_ui=stolen"},
        HOSTILE_SCRIPT,
    )
    port = await nursery.start(
        serve_hostile_peer,
        {
            "/api/info": hostile_http(
                {"Content-Type": "application/json"}, b'{"peer_id": "evil", "name": "mallory"}'
            ),
            "/content/page.html": hostile_http({"Content-Type": "text/html"}, HOSTILE_SCRIPT),
            "/content/": hostile,
        },
    )
    root = tmp_path / "share"
    root.mkdir()
    async with httpx.AsyncClient() as probe:
        ctx, ui_url = await ui_context(nursery, root, probe)
        ctx.table.peers["evil"] = PeerInfo("evil", "mallory", "127.0.0.1", port)
        with trio.fail_after(120):
            titles = await trio.to_thread.run_sync(partial(hostile_titles, tmp_path, ui_url))
    assert titles and not any(title.startswith("pwned") for title in titles), titles


def hostile_titles(tmp_path: Path, ui_url: str) -> list[str]:
    """The title of each of the hostile peer's files, opened through the UI."""
    base = ui_url.split("/?", 1)[0]
    titles = []
    with chromium(tmp_path / "profile") as driver:
        driver.get(ui_url)  # the cookie
        assert "token" not in driver.current_url
        for name in ("pic.png", "clip.webm", "notes.txt", "page.html", "x.html"):
            driver.get(f"{base}/p/evil/content/{name}")
            # both scripts would have run by the time the load ends (fetch aside:
            # the synchronous one sets the title at once)
            titles.append(driver.title)
            driver.get(f"{base}/api/peers")  # leave, so a download cannot linger
    return titles


async def test_a_rebound_name_loads_no_listing_in_chromium(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """DNS rebinding: a page on rebind.test whose name now resolves to 127.0.0.1 asks
    the peer server for its listing; the server refuses the name it does not serve."""
    from flashback.peer.app import LocalInfo, ShareSettings
    from flashback.peer.serve import serve_peer

    root = tmp_path / "share"
    root.mkdir()
    (root / "secret-plans.txt").write_text("x\n")
    address = await nursery.start(
        partial(serve_peer, ShareSettings(root, info=LocalInfo(name="alice")), "127.0.0.1", 0)
    )

    def load(url: str) -> str:
        from selenium.webdriver.common.by import By

        rules = "--host-resolver-rules=MAP rebind.test 127.0.0.1"
        with chromium(tmp_path / "profile", rules) as driver:
            driver.get(url)
            return str(driver.find_element(By.TAG_NAME, "body").text)

    with trio.fail_after(60):
        rebound = await trio.to_thread.run_sync(
            load, f"http://rebind.test:{address.port}/api/files"
        )
        direct = await trio.to_thread.run_sync(load, f"http://127.0.0.1:{address.port}/api/files")
    assert "secret-plans" not in rebound and "misdirected_request" in rebound
    assert "secret-plans" in direct  # the same browser, by IP: served
