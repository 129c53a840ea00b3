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


async def test_links_past_an_address_share_or_a_full_table_close_the_heaviest_oldest() -> None:
    with trio.fail_after(20):
        async with open_tracker(tracker_config()) as running, AsyncExitStack() as stack:
            tracker = running.tracker
            tracker.link_loops.links = LinkShare(tracker.hub, capacity=5, per_address=3)
            share = tracker.link_loops.links.share
            host, port = running.address.host, running.address.port

            async def link(source: str) -> trio.socket.SocketType:
                before = share.count(source)
                sock = await silent_watcher(host, port, HELLO, source=source)
                stack.callback(sock.close)
                # the tracker counts it once the hello is in (a table of ours, polled)
                while share.count(source) == before and source != "127.0.0.2":  # noqa: ASYNC110
                    await trio.sleep(0.01)
                return sock

            flood = [await link("127.0.0.2") for _ in range(4)]
            await _closed(flood[0])  # the fourth of one address closed its own oldest
            for _ in range(2):
                await link("127.0.0.3")
            assert len(share) == 5
            await link("127.0.0.4")
            await _closed(flood[1])  # the table was full: the heaviest address paid
            assert (share.count("127.0.0.2"), share.count("127.0.0.3")) == (2, 2)
            assert share.count("127.0.0.4") == 1
