"""The live link (docs/INTERFACE.md §2 items 1-5) against a real tracker on loopback."""

from __future__ import annotations

from typing import Any

import trio
from trio_websocket import ConnectionClosed

from flashback.shutdown import Shutdown
from flashback.tracker.presence import LocalPresence
from tests.tracker_support import (
    bearer,
    hello,
    open_client,
    open_link,
    open_tracker,
    receive,
    register,
    registration,
    send,
    tracker_config,
)

TEST_TIMEOUT_S = 10


async def test_snapshot_then_every_change_in_seq_order() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            first = await register(client, "first")
            async with open_link(running.ws_url) as ws:
                await hello(ws)
                snapshot = await receive(ws)
                assert snapshot["type"] == "snapshot"
                assert [p["peer_id"] for p in snapshot["peers"]] == [first["peer_id"]]
                seq = snapshot["seq"]

                second = await register(client, "second")
                joined = await receive(ws)
                assert joined["type"] == "peer-joined"
                assert joined["seq"] == seq + 1
                assert joined["peer"]["peer_id"] == second["peer_id"]
                assert "token" not in joined["peer"]

                body = registration("renamed", peer_id=second["peer_id"])
                await client.post("/api/peers/register", json=body, headers=bearer(second["token"]))
                updated = await receive(ws)
                assert (updated["type"], updated["seq"]) == ("peer-updated", seq + 2)
                assert updated["peer"]["name"] == "renamed"

                await client.delete(
                    f"/api/peers/{first['peer_id']}", headers=bearer(first["token"])
                )
                left = await receive(ws)
                assert left == {
                    "type": "peer-left", "seq": seq + 3, "peer_id": first["peer_id"],
                    "reason": "left",
                }  # fmt: skip


async def test_resume_with_last_seq_gets_exactly_what_was_missed() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            seq = (await client.get("/api/peers/list")).json()["seq"]
            peers = [await register(client, f"p{i}") for i in range(5)]
            async with open_link(running.ws_url) as ws:
                await hello(ws, last_seq=seq + 2)
                missed = [await receive(ws) for _ in range(3)]
                assert [m["seq"] for m in missed] == [seq + 3, seq + 4, seq + 5]
                assert [m["peer"]["peer_id"] for m in missed] == [p["peer_id"] for p in peers[2:]]
                # Up to date: nothing is replayed, the live feed follows.
                await register(client, "live")
                assert (await receive(ws))["seq"] == seq + 6
            async with open_link(running.ws_url) as ws:
                await hello(ws, last_seq=seq + 6)
                await register(client, "next")
                assert (await receive(ws))["seq"] == seq + 7


async def test_snapshot_when_last_seq_is_too_old_or_from_the_future() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        config = tracker_config(backlog_changes=3)
        async with open_tracker(config) as running, open_client(running) as client:
            seq = (await client.get("/api/peers/list")).json()["seq"]
            for i in range(5):
                await register(client, f"p{i}")
            for last_seq in (seq, seq + 1, seq + 1000, 0):
                async with open_link(running.ws_url) as ws:
                    await hello(ws, last_seq=last_seq)
                    snapshot = await receive(ws)
                    assert snapshot["type"] == "snapshot"
                    assert snapshot["seq"] == seq + 5
                    assert len(snapshot["peers"]) == 5
            async with open_link(running.ws_url) as ws:
                await hello(ws, last_seq=seq + 2)  # seq + 3.. still held
                assert (await receive(ws))["seq"] == seq + 3


