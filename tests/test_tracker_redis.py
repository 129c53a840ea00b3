"""Several trackers on one real Redis behave as one (docs/INTERFACE.md §2).

Each test starts its own ``redis-server`` on a free loopback port with its
own directory and no persistence, and kills it by pid. Real sockets and real
time (short TTLs), so no autojump clock; every test is bounded.
"""

from __future__ import annotations

import gc
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

import pytest
import trio
from trio_websocket import ConnectionClosed

from flashback.errors import ConfigError
from flashback.tracker.serve import serve_tracker, serve_tracker_instance
from flashback.tracker.service import Tracker
from flashback.tracker.store import check_database_url
from tests.tracker_support import (
    Endpoint,
    RunningTracker,
    assert_json_error,
    bearer,
    hello,
    open_client,
    open_link,
    receive,
    register,
    send,
    tracker_config,
)

# coredis 6.9 builds memory streams for every connection attempt and never
# closes those of attempts that fail (Redis down): ResourceWarnings at garbage
# collection, not ours to fix. Ignored here, and collected before each test ends
# (the fixture below) so they cannot surface in a later module.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(autouse=True)
def _collect_coredis_garbage() -> Iterator[None]:
    yield
    gc.collect()


REDIS_SERVER: Final = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server not installed (Debian package: redis-server)"
)
TEST_TIMEOUT_S: Final = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server of our own: loopback, its own dir, nothing saved."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        self.process = await trio.lowlevel.open_process(
            [REDIS_SERVER, *where, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.fail_after(5):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def kill(self) -> None:
        if self.process is not None:
            with trio.CancelScope(shield=True):
                if self.process.returncode is None:
                    self.process.kill()
                await self.process.wait()
            self.process = None


@asynccontextmanager
async def open_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@asynccontextmanager
async def open_instance(url: str, **overrides: Any) -> AsyncIterator[RunningTracker]:
    """One tracker of the cluster, in this process, on its own port."""
    from flashback.tracker.redis import open_redis_backend

    config = tracker_config(database_url=url, **overrides)
    async with (
        open_redis_backend(url, config) as (presence, identities),
        trio.open_nursery() as nursery,
    ):
        tracker = Tracker(config, identities, presence)
        address = await nursery.start(partial(serve_tracker_instance, tracker))
        yield RunningTracker(address, tracker)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_instances(url: str, count: int, **overrides: Any) -> AsyncIterator[list[Any]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(open_instance(url, **overrides)) for _ in range(count)
        ]


async def receive_nothing(ws: Any, within_s: float) -> None:
    """Proves a negative: no message in *within_s*. Nothing can signal "nothing
    more comes", so this is a short window, never a wait for something."""
    with trio.move_on_after(within_s):
        message = await ws.get_message()
        raise AssertionError(f"unexpected message {message}")


@needs_redis
def test_redis_urls_are_accepted() -> None:
    assert check_database_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_redis_url_without_coredis_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "coredis", None)
    with pytest.raises(ConfigError, match=r"flashback\[redis\]"):
        check_database_url("redis://localhost:6379/0")


# -- instances on one Redis --------------------------------------------------------


