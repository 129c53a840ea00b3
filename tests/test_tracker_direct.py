"""The tracker's side of direct connections (§10.2, §10.3) from outside:
a real tracker on loopback, real HTTP, websockets and TCP to its tunnel port."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import pytest
import trio

from flashback.protocol.messages import Candidate
from flashback.protocol.tunnel import join_line, parse_addr_line, reflect_line
from tests.tracker_support import (
    RunningTracker,
    assert_json_error,
    bearer,
    hello,
    open_client,
    open_link,
    open_tracker,
    receive,
    register,
    send,
    tracker_config,
)

TEST_TIMEOUT_S: Final = 30
FINGERPRINT_A: Final = "sha256:" + "aa" * 32
FINGERPRINT_B: Final = "sha256:" + "bb" * 32
LAN_A: Final = {"host": "192.168.1.5", "port": 4000}
LAN_B: Final = {"host": "10.0.0.9", "port": 4100}


@asynccontextmanager
async def tunnel_tracker(**overrides: Any) -> AsyncIterator[RunningTracker]:
    async with open_tracker(tracker_config(tunnel_port=0, **overrides)) as running:
        yield running


def tunnel_port(running: RunningTracker) -> int:
    port = running.tracker.tunnel_port
    assert port is not None
    return port


async def test_the_registration_answer_names_the_tunnel_port() -> None:
    """So a daemon reflects at start, before its first invite (§10.2)."""
    with trio.fail_after(TEST_TIMEOUT_S):
        async with tunnel_tracker() as running, open_client(running) as client:
            peer = await register(client, "alice", direct=[LAN_A])
            assert peer["tunnel_port"] == tunnel_port(running)
        async with open_tracker() as running, open_client(running) as client:
            assert "tunnel_port" not in await register(client, "bob")  # no tunnel port


async def reflect(
    port: int, token: str, *, source: tuple[str, int] = ("127.0.0.1", 0)
) -> tuple[bytes, tuple[str, int]]:
    """One REFLECT from *source* (reusable, as the daemon binds its endpoint port)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    await sock.bind(source)
    await sock.connect(("127.0.0.1", port))
    local = sock.getsockname()
    stream = trio.SocketStream(sock)
    await stream.send_all(reflect_line(token))
    answer = b""
    while chunk := await stream.receive_some(256):
        answer += chunk
    await stream.aclose()
    return answer, (local[0], local[1])