async def test_bad_messages_get_errors_and_the_link_stays_open() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_tracker() as running,
            open_client(running) as client,
            open_link(running.ws_url) as ws,
        ):
            await ws.send_message("{not json")
            assert (await receive(ws))["code"] == "invalid_json"
            await send(ws, {"type": "stream-request", "request_id": "r", "to": "p", "path": "a"})
            assert (await receive(ws))["code"] == "hello_required"
            await hello(ws)
            assert (await receive(ws))["type"] == "snapshot"
            for frame, code in [
                ("[]", "invalid_message"),
                ('{"type": "bogus"}', "unknown_type"),
                ('{"type": "hello", "last_seq": null}', "unexpected_message"),
                ('{"type": "snapshot", "seq": 1, "peers": []}', "unexpected_message"),
                ('{"type": "stream-request", "request_id": "r"}', "invalid_field"),
                ('{"type": "stream-request", "request_id": "r", "to": "x", "path": "a"}',
                 "forbidden"),
            ]:  # fmt: skip
                await ws.send_message(frame)
                reply = await receive(ws)
                assert reply["type"] == "error"
                assert reply["code"] == code, (frame, reply)
                assert reply["message"]
            await ws.send_message(b'{"type": "bogus"}')
            assert (await receive(ws))["code"] == "unknown_type"
            peer = await register(client)
            assert (await receive(ws))["peer"]["peer_id"] == peer["peer_id"]


async def test_hello_with_a_wrong_token_is_refused_with_1008() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            victim = await register(client, "victim")
            intruder = await register(client, "intruder")
            for peer, code in [
                ({"peer_id": victim["peer_id"], "token": intruder["token"]}, "unauthorized"),
                ({"peer_id": "nobody", "token": intruder["token"]}, "unknown_peer"),
            ]:
                async with open_link(running.ws_url) as ws:
                    await hello(ws, peer=peer)
                    error = await receive(ws)
                    assert (error["type"], error["code"]) == ("error", code)
                    try:
                        await receive(ws)
                    except ConnectionClosed as closed:
                        assert closed.reason is not None
                        assert closed.reason.code == 1008
                    else:
                        raise AssertionError("the link stayed open")
            assert len(running.tracker.hub) == 0


async def test_stream_relay_forwards_between_identified_peers() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            owner = await register(client, "owner")
            requester = await register(client, "requester")
            async with open_link(running.ws_url) as ows, open_link(running.ws_url) as rws:
                await hello(ows, last_seq=None, peer=owner)
                await hello(rws, last_seq=None, peer=requester)
                assert (await receive(ows))["type"] == "snapshot"
                assert (await receive(rws))["type"] == "snapshot"

                await send(rws, {"type": "stream-request", "request_id": "r1",
                                 "to": owner["peer_id"], "path": "movies/a.mkv"})  # fmt: skip
                assert await receive(ows) == {
                    "type": "stream-request", "request_id": "r1",
                    "from": requester["peer_id"], "path": "movies/a.mkv",
                }  # fmt: skip
                ready = {
                    "type": "file-stream-ready", "request_id": "r1",
                    "to": requester["peer_id"], "host": "127.0.0.1", "port": 4242,
                    "token": "stream-token", "path": "movies/a.mkv", "size": 10,
                    "expires_in": 60,
                }  # fmt: skip
                await send(ows, ready)
                forwarded = await receive(rws)
                assert forwarded == {
                    **{k: v for k, v in ready.items() if k != "to"},
                    "from": owner["peer_id"],
                }
                await send(ows, {"type": "stream-error", "request_id": "r2",
                                 "to": requester["peer_id"], "code": "not_found",
                                 "message": "no such file"})  # fmt: skip
                assert await receive(rws) == {
                    "type": "stream-error", "request_id": "r2", "from": owner["peer_id"],
                    "code": "not_found", "message": "no such file",
                }  # fmt: skip

                await send(rws, {"type": "stream-request", "request_id": "r3",
                                 "to": "offline-peer", "path": "x"})  # fmt: skip
                error = await receive(rws)
                assert error["type"] == "stream-error"
                assert (error["request_id"], error["code"]) == ("r3", "unknown_peer")
                assert "to" not in error and "from" not in error

                # A peer that left is offline even while its link is open.
                await client.delete(
                    f"/api/peers/{owner['peer_id']}", headers=bearer(owner["token"])
                )
                assert (await receive(rws))["type"] == "peer-left"
                await send(rws, {"type": "stream-request", "request_id": "r4",
                                 "to": owner["peer_id"], "path": "x"})  # fmt: skip
                assert (await receive(rws))["code"] == "unknown_peer"
            metrics = (await client.get("/metrics")).text
            assert "flashback_tracker_messages_relayed_total 3.0" in metrics


