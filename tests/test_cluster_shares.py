"""A Redis cluster of trackers attacked from outside: what one instance's
flood may cost on another (docs/INTERFACE.md, "Bounds").

Real Redis, real tracker instances on loopback, raw sockets for the links
that never read. On the code before the fix a relayed message reached its
target with the call that evicts a full link, so a flood sent to instance A
disconnected a victim linked to B; and each instance kept its own relay
budget, so a peer linked to N instances relayed N times its rate.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from flashback.tracker.capacity import record_bytes
from tests.abuse_support import big_registration, silent_watcher
from tests.test_tracker_redis import (
    _collect_coredis_garbage,  # noqa: F401  (an autouse fixture, used by import)
    needs_redis,
    open_instances,
    open_redis,
)
from tests.tracker_support import hello, open_client, open_link, receive, register, send

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning")]

TEST_TIMEOUT_S = 40
FLOOD = 2000  # 2000 x 4 KiB: more than any socket buffer holds for a link that never reads


def _request(i: int, to: str) -> dict[str, Any]:
    return {"type": "stream-request", "request_id": f"r{i}", "to": to, "path": "p" * 4000}


@needs_redis
async def test_a_flood_relayed_from_another_instance_never_evicts_its_target(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(
                redis.url,
                2,
                watcher_queue_messages=8,
                send_timeout_s=120.0,  # not reading is not what gets it dropped here
                relay_rate_per_s=100_000.0,
                relay_burst=100_000,
            ) as (one, two),
            open_client(one) as client,
            AsyncExitStack() as stack,
        ):
            mallory = await register(client, "mallory")
            victim = await register(client, "victim")
            host, port = two.address.host, two.address.port
            victim_sock = await silent_watcher(
                host,
                port,
                {"type": "hello", "peer_id": victim["peer_id"], "token": victim["token"]},
            )
            stack.callback(victim_sock.close)
            while two.tracker.hub.link_for(victim["peer_id"]) is None:  # noqa: ASYNC110
                await trio.sleep(0.01)
            ws = await stack.enter_async_context(open_link(one.ws_url))
            await hello(ws, peer=mallory)
            assert (await receive(ws))["type"] == "snapshot"
            for i in range(FLOOD):
                await send(ws, _request(i, victim["peer_id"]))
            # The first bounce says what happened to the victim: busy (it keeps
            # its link) -- not unknown_peer, which it was once evicted.
            while True:
                answer = await receive(ws, timeout_s=TEST_TIMEOUT_S)
                if answer["type"] == "stream-error":
                    break
            assert answer["code"] == "busy", answer
            assert two.tracker.hub.link_for(victim["peer_id"]) is not None


@needs_redis
async def test_a_peer_linked_to_two_instances_has_one_relay_budget(tmp_path: Path) -> None:
    burst = 5
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2, relay_rate_per_s=0.001, relay_burst=burst) as (
                one,
                two,
            ),  # one token per 1,000 s: the burst is all there is
            open_client(one) as client,
            AsyncExitStack() as stack,
        ):
            sender = await register(client, "sender")
            target = await register(client, "target")
            target_ws = await stack.enter_async_context(open_link(one.ws_url))
            await hello(target_ws, peer=target)
            assert (await receive(target_ws))["type"] == "snapshot"
            links = []
            for instance in (one, two):
                ws = await stack.enter_async_context(open_link(instance.ws_url))
                await hello(ws, peer=sender)
                assert (await receive(ws))["type"] == "snapshot"
                links.append(ws)
            for n, ws in enumerate(links):  # a burst through each instance
                for i in range(burst):
                    await send(ws, _request(n * burst + i, target["peer_id"]) | {"path": "x"})
            refused = 0
            for ws in links:
                # each link hears its refusals, then a marker says it heard them all
                await send(ws, {"type": "stream-request", "request_id": "end", "to": "nobody",
                                "path": "x"})  # fmt: skip
                while True:
                    answer = await receive(ws)
                    if answer.get("request_id") == "end":
                        break
                    if answer["type"] == "stream-error":
                        assert answer["code"] == "rate_limited", answer
                        refused += 1
            delivered = 0
            while delivered + refused < 2 * burst:
                message = await receive(target_ws)
                if message["type"] == "stream-request":
                    delivered += 1
            assert (delivered, refused) == (burst, burst)


@needs_redis
async def test_one_address_has_one_registration_budget_across_instances(tmp_path: Path) -> None:
    burst = 3
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(
                redis.url, 2, register_rate_per_s=0.001, register_burst=burst
            ) as instances,
        ):
            codes = []
            for instance in instances:
                async with open_client(instance) as client:
                    for i in range(burst):
                        body = {"name": f"n{i}", "peer_server": {"host": "127.0.0.1", "port": 1}}
                        response = await client.post("/api/peers/register", json=body)
                        codes.append(response.status_code)
            assert codes == [201] * burst + [429] * burst


@needs_redis
async def test_the_peer_list_budget_is_one_for_the_whole_cluster(tmp_path: Path) -> None:
    body = big_registration(0)
    # one big registration's bytes, as the tracker counts them (peer ids are 16 characters)
    record = record_bytes(
        "x" * 16, body["name"], body["peer_server"]["host"], 1000, body["capabilities"]
    )
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2, max_peer_list_bytes=3 * record + 100) as instances,
        ):
            codes = []
            for i in range(8):  # alternately, each once the other has seen the last one
                here, there = instances[i % 2], instances[(i + 1) % 2]
                async with open_client(here) as client:
                    response = await client.post("/api/peers/register", json=big_registration(i))
                    codes.append(response.status_code)
                    seq = (await client.get("/api/peers/list")).json()["seq"]
                await there.tracker.presence.follower.wait_for(seq)
            assert codes == [201] * 3 + [503] * 5
