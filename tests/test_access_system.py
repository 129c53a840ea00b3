"""Who may connect to me (§11), with real processes on routes that cross machines.

alice and bob live in two homes that cannot reach each other (tests/netns.py),
so everything bob asks of alice arrives by tunnel, where alice's daemon sees
bob's certificate and decides. Commands are the real ``flashback`` CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.netns import (
    RELAY_ADDR_A,
    RELAY_ADDR_B,
    Topology,
    netns_unavailable_reason,
    two_homes_and_a_relay,
)
from tests.procs import (
    Proc,
    daemon_env,
    event_is,
    run_cli,
    start,
    wait_until_linked,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((reason := netns_unavailable_reason()) is not None, reason=str(reason)),
]

NOTES = "hello from alice\n"
FRIEND = "sha256:" + "f" * 64  # someone alice allowed, who is not online


class Homes:
    """The tracker on the relay, alice in home A, bob in home B, and their commands."""

    def __init__(self, tmp_path: Path, nursery: trio.Nursery, topo: Topology) -> None:
        self.tmp, self.nursery, self.topo = tmp_path, nursery, topo
        self.in_a = Topology.exec_prefix(topo.home_a)
        self.in_b = Topology.exec_prefix(topo.home_b)
        self.port = 0
        (tmp_path / "alice" / "share").mkdir(parents=True)
        (tmp_path / "alice" / "share" / "notes.txt").write_text(NOTES)
        (tmp_path / "bob" / "share").mkdir(parents=True)

    async def tracker(self, stack: AsyncExitStack, env: dict[str, str] | None = None) -> Proc:
        program = [sys.executable, "-m", "tests.lying_tracker"] if env else None
        proc = await stack.enter_async_context(
            start(
                self.nursery,
                ["tracker", "--host", "0.0.0.0", "--port", "0", "--database-url", "memory://"],
                env={"FLASHBACK_DATA_DIR": str(self.tmp / "tracker"), "RELAY_TUNNEL_PORT": "0",
                     **(env or {})},
                name="tracker",
                prefix=Topology.exec_prefix(self.topo.relay),
                **({"program": program} if program else {}),  # type: ignore[arg-type]  # only `program`
            )
        )  # fmt: skip
        self.port = (await proc.wait_event(event_is("tracker-ready")))["port"]
        return proc

    @asynccontextmanager
    async def daemon(self, name: str, *extra: str, proc_name: str = "") -> AsyncIterator[Proc]:
        relay = RELAY_ADDR_A if name == "alice" else RELAY_ADDR_B
        args = ["daemon", "--root", str(self.tmp / name / "share"), "--name", name,
                "--tracker", f"http://{relay}:{self.port}", *extra]  # fmt: skip
        async with start(
            self.nursery, args, env=daemon_env(self.tmp, name), name=proc_name or name,
            prefix=self.in_a if name == "alice" else self.in_b,
        ) as proc:  # fmt: skip
            yield proc

    async def cli(self, who: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        prefix = self.in_a if who == "alice" else self.in_b
        return await run_cli(list(args), env=daemon_env(self.tmp, who), prefix=prefix)

    async def status(self, who: str) -> dict[str, Any]:
        answer = await self.cli(who, "status", "--json")
        assert answer.returncode == 0, answer.stderr
        status: dict[str, Any] = json.loads(answer.stdout)
        return status

    async def bob_gets(self) -> subprocess.CompletedProcess[bytes]:
        out = self.tmp / "got.txt"
        out.unlink(missing_ok=True)
        got = await self.cli("bob", "get", "alice", "notes.txt", "-o", str(out))
        if got.returncode == 0:
            assert out.read_text() == NOTES
        else:
            assert not out.exists()
        return got


def refusal_line(answer: subprocess.CompletedProcess[bytes], bob_fingerprint: str) -> str:
    """The refused command's one line: exit 1, names alice, says so, gives bob's key."""
    assert answer.returncode == 1, (answer.returncode, answer.stderr)
    lines = answer.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert "alice" in line and "does not share with this peer" in line, line
    assert bob_fingerprint in line, line
    return line


def lists_key(fingerprint: str) -> Callable[[dict[str, Any]], bool]:
    """alice's peer table has a peer with *fingerprint* (it joined, or changed its key)."""
    return lambda e: e.get("event") in ("peer-joined", "peer-updated") and fingerprint in str(e)