@needs_redis
async def test_two_instances_share_peers_seq_and_feed(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2) as (one, two),
            open_client(one) as client1,
            open_client(two) as client2,
            open_link(one.ws_url) as watcher1,
            open_link(two.ws_url) as watcher2,
        ):
            await hello(watcher1)
            await hello(watcher2)
            snap1, snap2 = await receive(watcher1), await receive(watcher2)
            assert snap1 == snap2
            assert snap1["type"] == "snapshot"

            peer = await register(client1, "laptop")
            listed = (await client2.get("/api/peers/list")).json()
            assert [p["peer_id"] for p in listed["peers"]] == [peer["peer_id"]]
            assert listed["seq"] == snap1["seq"] + 1
            joined1, joined2 = await receive(watcher1), await receive(watcher2)
            assert joined1 == joined2
            assert (joined2["type"], joined2["seq"]) == ("peer-joined", listed["seq"])

            response = await client2.post(
                "/api/peers/heartbeat", json={"peer_id": peer["peer_id"]},
                headers=bearer(peer["token"]),
            )  # fmt: skip
            assert response.status_code == 200
            wrong = await client2.post(
                "/api/peers/heartbeat", json={"peer_id": peer["peer_id"]}, headers=bearer("nope")
            )
            assert_json_error(wrong, 401, "unauthorized")

            # Coming back under the same identity through the other instance.
            again = await client2.post(
                "/api/peers/register",
                json={"name": "renamed", "peer_server": {"host": "127.0.0.1", "port": 8000},
                      "capabilities": {"stream": True}, "peer_id": peer["peer_id"]},
                headers=bearer(peer["token"]),
            )  # fmt: skip
            assert again.status_code == 201, again.text
            updated1, updated2 = await receive(watcher1), await receive(watcher2)
            assert updated1 == updated2
            assert (updated1["type"], updated1["seq"]) == ("peer-updated", listed["seq"] + 1)

            deleted = await client2.delete(
                f"/api/peers/{peer['peer_id']}", headers=bearer(peer["token"])
            )
            assert deleted.status_code == 204
            left1, left2 = await receive(watcher1), await receive(watcher2)
            assert left1 == left2 == {
                "type": "peer-left", "seq": listed["seq"] + 2, "peer_id": peer["peer_id"],
                "reason": "left",
            }  # fmt: skip
            gone = await client1.post(
                "/api/peers/heartbeat", json={"peer_id": peer["peer_id"]},
                headers=bearer(peer["token"]),
            )  # fmt: skip
            assert_json_error(gone, 404, "unknown_peer")
            status = (await client2.get("/api/relay/status")).json()
            assert (status["peers_online"], status["connections"]) == (0, 1)


@needs_redis
async def test_heartbeats_anywhere_and_exactly_one_expiry_across_three(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 3, peer_ttl_s=1.0) as instances,
            AsyncExitStack() as stack,
        ):
            clients = [await stack.enter_async_context(open_client(i)) for i in instances]
            watchers = [await stack.enter_async_context(open_link(i.ws_url)) for i in instances]
            for ws in watchers:
                await hello(ws)
                await receive(ws)
            kept = await register(clients[0], "kept")
            dropped = await register(clients[0], "dropped")
            for ws in watchers:
                await receive(ws)
                await receive(ws)
            # "kept" heartbeats through the other two instances for 2.5 TTLs.
            for i in range(10):
                response = await clients[1 + i % 2].post(
                    "/api/peers/heartbeat", json={"peer_id": kept["peer_id"]},
                    headers=bearer(kept["token"]),
                )  # fmt: skip
                assert response.status_code == 200, response.text
                await trio.sleep(0.25)
            # Only "dropped" expired, once: one peer-left, same seq everywhere.
            lefts = [await receive(ws) for ws in watchers]
            assert lefts[0]["peer_id"] == dropped["peer_id"]
            assert lefts[0]["reason"] == "expired"
            assert lefts == [lefts[0]] * 3
            for ws in watchers:
                await receive_nothing(ws, 0.1)
            listed = (await clients[2].get("/api/peers/list")).json()
            assert [p["peer_id"] for p in listed["peers"]] == [kept["peer_id"]]
            metrics = [(await c.get("/metrics")).text for c in clients]
            expiries = sum(
                float(line.split()[-1])
                for text in metrics
                for line in text.splitlines()
                if line.startswith("flashback_tracker_expiries_total")
            )
            assert expiries == 1.0
            # Now "kept" stops: it expires too, once.
            lefts = [await receive(ws) for ws in watchers]
            assert lefts == [lefts[0]] * 3
            assert (lefts[0]["peer_id"], lefts[0]["seq"]) == (kept["peer_id"], listed["seq"] + 1)
            await receive_nothing(watchers[0], 0.5)


@needs_redis
async def test_a_linked_peer_stays_while_its_link_is_open(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2, peer_ttl_s=0.5) as (one, two),
            open_client(one) as client,
        ):
            peer = await register(client, "linked")
            async with open_link(two.ws_url) as link:
                await hello(link, peer=peer)
                await receive(link)
                # proves a negative (the link alone keeps it): three real TTLs pass
                # with no heartbeat; the other instance's sweeps would have dropped it
                await trio.sleep(1.5)
                listed = (await client.get("/api/peers/list")).json()
                assert [p["peer_id"] for p in listed["peers"]] == [peer["peer_id"]]
            with trio.fail_after(5):
                while (await client.get("/api/peers/list")).json()["peers"]:  # noqa: ASYNC110
                    await trio.sleep(0.1)


