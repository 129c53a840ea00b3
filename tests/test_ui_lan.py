"""The UI of a daemon with no tracker: a LAN peer listed by its source and browsed,
viewed and downloaded through its real direct endpoint (§12), between real daemons
in network namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

from flashback.ui.auth import COOKIE_NAME
from tests.browser import missing_browser
from tests.netns import require_netns, two_hosts_on_a_lan
from tests.procs import daemon_env, event_is, reap, run_cli
from tests.test_lan import _lan_daemon, found

#: one GET with httpx from inside a namespace (the UI listens on that host's 127.0.0.1)
FETCH = """
import json, sys, httpx
r = httpx.get(sys.argv[1], cookies={sys.argv[2]: sys.argv[3]}, timeout=60)
print(json.dumps({"status": r.status_code, "headers": dict(r.headers), "body": r.text}))
"""


async def ui_get(host: str, base: str, token: str, path: str) -> dict[str, Any]:
    cookie = (COOKIE_NAME, token)
    with trio.fail_after(60):
        done = await trio.run_process(
            ["ip", "netns", "exec", host, sys.executable, "-c", FETCH, base + path, *cookie],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


async def test_the_ui_browses_a_lan_peer_by_its_direct_endpoint(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    require_netns()
    with two_hosts_on_a_lan() as lan, trio.fail_after(120):
        async with AsyncExitStack() as stack:
            alice = await _lan_daemon(stack, nursery, tmp_path, "alice", lan.hosts[0])
            await alice.wait_event(event_is("peer-server-ready"), timeout_s=30)
            (tmp_path / "alice" / "share" / "music").mkdir()
            (tmp_path / "alice" / "share" / "music" / "notes.txt").write_text("la la la\n")
            bob = await _lan_daemon(stack, nursery, tmp_path, "bob", lan.hosts[1])
            await bob.wait_event(event_is("peer-server-ready"), timeout_s=30)
            ui = httpx.URL((await bob.wait_event(event_is("ui-ready"), timeout_s=30))["url"])
            token = ui.params["token"]
            base = str(ui.copy_with(query=None, path="")).rstrip("/")
            await bob.wait_event(found("alice"), timeout_s=10)
            bob_env = daemon_env(tmp_path, "bob")
            bob_fp = json.loads((await run_cli(["status", "--json"], env=bob_env)).stdout)[
                "fingerprint"
            ]
            allowed = await run_cli(["allow", bob_fp], env=daemon_env(tmp_path, "alice"))
            assert allowed.returncode == 0, allowed.stderr

            bob_ui = lan.hosts[1]
            listed = await ui_get(bob_ui, base, token, "/api/peers")
            assert listed["status"] == 200
            [row] = [p for p in json.loads(listed["body"])["peers"] if p["name"] == "alice"]
            assert row["source"] == "lan" and row["peer_id"] is None
            assert row["browse"] == f"/p/{quote(row['fingerprint'], safe='')}/browse/"
            page = await ui_get(bob_ui, base, token, "/")
            assert '<td class="source">lan</td>' in page["body"]
            folder = await ui_get(bob_ui, base, token, row["browse"] + "music/")
            assert folder["status"] == 200, folder["body"]
            assert "notes.txt" in folder["body"]
            got = await ui_get(
                bob_ui,
                base,
                token,
                row["browse"].replace("/browse/", "/download/") + "music/notes.txt",
            )
            assert got["status"] == 200 and got["body"] == "la la la\n"
            assert got["headers"]["content-disposition"].startswith("attachment")
            # the UI went the same way `get` does: the direct endpoint, then the book
            peers = json.loads((await run_cli(["peers", "--json"], env=bob_env)).stdout)
            alice_row = next(p for p in peers["peers"] if p["name"] == "alice")
            assert alice_row["route"] == "direct"
            for proc in (alice, bob):
                proc.signal(signal.SIGTERM)
                assert await proc.wait_exit(timeout_s=5) == 0


#: a page open in chromium inside a namespace: prints the peer rows (name source) once
#: live, then each time a line on stdin asks it to wait for a change to *want*
WATCH = """
import json, sys
from pathlib import Path
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from tests.browser import chromium

ROWS = "return [...document.querySelectorAll('#peers tbody tr')].map(r =>"
ROWS += " r.querySelector('.name').textContent + ' ' + r.dataset.source)"
with chromium(Path(sys.argv[2])) as driver:
    driver.get(sys.argv[1])
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "1")
    print(json.dumps(driver.execute_script(ROWS)), flush=True)
    for line in sys.stdin:
        want = json.loads(line)
        wait.until(lambda d: d.execute_script(ROWS) == want)
        print(json.dumps(driver.execute_script(ROWS)), flush=True)
"""


async def test_the_open_peer_list_follows_the_lan_live(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """In a real browser, with no reload: alice's LAN row appears once her daemon
    announces itself and goes when it says goodbye (``lan-peer-found``/``-lost``)."""
    require_netns()
    if (reason := missing_browser()) is not None:
        pytest.skip(reason)
    with two_hosts_on_a_lan() as lan, trio.fail_after(150):
        async with AsyncExitStack() as stack:
            bob = await _lan_daemon(stack, nursery, tmp_path, "bob", lan.hosts[1])
            ui = httpx.URL((await bob.wait_event(event_is("ui-ready"), timeout_s=30))["url"])
            in_bob = ["ip", "netns", "exec", lan.hosts[1]]
            watch = await trio.lowlevel.open_process(
                [*in_bob, sys.executable, "-c", WATCH, str(ui), str(tmp_path / "profile")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
            )
            assert watch.stdin is not None and watch.stdout is not None
            lines = LineReceiver(watch.stdout)
            try:
                assert json.loads(await lines.next()) == []  # live, nobody on the LAN yet
                alice = await _lan_daemon(stack, nursery, tmp_path, "alice", lan.hosts[0])
                await bob.wait_event(found("alice"), timeout_s=30)
                await watch.stdin.send_all(b'["alice lan"]\n')
                assert json.loads(await lines.next()) == ["alice lan"]
                alice.signal(signal.SIGTERM)
                assert await alice.wait_exit(timeout_s=5) == 0
                await watch.stdin.send_all(b"[]\n")
                assert json.loads(await lines.next()) == []  # bob never reached her: no book row
                await watch.stdin.aclose()
                assert await watch.wait() == 0
            finally:
                with trio.CancelScope(shield=True):
                    await reap(watch)


class LineReceiver:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream, self._buffer = stream, b""

    async def next(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(4096)
            assert chunk, "the browser's script ended early"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line
