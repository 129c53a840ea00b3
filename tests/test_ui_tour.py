"""Every view of the web UI in a real browser, with real content, at 1280 and 400 px.

Bob's daemon serves the UI; Alice shares holiday photos, a clip, a tone, notes
and a guide; Carol is online too. Each view is checked for what a person
needs (human sizes and dates, icons, sorting, the filter, ``..``, counts,
thumbnails, the folder's index.md, a player sized to its clip, tables and
anchors in Markdown, error pages with a way back, peers by name, the
favicon, the peer list's fingerprint, last seen and route) and shot at both
widths: at 400 px nothing overflows sideways and every download button is on
screen. Shots go to ``$FLASHBACK_SCREENSHOTS`` when set (that is how
``docs/screenshots/`` is made: ``make screenshots``), else to the test's tmp dir.
"""

from __future__ import annotations

import os
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
WIDE, NARROW, HEIGHT = 1280, 400, 860
DISK_BYTES = 524288000  # the "524288000": a sparse file, shown as 500 MiB

INDEX_MD = """# Alice's share

Pictures from the Rome trip, a short clip, a tone, and the notes.

| folder | what is in it |
|---|---|
| [photos](photos/) | six pictures, with thumbnails |
| [media](media/) | a test clip and a tone |
| [docs](docs/) | the trip guide |

Start with [the guide](docs/guide.md), or jump to [its second section](docs/guide.md#section-two).

```sh
flashback get alice photos
```
"""

PARAGRAPH = (
    "The city is best seen on foot: most of the old centre lies within half an hour's "
    "walk, and the streets between the sights are part of the visit. "
)
GUIDE_MD = (
    "# Trip guide\n\n## Section one\n\n"
    + "\n\n".join(PARAGRAPH * 3 for _ in range(8))
    + "\n\n## Section two\n\nWhat to pack:\n\n| item | why |\n|---|---|\n"
    "| shoes | cobblestones |\n| water bottle | fountains everywhere |\n\n"
    "```python\nimport flashback\nprint('ciao')\n```\n\n"
    + "\n\n".join(PARAGRAPH * 2 for _ in range(6))
    + "\n\nBack to [the share](../index.md).\n"
)
PHOTOS_MD = "# Rome, May 2026\n\nSix pictures from the trip. **Trevi** was the busiest.\n"
NOTES = "Day 1: Colosseum, Forum.\nDay 2: Pantheon, Trevi, Spanish Steps.\nDay 3: Tiber walk.\n"
PHOTOS = ("colosseum", "forum", "pantheon", "spanish-steps", "tiber", "trevi")