async def next_of_type(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message = await receive(ws)
        if message["type"] == kind:
            return message


# -- registration and PEER (§10.2) -------------------------------------------------


async def test_registration_carries_direct_and_peer_shows_direct_and_reflexive() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with tunnel_tracker() as running, open_client(running) as client:
            nowhere = [{"host": "0.0.0.0", "port": 4000}, {"host": "ff02::1", "port": 4000}]
            peer = await register(client, "alice", direct=[LAN_A, LAN_A, *nowhere, LAN_B])
            [listed] = (await client.get("/api/peers/list")).json()["peers"]
            # duplicates dropped, and addresses that would make requesters dial themselves
            assert listed["direct"] == [LAN_A, LAN_B]
            assert listed["reflexive"] is None
            for bad in (
                [{"host": "evil.example", "port": 1}],  # names are never dialled
                [{"host": "192.168.1.5", "port": 0}],
                [LAN_A] * 2 + [{"host": f"10.0.0.{i}", "port": 1} for i in range(8)],
                {"host": "192.168.1.5", "port": 1},
            ):
                response = await client.post(
                    "/api/peers/register",
                    json={
                        "name": "x",
                        "peer_server": {"host": "127.0.0.1", "port": 1},
                        "direct": bad,
                    },
                )
                assert_json_error(response, 422)
            # a changed direct list is one peer-updated
            async with open_link(running.ws_url) as watcher:
                await hello(watcher)
                assert (await receive(watcher))["type"] == "snapshot"
                body = {"name": "alice", "peer_server": {"host": "127.0.0.1", "port": 8000},
                        "capabilities": {"stream": True}, "peer_id": peer["peer_id"],
                        "direct": [LAN_B]}  # fmt: skip
                moved = await client.post(
                    "/api/peers/register", json=body, headers=bearer(peer["token"])
                )
                assert moved.status_code == 201
                updated = await receive(watcher)
                assert updated["type"] == "peer-updated"
                assert updated["peer"]["direct"] == [LAN_B]


async def test_reflect_answers_the_source_address_and_records_it_once() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            tunnel_tracker() as running,
            open_client(running) as client,
            open_link(running.ws_url) as watcher,
        ):
            port = tunnel_port(running)
            peer = await register(client, "alice", direct=[LAN_A])
            await hello(watcher)
            assert (await receive(watcher))["type"] == "snapshot"
            answer, local = await reflect(port, peer["token"], source=("127.0.0.3", 0))
            assert answer == f"ADDR 127.0.0.3 {local[1]}\n".encode()
            assert parse_addr_line(answer[:-1]) == Candidate("127.0.0.3", local[1])
            updated = await receive(watcher)
            assert updated["type"] == "peer-updated"
            assert updated["peer"]["reflexive"] == {"host": "127.0.0.3", "port": local[1]}
            assert updated["peer"]["direct"] == [LAN_A]
            # the same address again (every 25 s, from the same port): no event at all
            for _ in range(3):
                again, _ = await reflect(port, peer["token"], source=local)
                assert again == answer
            await register(client, "bob")  # the next event is this, not a peer-updated
            assert (await receive(watcher))["type"] == "peer-joined"
            # a wrong or unknown token: refused, nothing recorded
            wrong, _ = await reflect(port, "x" * 43)
            assert wrong == b"ERR unauthorized\n"
            garbage, _ = await reflect(port, "not a token!")
            assert garbage == b"ERR bad_line\n"
            [alice] = [
                p for p in (await client.get("/api/peers/list")).json()["peers"]
                if p["name"] == "alice"
            ]  # fmt: skip
            assert alice["reflexive"] == {"host": "127.0.0.3", "port": local[1]}
            metrics = (await client.get("/metrics")).text
            assert "flashback_tracker_tunnel_reflections 4.0" in metrics
            # a re-registration keeps what was seen (the direct list did not move)
            body = {"name": "alice", "peer_server": {"host": "127.0.0.1", "port": 8000},
                    "capabilities": {"stream": True}, "peer_id": peer["peer_id"],
                    "direct": [LAN_A]}  # fmt: skip
            response = await client.post(
                "/api/peers/register", json=body, headers=bearer(peer["token"])
            )
            assert response.status_code == 201
            listed = (await client.get("/api/peers/list")).json()["peers"]
            assert [p["reflexive"] for p in listed if p["name"] == "alice"] == [
                {"host": "127.0.0.3", "port": local[1]}
            ]


async def test_a_reflect_flood_from_one_address_is_bounded_and_others_still_reflect() -> None:
    """Hundreds of REFLECT connections that never finish their line from one
    address hold only that address's share; another address still reflects."""
    with trio.fail_after(TEST_TIMEOUT_S):
        async with tunnel_tracker() as running, open_client(running) as client:
            port = tunnel_port(running)
            relay = running.tracker.tunnels
            assert relay is not None
            peer = await register(client, "alice")
            flood = []
            for _ in range(300):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"FLASHBACK-REFLECT 1 ")  # and never the rest
                flood.append(stream)
            while relay.unjoined < 64:  # noqa: ASYNC110 -- the relay accepts on its own
                await trio.sleep(0.01)
            answer, local = await reflect(port, peer["token"], source=("127.0.0.4", 0))
            assert answer == f"ADDR 127.0.0.4 {local[1]}\n".encode()
            assert relay.unjoined <= 64 + 1  # one address's share, whatever it sent
            for stream in flood:
                stream.socket.close()


async def test_reflexive_moves_are_recorded_within_a_budget_per_peer() -> None:
    """A NAT that maps every connection anew would make each REFLECT a change:
    a burst of 3 is recorded, then one per 10 s; the answer is ADDR regardless."""
    from flashback.protocol.feed import Listing
    from flashback.protocol.registry import Registry
    from flashback.tracker.direct import reflector
    from flashback.tracker.metrics import TrackerMetrics
    from flashback.tracker.presence import LocalPresence
    from flashback.tracker.security import hash_token

    now = [100.0]
    presence = LocalPresence(Registry(30.0))
    await presence.register("p", Listing("n", "h", 1), token_hash=hash_token("tok"), now=now[0])
    published: list[Any] = []
    metrics = TrackerMetrics(peers_online=lambda: 0, connections=lambda: 0, seq=lambda: 0)
    reflect_once = reflector(presence, published.extend, lambda: now[0], metrics)
    assert await reflect_once("wrong", Candidate("203.0.113.1", 1)) == "unauthorized"
    for port in range(1, 11):  # ten new mappings at once
        assert await reflect_once("tok", Candidate("203.0.113.1", port)) is None
    assert [c.peer.reflexive.port for c in published] == [1, 2, 3]
    assert await reflect_once("tok", Candidate("203.0.113.1", 3)) is None  # no move: free
    now[0] += 10.0
    assert await reflect_once("tok", Candidate("203.0.113.1", 11)) is None
    assert await reflect_once("tok", Candidate("203.0.113.1", 12)) is None
    assert [c.peer.reflexive.port for c in published] == [1, 2, 3, 11]