def denied(fingerprint: str, reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: (
        e.get("event") == "access-denied"
        and e.get("fingerprint") == fingerprint
        and e.get("reason") == reason
    )


async def test_allowed_mode_allow_deny_and_a_changed_key(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with two_homes_and_a_relay() as topo, trio.fail_after(240):
        homes = Homes(tmp_path, nursery, topo)
        async with AsyncExitStack() as stack:
            await homes.tracker(stack)
            bob = await stack.enter_async_context(homes.daemon("bob"))
            async with homes.daemon("alice", "--share-with", "allowed") as alice:
                await wait_until_linked(alice, bob, "alice")
                bob_fp = (await homes.status("bob"))["fingerprint"]
                bob_id = (await homes.status("bob"))["peer_id"]
                access = (await homes.status("alice"))["access"]
                assert access["share_with"] == "allowed" and access["allowed"] == []

                # allowed mode: bob is refused, in words, and alice is told who asked
                refusal_line(await homes.cli("bob", "ls", "alice"), bob_fp)
                event = await alice.wait_event(denied(bob_fp, "forbidden"))
                assert (event["peer_id"], event["name"]) == (bob_id, "bob")
                text = (await homes.cli("alice", "status")).stdout.decode()
                assert "share with: allowed" in text

                # allow bob: the next get goes through, no restart
                allowed = await homes.cli("alice", "allow", "bob")
                assert allowed.returncode == 0, allowed.stderr
                assert bob_fp in allowed.stdout.decode()
                got = await homes.bob_gets()
                assert got.returncode == 0, got.stderr
                listed = (await homes.status("alice"))["access"]["allowed"]
                assert [(e["fingerprint"], e["name"]) for e in listed] == [(bob_fp, "bob")]

                # deny bob: refused at once (the forward bob's daemon still holds too)
                assert (await homes.cli("alice", "deny", bob_id)).returncode == 0
                refusal_line(await homes.bob_gets(), bob_fp)
                # (no second event: one per fingerprint per minute; the counters tell)
                assert sum(e.get("event") == "access-denied" for e in alice.events) == 1
                counters = (await homes.status("alice"))["access"]["counters"]
                assert counters["accepted"] >= 1
                assert counters["refused"]["forbidden"] >= 1
                assert counters["refused"]["denied"] >= 1
                alice.signal()
                assert await alice.wait_exit() == 0

            # the deny persists, and holds in tracker mode too: every command says so
            async with homes.daemon("alice", proc_name="alice-tracker-mode") as alice:
                await alice.wait_event(event_is("tracker-connected"), timeout_s=30)
                assert (await homes.status("alice"))["access"]["share_with"] == "tracker"
                refusal_line(await homes.bob_gets(), bob_fp)
                stream_out = str(tmp_path / "streamed.txt")
                refusal_line(await homes.cli("bob", "stream", "alice", "notes.txt", "-o",
                                             stream_out), bob_fp)  # fmt: skip
                refusal_line(await homes.cli("bob", "connect", "alice"), bob_fp)
                # allow takes him off the denied list
                assert (await homes.cli("alice", "allow", bob_fp)).returncode == 0
                got = await homes.bob_gets()
                assert got.returncode == 0, got.stderr

                # bob comes back with a new key under the same peer id: alice saw him
                # before and refuses him, whatever the tracker lists, until forget
                bob.signal()
                assert await bob.wait_exit() == 0
                (tmp_path / "bob" / "data" / "identities" / "bob" / "identity.pem").unlink()
                seen = len(alice.events)
                async with homes.daemon("bob", proc_name="bob-new-key") as bob_again:
                    await bob_again.wait_event(event_is("tracker-connected"), timeout_s=30)
                    new_fp = (await homes.status("bob"))["fingerprint"]
                    assert new_fp != bob_fp
                    assert (await homes.status("bob"))["peer_id"] == bob_id
                    await alice.wait_event(lists_key(new_fp), after=seen, timeout_s=30)
                    refusal_line(await homes.bob_gets(), new_fp)
                    await alice.wait_event(denied(new_fp, "key_changed"))
                    forgot = await homes.cli("alice", "forget", "bob")
                    assert forgot.returncode == 0, forgot.stderr
                    assert "requester" in forgot.stdout.decode()
                    got = await homes.bob_gets()
                    assert got.returncode == 0, got.stderr


async def test_a_lying_tracker_cannot_vouch_for_anyone_in_allowed_mode(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The tracker lists, for bob, the key of a friend alice allowed: alice still sees
    bob's own certificate and refuses it; the tracker's word opens nothing."""
    lie = tmp_path / "lie.txt"
    lie.write_text(FRIEND)
    with two_homes_and_a_relay() as topo, trio.fail_after(180):
        homes = Homes(tmp_path, nursery, topo)
        async with AsyncExitStack() as stack:
            await homes.tracker(
                stack, {"FLASHBACK_TEST_LIE_FILE": str(lie), "FLASHBACK_TEST_LIE_ABOUT": "bob"}
            )
            bob = await stack.enter_async_context(homes.daemon("bob", proc_name="bob"))
            alice = await stack.enter_async_context(
                homes.daemon("alice", "--share-with", "allowed")
            )
            await wait_until_linked(alice, bob, "alice")
            bob_fp = (await homes.status("bob"))["fingerprint"]
            assert (await homes.cli("alice", "allow", FRIEND)).returncode == 0
            # alice's own peer list carries the lie ...
            peers = json.loads((await homes.cli("alice", "peers", "--json")).stdout)["peers"]
            assert any(p["name"] == "bob" and p["fingerprint"] == FRIEND for p in peers)
            # ... and bob's certificate is still what counts
            refusal_line(await homes.cli("bob", "ls", "alice"), bob_fp)
            await alice.wait_event(denied(bob_fp, "forbidden"))
            # "bob" now names two keys (the listed one, the one that knocked): say which
            ambiguous = await homes.cli("alice", "allow", "bob")
            assert ambiguous.returncode == 2
            assert len(ambiguous.stderr.splitlines()) == 1
            assert FRIEND in ambiguous.stderr.decode() and bob_fp in ambiguous.stderr.decode()
            # allowing bob's peer id takes the tracker's word: the lie, not bob
            bob_id = (await homes.status("bob"))["peer_id"]
            allowed = await homes.cli("alice", "allow", bob_id)
            assert allowed.returncode == 0 and FRIEND in allowed.stdout.decode()
            refusal_line(await homes.bob_gets(), bob_fp)
            # only bob's own fingerprint, compared out of band, lets him in
            assert (await homes.cli("alice", "allow", bob_fp)).returncode == 0
            got = await homes.bob_gets()
            assert got.returncode == 0, got.stderr

            # a stranger under bob's peer id (a new key), and the tracker swears it is
            # bob's allowed key: refused, the tracker's word opens nothing
            lie.write_text(bob_fp)
            bob.signal()
            assert await bob.wait_exit() == 0
            (tmp_path / "bob" / "data" / "identities" / "bob" / "identity.pem").unlink()
            async with homes.daemon("bob", proc_name="stranger") as stranger:
                await stranger.wait_event(event_is("tracker-connected"), timeout_s=30)
                stranger_fp = (await homes.status("bob"))["fingerprint"]
                assert stranger_fp != bob_fp
                refusal_line(await homes.bob_gets(), stranger_fp)
                await alice.wait_event(denied(stranger_fp, "key_changed"))
                # without the pin too: in allowed mode only a key on the list passes
                assert (await homes.cli("alice", "forget", "bob")).returncode == 0
                before = (await homes.status("alice"))["access"]["counters"]["refused"]
                refusal_line(await homes.bob_gets(), stranger_fp)
                after = (await homes.status("alice"))["access"]["counters"]["refused"]
                assert after["forbidden"] > before["forbidden"]
                listed = json.loads((await homes.cli("alice", "peers", "--json")).stdout)
                assert [p["fingerprint"] for p in listed["peers"] if p["name"] == "bob"] == [bob_fp]