async def test_an_open_identified_link_keeps_its_peer_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On trio's clock: the TTL is 30 s and the reaper ticks every second."""
    with trio.fail_after(TEST_TIMEOUT_S * 100):
        config = tracker_config(peer_ttl_s=30.0)
        async with open_tracker(config) as running, open_client(running) as client:
            start = trio.current_time()
            linked = await register(client, "linked")
            unlinked = await register(client, "unlinked")
            async with open_link(running.ws_url) as ws:
                await hello(ws, peer=linked)
                assert (await receive(ws))["type"] == "snapshot"
                left = await receive(ws, timeout_s=60)
                assert left["type"] == "peer-left"
                assert (left["peer_id"], left["reason"]) == (unlinked["peer_id"], "expired")
                assert 30 <= trio.current_time() - start <= 31  # the TTL, to the next tick
                await trio.sleep(100)  # three TTLs more without a heartbeat
                peers = (await client.get("/api/peers/list")).json()["peers"]
                assert [p["peer_id"] for p in peers] == [linked["peer_id"]]
                closed_at = trio.current_time()
            # Link closed: the TTL starts now.
            async with open_link(running.ws_url) as watcher:
                await hello(watcher)
                assert (await receive(watcher))["type"] == "snapshot"
                gone = await receive(watcher, timeout_s=60)
                assert (gone["peer_id"], gone["reason"]) == (linked["peer_id"], "expired")
                assert 30 <= trio.current_time() - closed_at <= 31


async def test_a_slow_watcher_is_closed_without_stalling_the_others() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        config = tracker_config(watcher_queue_messages=8)
        async with open_tracker(config) as running, open_client(running) as client:
            tracker = running.tracker
            assert isinstance(tracker.presence, LocalPresence)
            registry = tracker.presence.registry
            async with (
                open_link(running.ws_url, message_queue_size=1) as slow,
                open_link(running.ws_url) as fast,
            ):
                await hello(slow)
                await hello(fast)
                await receive(slow)  # its snapshot: both links are in the hub now
                start_seq = (await receive(fast))["seq"]
                # Big updates fill the slow reader's socket buffers quickly; the
                # fast one keeps up (we let it drain between changes).
                received = 0
                changes = 0
                big = {"blob": "x" * 4000}
                while len(tracker.hub) == 2:
                    assert changes < 20_000, "the slow watcher was never evicted"
                    tracker.publish(
                        registry.register(
                            "p", name="p", host="h", port=1 + changes % 2, capabilities=big,
                            now=tracker.now(),
                        )
                    )  # fmt: skip
                    changes += 1
                    message = await receive(fast)
                    received += 1
                    assert message["seq"] == start_seq + received
                assert (
                    "flashback_tracker_watchers_evicted_total 1.0"
                    in (await client.get("/metrics")).text
                )
                # The slow one reads what reached it, then a 1013 close.
                last = None
                try:
                    while True:
                        last = (await receive(slow)).get("seq", last)
                except ConnectionClosed as closed:
                    assert closed.reason is not None
                    assert closed.reason.code == 1013
                assert last is not None and last < start_seq + changes
            # ...and resumes from where it was, missing nothing.
            async with open_link(running.ws_url) as again:
                await hello(again, last_seq=last)
                resumed = [await receive(again) for _ in range(start_seq + changes - last)]
                assert [m["seq"] for m in resumed] == list(range(last + 1, start_seq + changes + 1))