# -- introductions (§10.3) ----------------------------------------------------------


async def linked_pair(running: RunningTracker, client: Any, stack: Any) -> tuple[Any, ...]:
    owner = await register(client, "alice", fingerprint=FINGERPRINT_A, direct=[LAN_A])
    asker = await register(client, "bob", fingerprint=FINGERPRINT_B, direct=[LAN_B])
    own_ws = await stack.enter_async_context(open_link(running.ws_url))
    ask_ws = await stack.enter_async_context(open_link(running.ws_url))
    for ws, peer in ((own_ws, owner), (ask_ws, asker)):
        await hello(ws, peer=peer)
        assert (await receive(ws))["type"] == "snapshot"
    return owner, asker, own_ws, ask_ws


async def test_invites_carry_the_other_sides_candidates_and_fingerprint() -> None:
    from contextlib import AsyncExitStack

    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            tunnel_tracker() as running,
            open_client(running) as client,
            AsyncExitStack() as stack,
        ):
            owner, _asker, own_ws, ask_ws = await linked_pair(running, client, stack)
            port = tunnel_port(running)
            _, owner_seen = await reflect(port, owner["token"], source=("127.0.0.5", 0))
            await next_of_type(own_ws, "peer-updated")
            await next_of_type(ask_ws, "peer-updated")
            request = {"type": "tunnel-request", "request_id": "r1", "to": owner["peer_id"]}
            await send(ask_ws, request)
            to_owner = await next_of_type(own_ws, "tunnel-invite")
            to_asker = await next_of_type(ask_ws, "tunnel-invite")
            assert to_owner["candidates"] == [LAN_B]  # the requester never reflected
            assert to_owner["peer_fingerprint"] == FINGERPRINT_B
            assert to_asker["candidates"] == [LAN_A, {"host": "127.0.0.5", "port": owner_seen[1]}]
            assert to_asker["peer_fingerprint"] == FINGERPRINT_A
            assert to_owner["fingerprint"] == to_asker["fingerprint"] == FINGERPRINT_A


async def test_route_reports_count_introductions_once_and_only_from_their_sides() -> None:
    from contextlib import AsyncExitStack

    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            tunnel_tracker() as running,
            open_client(running) as client,
            AsyncExitStack() as stack,
        ):
            owner, _asker, own_ws, ask_ws = await linked_pair(running, client, stack)
            stranger = await register(client, "eve")
            eve_ws = await stack.enter_async_context(open_link(running.ws_url))
            await hello(eve_ws, peer=stranger)
            await receive(eve_ws)

            async def introduce(request_id: str) -> None:
                request = {"type": "tunnel-request", "request_id": request_id,
                           "to": owner["peer_id"]}  # fmt: skip
                await send(ask_ws, request)
                await next_of_type(own_ws, "tunnel-invite")
                await next_of_type(ask_ws, "tunnel-invite")

            async def report(ws: Any, request_id: str, route: str) -> None:
                await send(ws, {"type": "route-report", "request_id": request_id, "route": route})
                # a frame that gets an answer: the report before it was handled
                await send(ws, {"type": "hello", "last_seq": None})
                assert (await next_of_type(ws, "error"))["code"] == "unexpected_message"

            await introduce("r1")
            await introduce("r2")
            await report(eve_ws, "r1", "direct")  # a stranger's report counts nothing
            await report(eve_ws, "never", "direct")
            await report(ask_ws, "r1", "direct")
            await report(own_ws, "r1", "direct")  # the other side of the same one
            await report(own_ws, "r2", "relay")
            await report(ask_ws, "r2", "relay")
            metrics = (await client.get("/metrics")).text
            assert "flashback_tracker_introductions_total 2.0" in metrics
            assert "flashback_tracker_introductions_direct_total 1.0" in metrics


