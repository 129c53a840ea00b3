"""Real ``flashback tracker`` processes on one Redis: SIGKILL one, the others carry on."""

from __future__ import annotations

import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.procs import event_is, start
from tests.test_tracker_redis import (
    _collect_coredis_garbage,  # noqa: F401  (an autouse fixture, used by import)
    needs_redis,
    open_redis,
    receive_nothing,
)
from tests.tracker_support import bearer, hello, open_link, receive, register

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

TEST_TIMEOUT_S = 30
PEER_TTL_S = 2


@needs_redis
async def test_sigkill_of_one_tracker_process_the_others_carry_on(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            trio.open_nursery() as nursery,
            AsyncExitStack() as stack,
        ):
            urls: list[str] = []
            procs = []
            for i in range(3):
                proc = await stack.enter_async_context(
                    start(
                        nursery,
                        ["tracker", "--host", "127.0.0.1", "--port", "0",
                         "--database-url", redis.url],
                        env={"RELAY_PEER_TTL": str(PEER_TTL_S)},
                        name=f"tracker{i}",
                    )
                )  # fmt: skip
                ready = await proc.wait_event(event_is("tracker-ready"))
                procs.append(proc)
                urls.append(ready["url"])
            clients: list[httpx.AsyncClient] = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=u, timeout=5))
                for u in urls
            ]
            ws_urls = [u.replace("http://", "ws://") + "/api/peers/ws" for u in urls]

            linked = await register(clients[0], "linked-to-0")
            beating = await register(clients[0], "beating")
            link = await stack.enter_async_context(open_link(ws_urls[0]))
            await hello(link, peer=linked)
            await receive(link)
            watchers: list[Any] = []
            for ws_url in ws_urls[1:]:
                ws = await stack.enter_async_context(open_link(ws_url))
                await hello(ws)
                watchers.append(ws)
            snapshots = [await receive(ws) for ws in watchers]
            assert snapshots[0] == snapshots[1]
            assert len(snapshots[0]["peers"]) == 2

            procs[0].signal(signal.SIGKILL)
            assert await procs[0].wait_exit() == -signal.SIGKILL

            # The others answer; the killed one's linked peer stays until its TTL.
            listed = (await clients[1].get("/api/peers/list")).json()
            assert {p["name"] for p in listed["peers"]} == {"linked-to-0", "beating"}
            for i in range(4 * PEER_TTL_S):
                response = await clients[1 + i % 2].post(
                    "/api/peers/heartbeat", json={"peer_id": beating["peer_id"]},
                    headers=bearer(beating["token"]),
                )  # fmt: skip
                assert response.status_code == 200, response.text
                await trio.sleep(0.5)
            lefts = [await receive(ws) for ws in watchers]
            assert lefts[0] == lefts[1]
            assert (lefts[0]["type"], lefts[0]["peer_id"], lefts[0]["reason"]) == (
                "peer-left", linked["peer_id"], "expired",
            )  # fmt: skip
            assert lefts[0]["seq"] == snapshots[0]["seq"] + 1
            for ws in watchers:
                await receive_nothing(ws, 0.2)

            # Still one tracker: a registration on one reaches the other's watcher.
            late = await register(clients[2], "late")
            joined = await receive(watchers[0])
            assert (joined["seq"], joined["peer"]["peer_id"]) == (
                lefts[0]["seq"] + 1, late["peer_id"],
            )  # fmt: skip
            for proc in procs[1:]:
                proc.signal(signal.SIGTERM)
                assert await proc.wait_exit() == 0