@needs_redis
async def test_resume_by_last_seq_on_another_instance_misses_nothing(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2) as (one, two),
            open_client(one) as client,
        ):
            async with open_link(one.ws_url) as ws:
                await hello(ws)
                seq = (await receive(ws))["seq"]
                for i in range(3):
                    await register(client, f"p{i}")
                seen = [await receive(ws) for _ in range(2)]
                assert [m["seq"] for m in seen] == [seq + 1, seq + 2]
            peers = [await register(client, f"q{i}") for i in range(3)]
            async with open_link(two.ws_url) as ws:
                await hello(ws, last_seq=seq + 2)
                missed = [await receive(ws) for _ in range(4)]
                assert [m["seq"] for m in missed] == [seq + 3, seq + 4, seq + 5, seq + 6]
                assert [m["peer"]["peer_id"] for m in missed[1:]] == [p["peer_id"] for p in peers]
                await register(client, "live")
                assert (await receive(ws))["seq"] == seq + 7
            # A last_seq this Redis never handed out gets a snapshot.
            async with open_link(two.ws_url) as ws:
                await hello(ws, last_seq=seq + 1000)
                snapshot = await receive(ws)
                assert (snapshot["type"], snapshot["seq"]) == ("snapshot", seq + 7)
                assert len(snapshot["peers"]) == 7


@needs_redis
async def test_stream_messages_are_relayed_between_instances(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2) as (one, two),
            open_client(one) as client,
        ):
            asker = await register(client, "asker")
            owner = await register(client, "owner")
            async with open_link(one.ws_url) as ask_ws, open_link(two.ws_url) as own_ws:
                await hello(ask_ws, peer=asker)
                await hello(own_ws, peer=owner)
                await receive(ask_ws)
                await receive(own_ws)
                await send(ask_ws, {"type": "stream-request", "request_id": "r1",
                                    "to": owner["peer_id"], "path": "/a.bin"})  # fmt: skip
                request = await receive(own_ws)
                assert request == {"type": "stream-request", "request_id": "r1",
                                   "from": asker["peer_id"], "path": "/a.bin"}  # fmt: skip
                ready = {
                    "type": "file-stream-ready", "request_id": "r1", "to": asker["peer_id"],
                    "host": "127.0.0.1", "port": 9000, "token": "t", "path": "/a.bin",
                    "size": 10, "expires_in": 60,
                }  # fmt: skip
                await send(own_ws, ready)
                answer = await receive(ask_ws)
                del ready["to"]
                assert answer == {**ready, "from": owner["peer_id"]}
                # To a peer with no link anywhere: unknown_peer back to the asker.
                await send(ask_ws, {"type": "stream-request", "request_id": "r2",
                                    "to": "nobody", "path": "/"})  # fmt: skip
                error = await receive(ask_ws)
                assert (error["type"], error["code"], error["request_id"]) == (
                    "stream-error", "unknown_peer", "r2",
                )  # fmt: skip
            # The owner's link is gone: a relay routed to its old instance bounces.
            async with open_link(one.ws_url) as ask_ws:
                await hello(ask_ws, peer=asker)
                await receive(ask_ws)
                await send(ask_ws, {"type": "stream-request", "request_id": "r3",
                                    "to": owner["peer_id"], "path": "/"})  # fmt: skip
                error = await receive(ask_ws)
                assert (error["type"], error["code"], error["request_id"]) == (
                    "stream-error", "unknown_peer", "r3",
                )  # fmt: skip


