"""The UI of a daemon with no tracker: a LAN peer listed by its source and browsed,
viewed and downloaded through its real direct endpoint (§12), between real daemons
in network namespaces."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

from flashback.ui.auth import COOKIE_NAME
from tests.netns import require_netns, two_hosts_on_a_lan
from tests.procs import daemon_env, event_is, run_cli
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
