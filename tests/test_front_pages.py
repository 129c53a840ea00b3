"""What a newcomer opens first: the URL ``tracker-ready`` prints, and ``/`` on a peer server."""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import trio

from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.web import BoundAddress
from tests.procs import first_event, reap

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def test_a_wildcard_bind_announces_a_url_one_can_open() -> None:
    assert BoundAddress("0.0.0.0", 3000).url == "http://127.0.0.1:3000"
    assert BoundAddress("::", 3000).url == "http://[::1]:3000"
    assert BoundAddress("192.0.2.7", 3000).url == "http://192.0.2.7:3000"
    assert BoundAddress("0.0.0.0", 3000).listens_everywhere
    assert not BoundAddress("127.0.0.1", 3000).listens_everywhere


async def test_tracker_on_every_address_prints_a_usable_url(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "flashback", "tracker", "--host", "0.0.0.0", "--port", "0",
        "--tunnel-port", "0", "--database-url", "memory://",
    ]  # fmt: skip
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            ready = await first_event(process)
            assert ready["host"] == "0.0.0.0"  # the bind, as it is
            assert ready["url"] == f"http://127.0.0.1:{ready['port']}"
            async with httpx.AsyncClient(base_url=ready["url"]) as client:
                assert (await client.get("/api/relay/status")).json()["status"] == "ok"
                # the URL opened in a browser says what it is; API clients keep JSON
                page = await client.get("/", headers={"accept": BROWSER_ACCEPT})
                assert page.status_code == 200 and "Flashback relay tracker" in page.text
                assert page.headers["content-security-policy"].startswith("default-src 'none'")
                assert 'href="/api/peers/list"' in page.text
                api = await client.get("/")
                assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            assert process.stderr is not None
            log = (await process.stderr.receive_some(65536)).decode()
            assert "listening on all addresses (0.0.0.0)" in log, log
        finally:
            await reap(process)


async def test_a_peer_servers_root_is_a_page_for_browsers_and_json_for_clients(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    info = LocalInfo(name="<b>alice</b>")
    address = await nursery.start(
        partial(serve_peer, ShareSettings(root, info=info), "127.0.0.1", 0)
    )
    async with httpx.AsyncClient(base_url=address.url) as http:
        page = await http.get("/", headers={"accept": BROWSER_ACCEPT})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        assert "&lt;b&gt;alice&lt;/b&gt;" in page.text and "<b>alice" not in page.text
        assert "flashback ui" in page.text and 'href="/api/files"' in page.text
        for accept in ("*/*", "application/json"):
            api = await http.get("/", headers={"accept": accept})
            assert api.status_code == 404
            assert api.json()["error"]["code"] == "not_found"