@needs_redis
async def test_redis_restart_503_then_instances_recover_without_restarting(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_redis(tmp_path) as redis, open_instances(redis.url, 2) as (one, two):
            async with (
                open_client(one) as client1,
                open_client(two) as client2,
                open_link(two.ws_url) as watcher,
            ):
                peer = await register(client1, "before")
                await hello(watcher)
                before = (await receive(watcher))["seq"]

                await redis.kill()
                for client in (client1, client2):
                    started = trio.current_time()
                    assert_json_error(
                        await client.get("/api/peers/list"), 503, "backend_unavailable"
                    )
                    response = await client.post(
                        "/api/peers/heartbeat", json={"peer_id": peer["peer_id"]},
                        headers=bearer(peer["token"]),
                    )  # fmt: skip
                    assert_json_error(response, 503, "backend_unavailable")
                    assert trio.current_time() - started < 5
                # The watcher's websocket stays open meanwhile.
                await receive_nothing(watcher, 0.5)

                await redis.start()  # same port, no data: the state is gone
                # The instance notices, reloads, and asks its watchers to reconnect.
                with pytest.raises(ConnectionClosed) as closed:
                    await receive(watcher)
                assert closed.value.reason is not None
                assert closed.value.reason.code == 1013

                again = await register(client2, "after")
                for client in (client1, client2):
                    listed = (await client.get("/api/peers/list")).json()
                    assert [p["peer_id"] for p in listed["peers"]] == [again["peer_id"]]
                    assert listed["seq"] > before  # never backwards
            async with open_link(one.ws_url) as ws:
                await hello(ws, last_seq=before)
                snapshot = await receive(ws)
                assert snapshot["type"] == "snapshot"
                assert snapshot["seq"] > before


@needs_redis
async def test_serve_tracker_opens_its_own_redis_and_starts_while_redis_is_down(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        redis = RedisServer(tmp_path)  # not started yet
        config = tracker_config(database_url=redis.url)
        try:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(partial(serve_tracker, config))
                running = Endpoint(address)
                async with open_client(running) as client:
                    assert_json_error(
                        await client.get("/api/peers/list"), 503, "backend_unavailable"
                    )
                    async with open_link(running.ws_url) as ws:
                        await hello(ws)
                        error = await receive(ws)
                        assert (error["type"], error["code"]) == ("error", "backend_unavailable")
                    await redis.start()
                    with trio.fail_after(5):
                        while (await client.get("/api/peers/list")).status_code != 200:  # noqa: ASYNC110
                            await trio.sleep(0.1)
                    await register(client, "late")
                    async with open_link(running.ws_url) as ws:
                        await hello(ws)
                        snapshot = await receive(ws)
                        assert [p["name"] for p in snapshot["peers"]] == ["late"]
                nursery.cancel_scope.cancel()
        finally:
            await redis.kill()


@needs_redis
async def test_a_changed_fingerprint_is_one_peer_updated_on_every_instance(
    tmp_path: Path,
) -> None:
    old, new = "sha256:" + "01" * 32, "sha256:" + "02" * 32
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2) as (one, two),
            open_client(one) as client1,
            open_client(two) as client2,
            open_link(two.ws_url) as watcher,
        ):
            await hello(watcher)
            assert (await receive(watcher))["type"] == "snapshot"
            peer = await register(client1, "laptop", fingerprint=old)
            joined = await receive(watcher)
            assert joined["peer"]["fingerprint"] == old
            listed = (await client2.get("/api/peers/list")).json()
            assert [p["fingerprint"] for p in listed["peers"]] == [old]
            body = {"name": "laptop", "peer_server": {"host": "127.0.0.1", "port": 8000},
                    "capabilities": {"stream": True}, "peer_id": peer["peer_id"],
                    "fingerprint": old}  # fmt: skip
            same = await client2.post(
                "/api/peers/register", json=body, headers=bearer(peer["token"])
            )
            assert same.status_code == 201
            assert (await client1.get("/api/peers/list")).json()["seq"] == listed["seq"]
            body["fingerprint"] = new
            changed = await client2.post(
                "/api/peers/register", json=body, headers=bearer(peer["token"])
            )
            assert changed.status_code == 201
            updated = await receive(watcher)
            assert (updated["type"], updated["seq"]) == ("peer-updated", listed["seq"] + 1)
            assert updated["peer"]["fingerprint"] == new
            after = (await client1.get("/api/peers/list")).json()
            assert [p["fingerprint"] for p in after["peers"]] == [new]


