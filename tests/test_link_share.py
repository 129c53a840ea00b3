"""Websocket links are a fair share per client address (a real tracker on loopback).

On the code before the fix the tracker kept any number of links from one
address: nothing closed the first link of an address that opened many.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from flashback.tracker.linkshare import LinkShare
from tests.abuse_support import silent_watcher
from tests.tracker_support import open_tracker, tracker_config

HELLO = {"type": "hello", "last_seq": None}


async def _closed(sock: trio.socket.SocketType) -> None:
    """Read until the tracker closes the connection."""
    while await sock.recv(65536):
        pass


async def test_an_address_past_its_share_closes_its_own_oldest_link_and_a_full_table_the_heaviest() -> (
    None
):
    with trio.fail_after(20):
        async with open_tracker(tracker_config()) as running, AsyncExitStack() as stack:
            tracker = running.tracker
            tracker.links = LinkShare(tracker.hub, capacity=5, per_address=3)
            host, port = running.address.host, running.address.port

            async def link(source: str) -> trio.socket.SocketType:
                sock = await silent_watcher(host, port, HELLO, source=source)
                stack.callback(sock.close)
                while len(tracker.links.share) < count[0] + 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                count[0] = len(tracker.links.share)
                return sock

            count = [0]
            flood = [await link("127.0.0.2") for _ in range(3)]
            fourth = await silent_watcher(host, port, HELLO, source="127.0.0.2")
            stack.callback(fourth.close)
            await _closed(flood[0])  # its own oldest made room
            others = [await silent_watcher(host, port, HELLO, source="127.0.0.3")
                      for _ in range(2)]  # fmt: skip
            for sock in others:
                stack.callback(sock.close)
            while len(tracker.links.share) < 5:  # noqa: ASYNC110
                await trio.sleep(0.01)
            honest = await silent_watcher(host, port, HELLO, source="127.0.0.4")
            stack.callback(honest.close)
            await _closed(flood[1])  # the table is full: the heaviest address pays
            while tracker.links.share.count("127.0.0.4") < 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert tracker.links.share.count("127.0.0.3") == 2
