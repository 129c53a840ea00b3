"""The UI's "who can connect" page (§11): real HTTP on loopback, curl, and Chromium.

The state-changing routes are POST, need the token cookie, and refuse a
foreign Origin or Host with 403 JSON. Two local origins (127.0.0.1 on two
ports) are the same *site* to a browser, so the UI's SameSite=Strict cookie
goes along with another local page's POST: the Origin check is what stops it.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from flashback.config import DaemonConfig
from flashback.daemon.access import AccessControl, AccessStore
from flashback.daemon.context import DaemonContext
from flashback.daemon.hub import EventHub
from flashback.peer.app import LocalInfo
from flashback.ui.access import cross_site_refusal
from flashback.ui.auth import COOKIE_NAME
from flashback.ui.serve import serve_ui
from flashback.web import hypercorn_config, serve_quart
from tests.browser import chromium, missing_browser

TOKEN = "t0ken-for-access-tests"
BOB = "sha256:" + "b" * 64
EVE = "sha256:" + "e" * 64


class UI:
    def __init__(self, base: str, ctx: DaemonContext, access: AccessControl) -> None:
        self.base, self.ctx, self.access = base, ctx, access
        self.port = cast(int, httpx.URL(base).port)

    def knock(self, fingerprint: str, peer_id: str = "bob-id") -> str | None:
        return self.access.check(fingerprint, invite_peer=peer_id, invite_fingerprint=fingerprint)


@pytest.fixture
async def ui(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[UI]:
    config = DaemonConfig(root=tmp_path, tracker_url=None, name="alice")
    ctx = DaemonContext(config=config, hub=EventHub(io.StringIO()), local=LocalInfo(name="alice"))
    access = AccessControl(AccessStore(tmp_path), "allowed", emit=ctx.hub.emit, online=lambda: [])
    ctx.access = access
    url = await nursery.start(partial(serve_ui, ctx, 0, token=TOKEN))
    yield UI(url.split("/?", 1)[0], ctx, access)


def allowed(ui: UI) -> list[str]:
    return [entry["fingerprint"] for entry in ui.access.status()["allowed"]]


async def test_state_changes_need_post_the_cookie_and_this_ui_as_origin(ui: UI) -> None:
    assert ui.knock(BOB) == "forbidden"
    own = f"http://127.0.0.1:{ui.port}"
    body = {"fingerprint": BOB}
    async with httpx.AsyncClient(base_url=ui.base) as http:
        no_cookie = await http.post("/api/access/allow", json=body, headers={"origin": own})
        assert no_cookie.status_code == 403 and no_cookie.json()["error"]["code"] == "forbidden"
        http.cookies.set(COOKIE_NAME, TOKEN)
        for headers in (
            {"origin": "http://evil.example"},
            {"origin": f"http://127.0.0.1:{ui.port + 1}"},  # another local page
            {"origin": "null"},
            {"host": f"evil.example:{ui.port}"},  # DNS rebinding
            {"host": f"127.0.0.1:{ui.port + 1}"},
            {"sec-fetch-site": "cross-site"},
        ):
            refused = await http.post("/api/access/allow", json=body, headers=headers)
            assert refused.status_code == 403, headers
            assert refused.json()["error"]["code"] == "cross_site", headers
        assert allowed(ui) == []
        assert (await http.get("/api/access/allow")).status_code == 405
        bad = await http.post("/api/access/allow", json={"fingerprint": "bob"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_fingerprint"
        not_json = await http.post("/api/access/remove", content=b"\xff")
        assert not_json.status_code == 400

        ok = await http.post("/api/access/allow", json=body, headers={"origin": own})
        assert ok.status_code == 200, ok.text
        assert [a["allowed"] for a in ok.json()["recent"]] == [True]
        assert allowed(ui) == [BOB] and ui.knock(BOB) is None
        local = await http.post(
            "/api/access/remove",
            json={"list": "allowed", "fingerprint": BOB},
            headers={"host": f"localhost:{ui.port}"},  # curl without Origin, by name
        )
        assert local.status_code == 200 and allowed(ui) == []
        gone = await http.post("/api/access/remove", json={"list": "allowed", "fingerprint": BOB})
        assert gone.status_code == 404
        page = await http.get("/access")
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["content-security-policy"]
        )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_from_another_origin_is_refused(ui: UI) -> None:
    command = [
        "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
        "-H", f"Cookie: {COOKIE_NAME}={TOKEN}", "-H", "Origin: http://evil.example",
        "-H", "Content-Type: application/json", "--data", f'{{"fingerprint": "{BOB}"}}',
        f"{ui.base}/api/access/allow",
    ]  # fmt: skip
    done = await trio.run_process(command, capture_stdout=True)
    body, status = done.stdout.decode().rsplit("\n", 1)
    assert status == "403" and '"cross_site"' in body
    assert allowed(ui) == []


def test_cross_site_rule() -> None:
    assert cross_site_refusal({"host": "127.0.0.1:8080"}, 8080) is None
    assert (
        cross_site_refusal({"host": "LOCALHOST:8080", "origin": "http://localhost:8080"}, 8080)
        is None
    )
    assert (
        cross_site_refusal({"host": "127.0.0.1:8080", "origin": "http://localhost:8080"}, 8080)
        is None
    )
    assert cross_site_refusal({"host": "127.0.0.1:8080", "sec-fetch-site": "none"}, 8080) is None
    assert cross_site_refusal({}, 8080) is not None  # no Host at all
    assert cross_site_refusal({"host": "127.0.0.1:8080"}, None) is not None
    assert cross_site_refusal({"host": "127.0.0.1:8080", "origin": "https://127.0.0.1:8080"}, 8080)
    assert cross_site_refusal({"host": "127.0.0.1:8080", "sec-fetch-site": "same-site"}, 8080)


# -- in a real browser ----------------------------------------------------------------

EVIL_PAGE = """<!doctype html><html><body>
<p>win a prize</p>
<form id="f" method="POST" action="{target}" enctype="text/plain">
<input type="hidden" name='{{"fingerprint": "{fingerprint}", "x": "' value='"}}'>
</form>
<script>document.getElementById("f").submit()</script>
</body></html>"""


async def serve_evil_page(nursery: trio.Nursery, target: str) -> str:
    """Another local origin (127.0.0.1, another port) whose page POSTs to the UI."""
    app = QuartTrio(__name__)

    @app.get("/")
    async def page() -> Response:
        return Response(EVIL_PAGE.format(target=target, fingerprint=EVE), mimetype="text/html")

    address = await nursery.start(serve_quart, app, hypercorn_config("127.0.0.1", 0))
    return f"http://127.0.0.1:{address.port}/"


def scenario(driver: Any, ui: UI, evil_url: str, run: Callable[..., Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(predicate: Callable[[Any], Any]) -> Any:
        return WebDriverWait(driver, 30).until(predicate)

    def attempts() -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr[data-fingerprint]")
        return [row.get_attribute("data-fingerprint") for row in rows]

    driver.get(f"{ui.base}/?token={TOKEN}")
    driver.find_element(By.ID, "nav-access").click()
    wait(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-access-loaded") == "1")
    assert attempts() == []
    # bob knocks while the page is open: his attempt appears without a reload
    assert run(ui.knock, BOB) == "forbidden"
    wait(lambda d: BOB in attempts())
    row = driver.find_element(By.CSS_SELECTOR, f'#attempts tr[data-fingerprint="{BOB}"]')
    assert "forbidden" in row.text and "bob-id" in row.text
    row.find_element(By.CSS_SELECTOR, "button.allow").click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, f'#allowed tr[data-fingerprint="{BOB}"]'))
    assert run(ui.knock, BOB) is None  # the next connection is served
    # remove takes him off again
    driver.find_element(By.CSS_SELECTOR, f'#allowed tr[data-fingerprint="{BOB}"] button').click()
    wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "#allowed tbody tr"))
    assert run(ui.knock, BOB) == "forbidden"
    # another local page posts to the UI: the cookie goes along, the Origin gives it away
    driver.get(evil_url)
    wait(lambda d: "cross_site" in d.find_element(By.TAG_NAME, "body").text)
    assert EVE not in [e["fingerprint"] for e in run(ui.access.status)["allowed"]]


@pytest.mark.slow
@pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))
async def test_allow_from_the_page_and_a_cross_origin_post_in_chromium(
    ui: UI, nursery: trio.Nursery, tmp_path: Path
) -> None:
    evil_url = await serve_evil_page(nursery, f"{ui.base}/api/access/allow")
    token = trio.lowlevel.current_trio_token()

    def run(function: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(function, *args, trio_token=token)

    def drive() -> None:
        with chromium(tmp_path / "profile") as driver:
            scenario(driver, ui, evil_url, run)

    with trio.fail_after(120):
        await trio.to_thread.run_sync(drive)
    assert allowed(ui) == []