@needs_redis
async def test_a_tunnel_pairs_peers_linked_to_different_instances(tmp_path: Path) -> None:
    """The session lives where it was asked for; the owner's invite crosses Redis."""
    from flashback.protocol.tunnel import join_line

    fingerprint = "sha256:" + "ab" * 32
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2, tunnel_port=0) as (one, two),
            open_client(one) as client,
        ):
            asker = await register(client, "asker")
            owner = await register(client, "owner", fingerprint=fingerprint)
            async with open_link(one.ws_url) as ask_ws, open_link(two.ws_url) as own_ws:
                await hello(ask_ws, peer=asker)
                await hello(own_ws, peer=owner)
                await receive(ask_ws)
                await receive(own_ws)
                await send(ask_ws, {"type": "tunnel-request", "request_id": "t1",
                                    "to": owner["peer_id"]})  # fmt: skip
                to_owner = await receive(own_ws)
                to_asker = await receive(ask_ws)
                assert to_owner["type"] == to_asker["type"] == "tunnel-invite"
                assert (to_owner["role"], to_owner["from"]) == ("server", asker["peer_id"])
                assert (to_asker["role"], to_asker["from"]) == ("client", owner["peer_id"])
                assert to_owner["fingerprint"] == to_asker["fingerprint"] == fingerprint
                # both name the instance that holds the session
                assert to_owner["port"] == to_asker["port"] == one.tracker.tunnel_port
                assert to_owner["key"] != to_asker["key"]
                streams = []
                for invite in (to_owner, to_asker):
                    stream = await trio.open_tcp_stream("127.0.0.1", invite["port"])
                    await stream.send_all(join_line(invite["key"]))
                    streams.append(stream)
                for stream in streams:
                    assert await stream.receive_some(3) == b"OK\n"
                await streams[1].send_all(b"through one")
                assert await streams[0].receive_some(64) == b"through one"
                for stream in streams:
                    await stream.aclose()


@needs_redis
async def test_an_owners_decline_crosses_to_the_requesters_instance(tmp_path: Path) -> None:
    """The owner is linked to two, the session lives on one: the decline still ends it
    and the requester hears it from the owner; a peer that was not invited is ignored."""
    fingerprint = "sha256:" + "cd" * 32
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2, tunnel_port=0) as (one, two),
            open_client(one) as client,
        ):
            asker = await register(client, "asker")
            owner = await register(client, "owner", fingerprint=fingerprint)
            stranger = await register(client, "stranger")
            async with (
                open_link(one.ws_url) as ask_ws,
                open_link(two.ws_url) as own_ws,
                open_link(two.ws_url) as stranger_ws,
            ):
                for ws, peer in ((ask_ws, asker), (own_ws, owner), (stranger_ws, stranger)):
                    await hello(ws, peer=peer)
                    await receive(ws)
                await send(ask_ws, {"type": "tunnel-request", "request_id": "t2",
                                    "to": owner["peer_id"]})  # fmt: skip
                assert (await receive(own_ws))["type"] == "tunnel-invite"
                assert (await receive(ask_ws))["type"] == "tunnel-invite"
                decline = {"type": "tunnel-error", "request_id": "t2", "to": asker["peer_id"],
                           "code": "refused", "message": "not now"}  # fmt: skip
                await send(stranger_ws, decline)  # not invited: must not reach the asker
                await send(own_ws, decline)
                heard = await receive(ask_ws)
                assert heard["type"] == "tunnel-error" and heard["code"] == "refused"
                assert heard["from"] == owner["peer_id"]  # the owner's, not the stranger's
                assert one.tracker.tunnels is not None
                assert one.tracker.tunnels.table.find("t2", asker["peer_id"]) is None  # ended


