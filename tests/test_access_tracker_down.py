"""With the tracker down, an owner serves the requesters it accepted before and no one else (§11).

Real processes in network namespaces (tests/netns.py), the relay routing
between the homes as in tests/test_direct_system.py: alice in home A, bob
and carol in home B. Peer servers stay on 127.0.0.1 in their homes, so
everything bob and carol ask of alice arrives at alice's direct endpoint,
where her daemon sees their certificates and decides.

1. With the tracker up, bob gets a file from alice through the tracker's
   introduction: alice accepts him (``tracker`` mode: the key the tracker
   lists; ``allowed`` mode: after ``flashback allow bob``) and pins him.
2. carol registers too, so alice's peer table lists carol's key, but she
   never fetches. Without the tracker a daemon learns addresses only from
   the LAN or its peer book, and the homes share no LAN: carol is given
   alice's address and key out of band -- a copy of the entry bob's daemon
   keeps for alice, written into carol's peer book before she starts. So
   after the kill carol can dial alice, and what is tested is alice's
   refusal, not carol's ignorance of where alice lives.
3. The tracker is SIGKILLed and every daemon has seen the link drop. bob's
   ``get alice`` still succeeds, by plain dial of the remembered candidate;
   carol's is refused with the one line naming alice and carol's key. In
   ``tracker`` mode this is the case that matters: the peer table alice
   last heard from the tracker still lists carol, and a stale list vouches
   for no one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.netns import (
    HOME_A_ADDR,
    RELAY_ADDR_A,
    RELAY_ADDR_B,
    Topology,
    netns_unavailable_reason,
    two_homes_and_a_relay,
)
from tests.procs import Proc, daemon_env, event_is, run_cli, start, wait_until_linked

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((reason := netns_unavailable_reason()) is not None, reason=str(reason)),
]

NOTES = "hello from alice\n"


def route_between_homes(topo: Topology) -> None:
    for args in (
        ["ip", "netns", "exec", topo.relay, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["ip", "-n", topo.home_a, "route", "add", "default", "via", RELAY_ADDR_A],
        ["ip", "-n", topo.home_b, "route", "add", "default", "via", RELAY_ADDR_B],
    ):
        subprocess.run(args, check=True, capture_output=True)


class Homes:
    def __init__(self, tmp_path: Path, nursery: trio.Nursery, topo: Topology) -> None:
        self.tmp, self.nursery, self.topo = tmp_path, nursery, topo
        self.port = 0
        for who in ("alice", "bob", "carol"):
            (tmp_path / who / "share").mkdir(parents=True)
        (tmp_path / "alice" / "share" / "notes.txt").write_text(NOTES)

    def prefix(self, who: str) -> list[str]:
        return Topology.exec_prefix(self.topo.home_a if who == "alice" else self.topo.home_b)

    def tracker(self) -> Any:
        return start(
            self.nursery,
            ["tracker", "--host", "0.0.0.0", "--port", "0", "--database-url", "memory://"],
            env={"FLASHBACK_DATA_DIR": str(self.tmp / "tracker"), "RELAY_TUNNEL_PORT": "0"},
            name="tracker",
            prefix=Topology.exec_prefix(self.topo.relay),
        )

    def daemon(self, who: str, *extra: str) -> Any:
        relay = RELAY_ADDR_A if who == "alice" else RELAY_ADDR_B
        args = ["daemon", "--root", str(self.tmp / who / "share"), "--name", who,
                "--tracker", f"http://{relay}:{self.port}", "--lan", "off", *extra]  # fmt: skip
        return start(
            self.nursery, args, env=daemon_env(self.tmp, who), name=who, prefix=self.prefix(who)
        )

    async def cli(self, who: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return await run_cli(list(args), env=daemon_env(self.tmp, who), prefix=self.prefix(who))

    async def status(self, who: str) -> dict[str, Any]:
        answer = await self.cli(who, "status", "--json")
        assert answer.returncode == 0, answer.stderr
        status: dict[str, Any] = json.loads(answer.stdout)
        return status

    async def gets(self, who: str) -> subprocess.CompletedProcess[bytes]:
        out = self.tmp / f"{who}-got.txt"
        out.unlink(missing_ok=True)
        got = await self.cli(who, "get", "alice", "notes.txt", "-o", str(out))
        if got.returncode == 0:
            assert out.read_text() == NOTES
        else:
            assert not out.exists()
        return got


def refusal_line(answer: subprocess.CompletedProcess[bytes], fingerprint: str) -> str:
    assert answer.returncode == 1, (answer.returncode, answer.stderr)
    lines = answer.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert "alice" in line and "does not share with this peer" in line, line
    assert fingerprint in line, line
    return line


def seed_book(tmp_path: Path, who: str, entry: dict[str, Any]) -> None:
    """*who*'s peer book, before its daemon starts, holding *entry* (one peer)."""
    directory = tmp_path / who / "data" / "identities" / who
    directory.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / who / "data", 0o700)
    book = {"version": 1, "peers": [{**entry, "last_seen": time.time()}]}
    (directory / "book.json").write_text(json.dumps(book))