async def test_shutdown_closes_links_with_1001() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        shutdown = Shutdown()
        async with open_tracker(shutdown=shutdown) as running:
            ws_url = running.ws_url
            async with open_link(ws_url) as ws:
                await hello(ws)
                assert (await receive(ws))["type"] == "snapshot"
                shutdown.set()
                try:
                    await receive(ws)
                except ConnectionClosed as closed:
                    assert closed.reason is not None
                    assert closed.reason.code == 1001
                else:
                    raise AssertionError("the link stayed open")


async def test_a_link_without_hello_is_closed() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running:
            running.tracker.link_loops.hello_timeout_s = 0.2
            async with open_link(running.ws_url) as ws:
                try:
                    await receive(ws)
                except ConnectionClosed as closed:
                    assert closed.reason is not None
                    assert closed.reason.code == 1008
                else:
                    raise AssertionError("the link stayed open")


async def test_lone_surrogates_are_refused_not_relayed() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            peer = await register(client)
            async with open_link(running.ws_url) as ws:
                await hello(ws, peer=peer)
                assert (await receive(ws))["type"] == "snapshot"
                to = peer["peer_id"]
                frame = (
                    '{"type": "stream-request", "request_id": "r", "to": "TO", "path": "\\ud800"}'
                )
                await ws.send_message(frame.replace("TO", to))
                assert (await receive(ws))["code"] == "invalid_json"


async def test_a_changed_fingerprint_is_a_peer_updated_on_the_feed() -> None:
    old, new = "sha256:" + "01" * 32, "sha256:" + "02" * 32
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            peer = await register(client, "laptop", fingerprint=old)
            async with open_link(running.ws_url) as ws:
                await hello(ws)
                snapshot = await receive(ws)
                assert [p["fingerprint"] for p in snapshot["peers"]] == [old]
                body = registration("laptop", peer_id=peer["peer_id"], fingerprint=new)
                await client.post("/api/peers/register", json=body, headers=bearer(peer["token"]))
                updated = await receive(ws)
                assert (updated["type"], updated["seq"]) == ("peer-updated", snapshot["seq"] + 1)
                assert updated["peer"]["fingerprint"] == new


async def test_more_links_of_one_peer_are_not_more_relay_allowance() -> None:
    """The relay budget belongs to the peer id: three links share one burst of 6."""
    config = tracker_config(relay_rate_per_s=0.001, relay_burst=6)
    outcomes: list[str] = []
    all_in = trio.Event()

    async def count(ws: Any, kind: str) -> None:
        while True:
            message = await receive(ws)
            if message["type"] in ("stream-request", "stream-error"):
                outcomes.append(f"{kind}:{message.get('code', 'delivered')}")
                if len(outcomes) == 12:
                    all_in.set()

    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker(config) as running, open_client(running) as client:
            target = await register(client, "target")
            flooder = await register(client, "flooder")
            async with (
                open_link(running.ws_url) as target_ws,
                open_link(running.ws_url) as one,
                open_link(running.ws_url) as two,
                open_link(running.ws_url) as three,
                trio.open_nursery() as readers,
            ):
                await hello(target_ws, last_seq=None, peer=target)
                await receive(target_ws)
                for ws in (one, two, three):
                    await hello(ws, last_seq=None, peer=flooder)
                    await receive(ws)
                readers.start_soon(count, target_ws, "target")
                for ws in (one, two, three):
                    readers.start_soon(count, ws, "flooder")
                for n in range(4):  # 12 requests, 4 on each link
                    for ws in (one, two, three):
                        await send(ws, {"type": "stream-request", "request_id": f"r{n}",
                                        "to": target["peer_id"], "path": "x"})  # fmt: skip
                await all_in.wait()
                readers.cancel_scope.cancel()
    assert sorted(outcomes) == ["flooder:rate_limited"] * 6 + ["target:delivered"] * 6