@needs_redis
async def test_a_remote_owner_dials_where_the_server_says_never_the_host_header(
    tmp_path: Path,
) -> None:
    """The requester's websocket ``Host`` must not name where an owner linked
    to another instance dials (it would point owners anywhere): the bind address (or
    RELAY_TUNNEL_ADVERTISE); with neither, ``disabled`` and why."""
    fingerprint = "sha256:" + "ef" * 32
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2, tunnel_port=0) as (one, two),
            open_client(one) as client,
        ):
            asker = await register(client, "asker")
            owner = await register(client, "owner", fingerprint=fingerprint)
            # the requester names another host in its Host header
            forged = one.ws_url.replace("127.0.0.1", "localhost", 1)
            async with open_link(forged) as ask_ws, open_link(two.ws_url) as own_ws:
                await hello(ask_ws, peer=asker)
                await hello(own_ws, peer=owner)
                await receive(ask_ws)
                await receive(own_ws)
                await send(ask_ws, {"type": "tunnel-request", "request_id": "t8",
                                    "to": owner["peer_id"]})  # fmt: skip
                to_owner = await receive(own_ws)
                to_asker = await receive(ask_ws)
                assert to_owner["type"] == "tunnel-invite"
                assert to_owner["host"] == "127.0.0.1"  # this instance's bind address
                assert to_asker["host"] == "localhost"  # the requester's own way here
        async with (
            open_redis(tmp_path) as redis,
            open_instance(redis.url, tunnel_port=0, host="0.0.0.0") as wild,
            open_instance(redis.url, tunnel_port=0) as other,
            open_client(other) as client,
        ):
            asker = await register(client, "asker")
            owner = await register(client, "owner", fingerprint=fingerprint)
            wild_url = wild.ws_url.replace("0.0.0.0", "127.0.0.1", 1)
            async with open_link(wild_url) as ask_ws, open_link(other.ws_url) as own_ws:
                await hello(ask_ws, peer=asker)
                await hello(own_ws, peer=owner)
                await receive(ask_ws)
                await receive(own_ws)
                await send(ask_ws, {"type": "tunnel-request", "request_id": "t9",
                                    "to": owner["peer_id"]})  # fmt: skip
                refused = await receive(ask_ws)
                assert (refused["type"], refused["code"]) == ("tunnel-error", "disabled")
                assert "RELAY_TUNNEL_ADVERTISE" in refused["message"]
                await receive_nothing(own_ws, 0.3)  # no invite went out


@needs_redis
async def test_a_reflection_on_one_instance_is_one_peer_updated_on_every_instance(
    tmp_path: Path,
) -> None:
    from flashback.protocol.tunnel import reflect_line

    async def reflect(port: int, token: str, source: tuple[str, int]) -> bytes:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(source)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        await stream.send_all(reflect_line(token))
        answer = b""
        while chunk := await stream.receive_some(256):
            answer += chunk
        await stream.aclose()
        return answer

    direct = [{"host": "192.168.7.7", "port": 4444}]
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_redis(tmp_path) as redis,
            open_instances(redis.url, 2, tunnel_port=0) as (one, two),
            open_client(one) as client,
            open_link(one.ws_url) as watcher,
        ):
            await hello(watcher)
            assert (await receive(watcher))["type"] == "snapshot"
            peer = await register(client, "alice", direct=direct)
            assert (await receive(watcher))["peer"]["direct"] == direct
            port = two.tracker.tunnel_port
            assert port is not None
            source = ("127.0.0.6", free_port())
            assert await reflect(port, peer["token"], source) == (
                f"ADDR 127.0.0.6 {source[1]}\n".encode()
            )
            updated = await receive(watcher)
            assert updated["type"] == "peer-updated"
            assert updated["peer"]["reflexive"] == {"host": "127.0.0.6", "port": source[1]}
            assert updated["peer"]["direct"] == direct
            assert await reflect(port, peer["token"], source) == (
                f"ADDR 127.0.0.6 {source[1]}\n".encode()
            )
            assert await reflect(port, "y" * 43, ("127.0.0.1", 0)) == b"ERR unauthorized\n"
            # a re-registration on the other instance keeps it (same direct list)
            body = {"name": "alice", "peer_server": {"host": "127.0.0.1", "port": 8000},
                    "capabilities": {"stream": True}, "peer_id": peer["peer_id"],
                    "direct": direct}  # fmt: skip
            again = await client.post(
                "/api/peers/register", json=body, headers=bearer(peer["token"])
            )
            assert again.status_code == 201
            await register(client, "bob")  # the next event: no update came in between
            assert (await receive(watcher))["type"] == "peer-joined"
            listed = (await client.get("/api/peers/list")).json()["peers"]
            [alice] = [p for p in listed if p["name"] == "alice"]
            assert alice["reflexive"] == {"host": "127.0.0.6", "port": source[1]}
            # after it left, its token reflects nothing
            gone = await client.delete(
                f"/api/peers/{peer['peer_id']}", headers=bearer(peer["token"])
            )
            assert gone.status_code in (200, 204)
            assert await reflect(port, peer["token"], ("127.0.0.1", 0)) == b"ERR unauthorized\n"