async def disconnected(proc: Proc) -> None:
    await proc.wait_event(event_is("tracker-disconnected"), timeout_s=20)


@pytest.mark.parametrize("mode", ["tracker", "allowed"])
async def test_tracker_down_serves_only_requesters_accepted_before(
    tmp_path: Path, nursery: trio.Nursery, mode: str
) -> None:
    with two_homes_and_a_relay() as topo, trio.fail_after(90):
        route_between_homes(topo)
        homes = Homes(tmp_path, nursery, topo)
        async with homes.tracker() as tracker:
            homes.port = (await tracker.wait_event(event_is("tracker-ready")))["port"]
            async with (
                homes.daemon("alice", "--share-with", mode) as alice,
                homes.daemon("bob") as bob,
            ):
                endpoint = (await alice.wait_event(event_is("direct-ready")))["port"]
                await wait_until_linked(alice, bob, "alice")
                bob_fp = (await homes.status("bob"))["fingerprint"]
                if mode == "allowed":
                    allowed = await homes.cli("alice", "allow", "bob")
                    assert allowed.returncode == 0, allowed.stderr

                # 1. bob is served once, introduced by the tracker
                got = await homes.gets("bob")
                assert got.returncode == 0, got.stderr
                access = (await homes.status("alice"))["access"]
                assert access["share_with"] == mode
                assert access["counters"]["accepted"] >= 1
                assert access["requesters"] == 1  # pinned: accepted before

                # 2. carol registers, knowing alice's address from bob's book entry
                listed = json.loads((await homes.cli("bob", "peers", "--json")).stdout)
                row = next(p for p in listed["peers"] if p["name"] == "alice")
                assert {"host": HOME_A_ADDR, "port": endpoint} in row["candidates"]
                fields = ("fingerprint", "peer_id", "name", "candidates")
                seed_book(tmp_path, "carol", {key: row[key] for key in fields})
                async with homes.daemon("carol") as carol:
                    await wait_until_linked(alice, carol, "alice")
                    carol_fp = (await homes.status("carol"))["fingerprint"]
                    assert carol_fp != bob_fp
                    await alice.wait_event(
                        lambda e: (
                            e.get("event") in ("peer-joined", "peers-snapshot")
                            and carol_fp in json.dumps(e)
                        ),
                        timeout_s=30,
                    )

                    # 3. the tracker dies, and every daemon has seen its link drop
                    tracker.process.kill()
                    await tracker.process.wait()
                    for proc in (alice, bob, carol):
                        await disconnected(proc)
                    seen, bob_seen = len(alice.events), len(bob.events)

                    got = await homes.gets("bob")
                    assert got.returncode == 0, got.stderr
                    plain = await bob.wait_event(
                        event_is("tunnel-opened", route="direct", punched=False), after=bob_seen
                    )
                    assert plain["address"] == f"{HOME_A_ADDR}:{endpoint}"

                    refusal_line(await homes.gets("carol"), carol_fp)
                    refused = await alice.wait_event(
                        event_is("access-denied", fingerprint=carol_fp, reason="forbidden"),
                        after=seen,
                    )
                    assert refused["peer_id"] is None  # a plain dial: no invite named her
                    access = (await homes.status("alice"))["access"]
                    assert access["requesters"] == 1  # carol was pinned by no one
                    # bob is still served after the refusal: one refusal ends one connection
                    got = await homes.gets("bob")
                    assert got.returncode == 0, got.stderr
