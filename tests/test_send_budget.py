"""The websocket send budget against watchers that never read: a real tracker.

On the code before the fix 17 silent anonymous watchers spent the global
budget and every new honest link was closed 1013 before its snapshot: the
budget refused the newcomer. Now each address has a share of it and a full
budget ends the heaviest address's longest-blocked link (docs/INTERFACE.md,
"Bounds") -- its socket is shut, so its frame's memory is back at once.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import trio

from flashback.tracker.capacity import record_bytes
from tests.abuse_support import (
    BIG_CAPABILITIES,
    big_registration,
    probe,
    register_from,
    rss_kib,
    silent_watcher,
    start_tracker_proc,
)
from tests.tracker_support import hello, open_link, receive

SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
PEERS = 150
SILENT = 17
HONEST = 15


async def test_silent_watchers_cannot_spend_the_send_budget_of_honest_links(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    body = big_registration(0)
    server = body["peer_server"]
    record = record_bytes("x" * 16, body["name"], server["host"], server["port"], BIG_CAPABILITIES)
    env = {
        "RELAY_MAX_PEER_LIST_BYTES": "2000000",
        # room for six snapshots of 150 big peers, not seven
        "RELAY_MAX_SEND_BYTES": str(int(6.5 * PEERS * record)),
        "RELAY_SEND_TIMEOUT": "120",  # the kernel does not rescue anyone during the test
    }
    with trio.fail_after(40):
        async with AsyncExitStack() as stack:
            tracker, url = await start_tracker_proc(stack, nursery, tmp_path, env)
            peers = await register_from(url, [big_registration(i) for i in range(PEERS)], SOURCES)
            assert all(r.status_code == 201 for r in peers)
            before = rss_kib(tracker.process.pid)
            host, port = url.removeprefix("http://").split(":")
            silent = []
            for i in range(SILENT):  # each from its own address: no per-address rule helps
                sock = await silent_watcher(
                    host, int(port), {"type": "hello", "last_seq": None}, source=f"127.0.0.{10 + i}"
                )
                stack.callback(sock.close)
                silent.append(sock)
            ws_url = url.replace("http://", "ws://") + "/api/peers/ws"
            for _ in range(HONEST):
                async with open_link(ws_url) as ws:
                    await hello(ws)
                    snapshot = await receive(ws, timeout_s=30)
                    assert snapshot["type"] == "snapshot" and len(snapshot["peers"]) == PEERS
            await probe(url)
            # six snapshots fit the budget: each later link cut the one blocked
            # longest, so the oldest eleven silent ones are gone (reset by the tracker)
            for sock in silent[: SILENT - 6]:
                await _cut(sock)
            grown_kib = rss_kib(tracker.process.pid) - before
            print(f"RSS +{grown_kib} KiB")
            assert grown_kib < 128 * 1024


async def _cut(sock: trio.socket.SocketType) -> None:
    """Read what the tracker sent until it reset or closed the connection."""
    try:
        while await sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
