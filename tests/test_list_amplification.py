"""``GET /api/peers/list`` from clients that never read: a real tracker process.

On the code before the fix every request encoded the whole list again and
held its own copy until the client read it: 48 such clients of a 16 MiB
list took the tracker from 75 to 887 MiB. Now the list is encoded once per
change (and second) and sent in chunks, out of a per-address share of an
in-flight byte budget (docs/INTERFACE.md, "Bounds").
"""

from __future__ import annotations

import contextlib
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio

from tests.abuse_support import (
    big_registration,
    queued_bytes,
    register_from,
    rss_kib,
    silent_get,
    start_tracker_proc,
)

SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
PEERS = 1000  # about 4.4 MB of peer list
CLIENTS = 48
FULL_PEERS = 3700  # more than a 16 MiB list holds


async def test_clients_that_never_read_the_list_do_not_multiply_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            tracker, url = await start_tracker_proc(stack, nursery, tmp_path, {})
            peers = await register_from(url, [big_registration(i) for i in range(PEERS)], SOURCES)
            assert all(r.status_code == 201 for r in peers)
            async with httpx.AsyncClient(timeout=10) as http:
                listing = await http.get(url + "/api/peers/list")
            list_kib = len(listing.content) // 1024
            assert len(listing.json()["peers"]) == PEERS
            before = rss_kib(tracker.process.pid)
            host, port = url.removeprefix("http://").split(":")
            sockets = [await silent_get(host, int(port), "/api/peers/list") for _ in range(CLIENTS)]
            try:
                # every client has the head of its answer: the tracker has built it
                # (polling sockets of our own: there is no event to wait on)
                while any(queued_bytes(s) == 0 for s in sockets):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                grown_kib = rss_kib(tracker.process.pid) - before
                print(f"list {list_kib} KiB, {CLIENTS} silent clients: RSS +{grown_kib} KiB")
                # the old code held one encoding per client (48 x 4.4 MB = 211 MB, more)
                assert grown_kib < CLIENTS * list_kib // 4, f"RSS grew by {grown_kib} KiB"
                async with httpx.AsyncClient(timeout=10) as http:
                    again = await http.get(url + "/api/peers/list")
                assert again.status_code == 200 and len(again.json()["peers"]) == PEERS
            finally:
                for sock in sockets:
                    sock.close()


async def test_lists_in_flight_are_a_share_per_address_and_the_oldest_is_cut(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """One address's second unread list cuts its first (a quarter of the
    in-flight budget is one list here); another address is untouched. The
    list is 16 MiB, more than the kernel's socket buffers take."""
    env = {"RELAY_MAX_SEND_BYTES": str(4 * 17_000_000)}
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker_proc(stack, nursery, tmp_path, env)
            bodies = [big_registration(i) for i in range(FULL_PEERS)]
            peers = await register_from(url, bodies, SOURCES)
            assert all(r.status_code in (201, 503) for r in peers)  # until the list is full
            async with httpx.AsyncClient(timeout=10) as http:
                list_bytes = len((await http.get(url + "/api/peers/list")).content)
            host, port = url.removeprefix("http://").split(":")
            first = await silent_get(host, int(port), "/api/peers/list", source="127.0.0.2")
            other = await silent_get(host, int(port), "/api/peers/list", source="127.0.0.3")
            try:
                while queued_bytes(first) == 0:  # noqa: ASYNC110 -- our own socket, polled
                    await trio.sleep(0.05)
                second = await silent_get(host, int(port), "/api/peers/list", source="127.0.0.2")
                try:
                    # the first ends early: what came is less than its list
                    got = 0
                    with contextlib.suppress(ConnectionResetError):
                        while chunk := await first.recv(1 << 20):
                            got += len(chunk)
                    assert 0 < got < list_bytes
                    assert queued_bytes(other) > 0
                finally:
                    second.close()
            finally:
                first.close()
                other.close()
