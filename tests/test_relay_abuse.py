"""Issue 10, relays and daemons: a registered peer abusing a victim daemon.

Real tracker and daemon processes; the attacker is a registered peer with
its own websocket. On the code before the fix the victim was evicted from
the tracker by a relay flood and printed the attacker's file-stream-ready
messages, one peer could take all 16 stream ports, and a daemon could not
sync with a tracker full of large peers (the snapshot outgrew its frame).
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio

from flashback.errors import BackendUnavailable
from flashback.protocol.messages import MAX_CANDIDATES, MAX_SNAPSHOT_BYTES, Candidate
from flashback.tracker.validate import RegisterBody
from tests.abuse_support import BIG_CAPABILITIES, LONG_HOST, probe, start_tracker_proc
from tests.procs import daemon_env, run_cli
from tests.test_daemon_system import joined, start_daemon
from tests.tracker_support import open_link, open_tracker, receive, send, tracker_config

FAST_TRACKER = {"RELAY_HEARTBEAT_INTERVAL": "1", "RELAY_PEER_TTL": "5"}


async def _attacker(stack: AsyncExitStack, url: str) -> tuple[dict[str, Any], Any, str]:
    """A registered peer with a link; returns its identity, the link and the victim's id."""
    async with httpx.AsyncClient(timeout=5) as http:
        body = {"name": "mallory", "peer_server": {"host": "127.0.0.1", "port": 9}}
        response = await http.post(url + "/api/peers/register", json=body)
    assert response.status_code == 201, response.text
    me = response.json()
    ws = await stack.enter_async_context(
        open_link(url.replace("http://", "ws://") + "/api/peers/ws", message_queue_size=0)
    )
    await send(ws, {"type": "hello", "peer_id": me["peer_id"], "token": me["token"]})
    snapshot = await receive(ws)
    assert snapshot["type"] == "snapshot"
    victim = next(p["peer_id"] for p in snapshot["peers"] if p["name"] == "victim")
    return me, ws, victim


async def test_a_relay_flood_costs_the_sender_not_the_victim(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    env = {**FAST_TRACKER, "RELAY_MESSAGE_RATE": "5", "RELAY_MESSAGE_BURST": "10"}
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker_proc(stack, nursery, tmp_path, env)
            victim = await start_daemon(
                stack, nursery, tmp_path, "victim", url, {"film.bin": b"x" * 1000}
            )
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("victim"))
            mallory, ws, victim_id = await _attacker(stack, url)
            seen = len(victim.events)
            for i in range(300):
                await send(
                    ws,
                    {
                        "type": "stream-request",
                        "request_id": f"r{i}",
                        "to": victim_id,
                        "path": "nope",
                    },
                )
                await send(
                    ws,
                    {
                        "type": "file-stream-ready",
                        "request_id": f"f{i}",
                        "to": victim_id,
                        "host": "127.0.0.1",
                        "port": 9,
                        "token": "t",
                        "path": "film.bin",
                        "size": 1,
                        "expires_in": 60,
                    },
                )
            # the victim still serves an honest peer through the tracker
            out = tmp_path / "film.bin"
            result = await run_cli(
                ["stream", "victim", "film.bin", "-o", str(out)], env=daemon_env(tmp_path, "bob")
            )
            assert result.returncode == 0, result.stderr
            assert out.read_bytes() == b"x" * 1000
            await probe(url)
            after = victim.events[seen:]
            assert not [e for e in after if e.get("event") == "tracker-disconnected"]
            unsolicited = [
                e
                for e in after
                if e.get("event") == "file-stream-ready" and e.get("peer_id") == mallory["peer_id"]
            ]
            assert unsolicited == []


async def test_one_peer_cannot_take_every_stream_port(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker_proc(stack, nursery, tmp_path, FAST_TRACKER)
            victim = await start_daemon(
                stack, nursery, tmp_path, "victim", url, {"a.txt": b"hello\n"}
            )
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("victim"))
            _, ws, victim_id = await _attacker(stack, url)
            for i in range(16):
                await send(
                    ws,
                    {
                        "type": "stream-request",
                        "request_id": f"r{i}",
                        "to": victim_id,
                        "path": "a.txt",
                    },
                )
            answers: dict[str, str] = {}
            while len(answers) < 16:
                message = await receive(ws)
                if message["type"] in ("file-stream-ready", "stream-error"):
                    answers[message["request_id"]] = message.get("code", message["type"])
            # each request past its share of 4 closes the peer's own oldest port
            assert list(answers.values()).count("file-stream-ready") == 16
            for i in range(12):
                closed = await victim.wait_event(
                    lambda e, rid=f"r{i}": (  # type: ignore[misc]  # binds the loop variable
                        e.get("event") == "stream-closed" and e["request_id"] == rid
                    )
                )
                assert closed["reason"] == "evicted"
            out = tmp_path / "a.txt"
            result = await run_cli(
                ["stream", "victim", "a.txt", "-o", str(out)], env=daemon_env(tmp_path, "bob")
            )
            assert result.returncode == 0, result.stderr
            assert out.read_bytes() == b"hello\n"


#: the longest address text a candidate can have (IPv6 with an IPv4 tail)
WIDEST_ADDRESS = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"


def _largest_registration(index: int) -> RegisterBody:
    name = f"{index:06d}" + "ü" * 58  # 64 characters, 122 bytes
    direct = tuple(Candidate(WIDEST_ADDRESS, 65535 - i) for i in range(MAX_CANDIDATES))
    return RegisterBody(name, LONG_HOST, 1 + index, BIG_CAPABILITIES, None, None, direct)


async def test_a_daemon_syncs_with_a_tracker_full_of_the_largest_peers(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The tracker's byte budget and the daemon's frame limit agree, at the limit."""
    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            running = await stack.enter_async_context(open_tracker(tracker_config()))
            tracker = running.tracker
            peers: list[dict[str, Any]] = []
            for index in range(MAX_SNAPSHOT_BYTES // 4000):  # more than can fit
                try:
                    # each from its own address: the list's bytes, not an address's share, stop them
                    client = f"10.0.{index // 250}.{index % 250}"
                    peer = await tracker.register(_largest_registration(index), {}, client)
                    peers.append(peer)
                    # and the widest reflexive address: reserved at registration
                    seen = Candidate(WIDEST_ADDRESS, 65535)
                    assert await tracker.presence.reflect(peer["peer_id"], seen, tracker.now())
                except BackendUnavailable as exc:
                    assert exc.code == "tracker_full"
                    break
            # room for the daemon (and nothing more): one of the big ones leaves
            gone = peers.pop()
            await tracker.leave(gone["peer_id"], {"Authorization": f"Bearer {gone['token']}"})
            listing = json.dumps(await tracker.peer_list(), ensure_ascii=False)
            assert len(listing.encode()) > MAX_SNAPSHOT_BYTES - 2 * 5000
            daemon = await start_daemon(stack, nursery, tmp_path, "victim", running.url)
            status = await run_cli(["peers", "--json"], env=daemon_env(tmp_path, "victim"))
            assert status.returncode == 0, status.stderr
            names = {p["name"] for p in json.loads(status.stdout)["peers"]}
            assert len(names) == len(peers) + 1 and "victim" in names
            assert daemon.process.returncode is None