def picture(width: int, height: int, seed: int) -> bytes:
    """A valid RGB PNG: a sky-to-ground gradient with a sun, its colours from *seed*."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    sun_x, sun_y, r2 = width * (2 + seed % 5) // 8, height // 3, (height // 7) ** 2
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            if (x - sun_x) ** 2 + (y - sun_y) ** 2 < r2:
                rows += bytes((250, 210, 90))
            elif y < height * 2 // 3:
                t = y * 255 // height
                rows += bytes(((40 + 30 * seed) % 200, 90 + t // 3, 230 - t // 4))
            else:
                t = (y - height * 2 // 3) * 255 // height
                rows += bytes((150 + (37 * seed) % 90 - t // 4, 120 + t // 5, 70))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


def alice_files() -> dict[str, bytes]:
    files = {
        "index.md": INDEX_MD.encode(),
        "docs/guide.md": GUIDE_MD.encode(),
        "photos/index.md": PHOTOS_MD.encode(),
        "media/clip.webm": (FIXTURES / "clip.webm").read_bytes(),
        "media/tone.ogg": (FIXTURES / "tone.ogg").read_bytes(),
        "notes.txt": NOTES.encode(),
        "tools/resize.py": b"import sys\nprint(sys.argv)\n",
    }
    for i, name in enumerate(PHOTOS):
        files[f"photos/{name}.png"] = picture(320, 200, i)
    return files


def tour(driver: Any, ui_url: str, alice_id: str, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    base = ui_url.split("/?", 1)[0]

    def wait(predicate: Callable[[Any], Any]) -> Any:
        return WebDriverWait(driver, WAIT_S).until(predicate)

    def js(script: str, *args: Any) -> Any:
        return driver.execute_script(script, *args)

    def one(selector: str) -> Any:
        return driver.find_element(By.CSS_SELECTOR, selector)

    def every(selector: str) -> list[Any]:
        return list(driver.find_elements(By.CSS_SELECTOR, selector))

    def width(pixels: int) -> None:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": pixels, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        wait(lambda d: js("return window.innerWidth") == pixels)

    def images_loaded() -> bool:
        return bool(js("return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))

    def shoot(name: str) -> None:
        """Both widths; at 400 px no sideways scrolling and every download button on screen."""
        for pixels, suffix in ((WIDE, ""), (NARROW, "-400")):
            width(pixels)
            js("window.scrollTo(0, 0)")
            if pixels == NARROW:
                overflow = js("return document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, (name, overflow)
                for link in every("a.download, a#download"):
                    right = js("return arguments[0].getBoundingClientRect().right", link)
                    assert link.is_displayed() and right <= NARROW, (name, right)
            wait(lambda d: images_loaded())
            driver.save_screenshot(str(shots / f"{name}{suffix}.png"))
        width(WIDE)

    def cells(selector: str) -> list[str]:
        return [e.text for e in every(selector)]

    width(WIDE)
    # Without the token: a page that says how to get in, not raw JSON.
    driver.get(base + "/")
    assert one("h1").text == "No access"
    assert "flashback ui" in one(".error-page").text
    shoot("no-token")

    driver.get(ui_url)
    wait(lambda d: one("body").get_attribute("data-live") == "1")
    wait(lambda d: sorted(cells("#peers td.name a.peer-link")) == ["alice", "bob", "carol"])
    # The favicon is served (no 404), as the UI's own SVG.
    icon = driver.execute_async_script(
        "fetch('/favicon.ico').then(r => arguments[0](r.status + ' ' +"
        " r.headers.get('content-type')))"
    )
    assert icon.startswith("200 image/svg+xml"), icon
    assert one("link[rel=icon]").get_attribute("href") == base + "/static/favicon.svg"

    # A peer's name is a link to its share; there: sizes, dates, icons, counts.
    one(f'tr[data-peer-id="{alice_id}"] a.peer-link').click()
    wait(lambda d: d.find_elements(By.ID, "listing"))
    assert driver.current_url == f"{base}/p/{alice_id}/browse/"
    stamp = one("tr.file td.col-mtime time")
    assert stamp.get_attribute("title").endswith("Z") and "T" not in stamp.text
    icons = {
        row.find_element(By.CSS_SELECTOR, ".fname").text: row.get_attribute("data-icon")
        for row in every("tr.file")
    }
    assert icons == {"index.md": "doc", "notes.txt": "text"}
    assert [e.text for e in every("tr.dir td.col-name a")] == [
        "backups/", "docs/", "media/", "photos/", "tools/"
    ]  # fmt: skip
    assert all(
        js("return arguments[0].querySelector('svg use').getAttribute('href')", row) == "#i-folder"
        for row in every("tr.dir")
    )
    assert one("#counts").text.startswith("5 folders, 2 files")
    assert not every("#parent")  # nothing above the top of the share
    # its index.md is previewed below the table, its table a table
    assert one("#preview h1").text == "Alice's share"
    assert len(every("#preview table tr")) == 4
    shoot("browse")

    # Sorting by size, then the other way round.
    driver.get(f"{base}/p/{alice_id}/browse/backups/")
    disk = one('tr.file[data-icon="archive"] td.col-size')
    assert disk.text == "500 MiB" and disk.get_attribute("title") == "524,288,000 bytes"
    one('a.sort[data-sort="size"]').click()
    wait(lambda d: "sort=size" in d.current_url)
    sizes = [
        int(e.get_attribute("title").split()[0].replace(",", ""))
        for e in every("tr.file td.col-size")
    ]
    assert sizes == sorted(sizes) and len(sizes) == 3
    one('a.sort[data-sort="size"]').click()
    wait(lambda d: "order=desc" in d.current_url)
    assert cells("tr.file .fname")[0] == "disk.iso"
    assert one("th.col-size").get_attribute("aria-sort") == "descending"
    one("#parent").click()  # the .. row
    wait(lambda d: d.current_url == f"{base}/p/{alice_id}/browse/")

    # The photos by name (/p/alice/...), with lazy thumbnails and their index.md.
    driver.get(f"{base}/p/alice/browse/photos/")
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "img.thumb"))
    thumbs = every("img.thumb")
    assert len(thumbs) == 6 and all(t.get_attribute("loading") == "lazy" for t in thumbs)
    assert all(
        t.get_attribute("src").startswith(f"{base}/p/{alice_id}/content/photos/") for t in thumbs
    )
    wait(lambda d: all(js("return arguments[0].naturalWidth", t) == 320 for t in thumbs))
    assert one("#preview h1").text == "Rome, May 2026"
    assert one("#crumbs").text.replace(" ", "") == "alice/photos"
    shoot("photos")

    # The filter box: no script needed (a GET form), and it says what it hid.
    box = one("#filter input[name=q]")
    box.send_keys("TR" + Keys.ENTER)
    wait(lambda d: "q=TR" in d.current_url)
    assert cells("tr.file .fname") == ["trevi.png"]
    assert "6 hidden by the filter" in one("#counts").text
    shoot("filter")

    # An image, a text, a clip sized to itself, a tone.
    driver.get(f"{base}/p/{alice_id}/view/photos/trevi.png")
    wait(lambda d: js("return arguments[0].naturalWidth", one("#image")) == 320)
    shoot("image")
    driver.get(f"{base}/p/{alice_id}/view/notes.txt")
    assert one("#text").text == NOTES.strip()
    shoot("text")
    driver.get(f"{base}/p/{alice_id}/view/media/clip.webm")
    video = one("#video")
    wait(lambda d: js("return arguments[0].readyState", video) >= 1)
    natural = js("return [arguments[0].videoWidth, arguments[0].videoHeight]", video)
    assert natural == [160, 120]
    assert js("return [arguments[0].clientWidth, arguments[0].clientHeight]", video) == natural
    width(120)  # narrower than the clip: it shrinks and keeps its shape
    shrunk = js("return [arguments[0].clientWidth, arguments[0].clientHeight]", video)
    assert shrunk[0] < 120 and abs(shrunk[1] / shrunk[0] - 0.75) < 0.02, shrunk
    shoot("video")
    driver.get(f"{base}/p/{alice_id}/view/media/tone.ogg")
    wait(lambda d: js("return arguments[0].readyState", one("#audio")) >= 1)
    shoot("audio")

    # Markdown: tables, styled code, and a link that keeps its anchor.
    driver.get(f"{base}/p/{alice_id}/view/index.md")
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#rendered table"))
    assert one("#rendered h1").get_attribute("id") == "alices-share"
    code = one("#rendered pre")
    assert js("return getComputedStyle(arguments[0]).backgroundColor", code) != "rgba(0, 0, 0, 0)"
    assert "mono" in js("return getComputedStyle(arguments[0].firstChild).fontFamily", code)
    shoot("markdown")
    driver.find_element(By.LINK_TEXT, "its second section").click()
    wait(lambda d: d.current_url == f"{base}/p/{alice_id}/view/docs/guide.md#section-two")
    heading = one("#section-two")
    assert heading.text == "Section two"
    assert -2 < js("return arguments[0].getBoundingClientRect().top", heading) < 100
    assert len(every("#rendered table tr")) == 3
    driver.save_screenshot(str(shots / "anchor.png"))

    # Errors are pages with a way back.
    driver.get(f"{base}/p/{alice_id}/browse/photos/lost/")
    assert one("h1").text == "Not found"
    assert one(".error-page .message").text == "alice has no folder /photos/lost"
    shoot("error")
    driver.find_element(By.LINK_TEXT, "up to /photos").click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "img.thumb"))
    driver.get(f"{base}/p/nobody/browse/")
    assert one("h1").text == "Not found" and "nobody" in one(".message").text
    driver.find_element(By.LINK_TEXT, "all peers").click()
    wait(lambda d: one("body").get_attribute("data-live") == "1")

    # The peer list: a short fingerprint (the whole one in its title), last seen (listed
    # by the tracker now: online),
    # and the route this daemon used to alice.
    row = one(f'tr[data-peer-id="{alice_id}"]')
    fingerprint = row.find_element(By.CSS_SELECTOR, "td.fp")
    assert fingerprint.text.startswith("sha256:") and fingerprint.text.endswith("…")
    assert len(fingerprint.get_attribute("title")) == len("sha256:") + 64
    seen = row.find_element(By.CSS_SELECTOR, "td.seen")
    assert seen.text == "online now" and "registered 20" in seen.get_attribute("title")
    assert row.find_element(By.CSS_SELECTOR, "td.route").text == "direct"
    shoot("peers")

    driver.get(base + "/access")
    wait(lambda d: one("body").get_attribute("data-access-loaded") == "1")
    shoot("access")


async def test_a_tour_of_every_view_at_two_widths(tmp_path: Path, nursery: trio.Nursery) -> None:
    shots = Path(os.environ.get("FLASHBACK_SCREENSHOTS") or tmp_path / "shots")
    await trio.to_thread.run_sync(partial(shots.mkdir, parents=True, exist_ok=True))
    async with AsyncExitStack() as stack:
        _, tracker_url = await start_tracker(stack, nursery, tmp_path)
        await start_daemon(stack, nursery, tmp_path, "alice", tracker_url, alice_files())
        backups = tmp_path / "alice" / "share" / "backups"
        backups.mkdir()
        with (backups / "disk.iso").open("wb") as f:
            f.truncate(DISK_BYTES)
        (backups / "photos-2025.tar.gz").write_bytes(os.urandom(3_000_000))
        (backups / "list.txt").write_text("disk.iso\nphotos-2025.tar.gz\n")
        await start_daemon(stack, nursery, tmp_path, "carol", tracker_url)
        bob = await start_daemon(stack, nursery, tmp_path, "bob", tracker_url)
        ui_url = (await bob.wait_event(event_is("ui-ready")))["url"]
        for name in ("alice", "carol"):
            await bob.wait_event(
                lambda e, n=name: e.get("event") == "peer-joined" and e["peer"]["name"] == n  # type: ignore[misc]  # binds the loop variable
            )
        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"{tracker_url}/api/peers/list")).json()["peers"]
        alice_id = next(p["peer_id"] for p in listed if p["name"] == "alice")

        def drive() -> None:
            with chromium(tmp_path / "profile") as driver:
                tour(driver, ui_url, alice_id, shots)

        with trio.fail_after(240):
            await trio.to_thread.run_sync(drive)
    views = ("no-token", "peers", "browse", "photos", "filter", "image", "text", "video")
    for view in (*views, "audio", "markdown", "error", "access"):
        for suffix in ("", "-400"):
            assert (shots / f"{view}{suffix}.png").read_bytes().startswith(b"\x89PNG")