# -- one peer may not take the tunnel sessions ------------------------------------


@pytest.mark.parametrize(
    "budget",
    [
        {},  # the default relay budget: most of the flood is refused rate_limited
        {"relay_rate_per_s": 1e6, "relay_burst": 10**6},  # no budget: the fair share holds
    ],
)
async def test_one_peer_sending_1000_tunnel_requests_leaves_room_for_honest_ones(
    budget: dict[str, Any],
) -> None:
    from contextlib import AsyncExitStack

    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            tunnel_tracker(**budget) as running,
            open_client(running) as client,
            AsyncExitStack() as stack,
        ):
            mallory = await register(client, "mallory")
            accomplice = await register(client, "accomplice", fingerprint=FINGERPRINT_B)
            alice = await register(client, "alice", fingerprint=FINGERPRINT_A)
            links = {}
            for name, peer in (("m", mallory), ("acc", accomplice), ("alice", alice)):
                links[name] = await stack.enter_async_context(
                    open_link(running.ws_url, message_queue_size=4096)
                )
                await hello(links[name], peer=peer)
                assert (await receive(links[name]))["type"] == "snapshot"
            answered = trio.Event()
            outcomes: dict[str, int] = {}

            async def drain(ws: Any, count_to: int | None) -> None:
                seen = 0
                while True:
                    message = json.loads(await ws.get_message())
                    outcome = message.get("code", message["type"])
                    if count_to is not None:
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                        seen += 1
                        if seen == count_to:
                            answered.set()

            async with trio.open_nursery() as drains:
                drains.start_soon(drain, links["m"], 1000)
                drains.start_soon(drain, links["acc"], None)  # an owner that keeps up
                for i in range(1000):
                    await send(links["m"], {"type": "tunnel-request", "request_id": str(i),
                                            "to": accomplice["peer_id"]})  # fmt: skip
                await answered.wait()
                drains.cancel_scope.cancel()
            assert outcomes.get("tunnel-invite", 0) + outcomes.get("rate_limited", 0) == 1000
            relay = running.tracker.tunnels
            assert relay is not None
            assert relay.table.pending_of(mallory["peer_id"]) <= 16
            for i in range(20):  # honest requesters, each its own peer id
                honest = await register(client, f"honest{i}")
                async with open_link(running.ws_url) as ws:
                    await hello(ws, peer=honest)
                    await receive(ws)
                    await send(ws, {"type": "tunnel-request", "request_id": "h",
                                    "to": alice["peer_id"]})  # fmt: skip
                    answer = await receive(ws)
                    while not answer["type"].startswith("tunnel-"):
                        answer = await receive(ws)
                    assert answer["type"] == "tunnel-invite", answer  # never "busy"
                    assert answer["from"] == alice["peer_id"]


# -- join-phase slowloris from one address -----------------------------------------


async def test_512_silent_connections_from_one_address_do_not_stop_honest_pairings() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with tunnel_tracker() as running:
            port = tunnel_port(running)
            relay = running.tracker.tunnels
            assert relay is not None
            silent = []
            for _ in range(512):
                sock = trio.socket.socket()
                await sock.bind(("127.0.0.1", 0))
                await sock.connect(("127.0.0.1", port))
                silent.append(sock)
            while relay.unjoined < 64:  # noqa: ASYNC110 -- the relay accepts on its own
                await trio.sleep(0.01)
            for i in range(27):  # each pairing from its own address
                session = relay.invite(
                    request_id=str(i), client_peer=f"bob{i}", server_peer=f"alice{i}"
                )
                ends = []
                for role, source in (("server", f"127.0.0.{10 + i}"), ("client", "127.0.1.1")):
                    sock = trio.socket.socket()
                    await sock.bind((source, 0))
                    await sock.connect(("127.0.0.1", port))
                    stream = trio.SocketStream(sock)
                    await stream.send_all(join_line(session.keys[role]))  # type: ignore[index]  # the loop's literal roles
                    ends.append(stream)
                for stream in ends:
                    assert await stream.receive_some(3) == b"OK\n"
                await ends[0].send_all(b"ping")
                assert await ends[1].receive_some(4) == b"ping"
                for stream in ends:
                    await stream.aclose()
            assert relay.unjoined <= 64  # the silent address holds its share, no more
            for sock in silent:
                sock.close()
