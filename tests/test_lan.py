"""Without the tracker (§12): the peer book on disk, the merged directory, the zeroconf
bridge, and LAN discovery between real daemons in network namespaces."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import stat
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing

from flashback.config import DaemonConfig, daemon_from_sources
from flashback.daemon.book import BOOK_FILE, PeerBook, read_book
from flashback.daemon.carried import Carried
from flashback.daemon.connect import ConnectRequest, connect_peer
from flashback.daemon.context import DaemonContext
from flashback.daemon.directory import NoDirectEndpoint, PeerDirectory
from flashback.daemon.hub import EventHub
from flashback.daemon.lan import LAN_RECHECK_S, LAN_TTL_S, Bridge, Notice
from flashback.errors import BackendUnavailable, ConfigError
from flashback.peer.app import LocalInfo
from flashback.protocol.lan import MAX_LAN_PER_ADDRESS, LanPeer, LanTable
from flashback.protocol.messages import Candidate, PeerInfo, Snapshot
from flashback.shutdown import Shutdown
from tests.netns import LAN_ADDRS, one_host_two_addresses, require_netns, two_hosts_on_a_lan
from tests.procs import (
    EventPredicate,
    Proc,
    daemon_env,
    event_is,
    run_cli,
    start,
    wait_until_linked,
)

FP_ME = "sha256:" + "1" * 64
FP_ALICE = "sha256:" + "a" * 64
FP_BOB = "sha256:" + "b" * 64
FP_CAROL = "sha256:" + "c" * 64


# -- the book on disk --------------------------------------------------------------


async def test_the_book_is_written_private_and_atomic_and_read_back(tmp_path: Path) -> None:
    book = PeerBook(tmp_path / BOOK_FILE, clock=lambda: 100.0)
    book.record(FP_ALICE, name="alice", peer_id="p1", candidates=(Candidate("192.0.2.1", 9),))
    book.record(FP_BOB, name="bad\nname")  # not a peer name: nothing recorded, no error
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        await nursery.start(book.run, shutdown)
        shutdown.set()
    path = tmp_path / BOOK_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / (BOOK_FILE + ".tmp")).exists()
    again = read_book(path)
    assert [(e.fingerprint, e.peer_id, e.name, e.last_seen) for e in again.entries()] == [
        (FP_ALICE, "p1", "alice", 100.0)
    ]


def test_a_damaged_book_is_moved_aside_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / BOOK_FILE
    for raw in (b'{"version": 1, "peers": [{"fingerprint": 7}]}', b"\x00" * (2 * 1024 * 1024)):
        path.write_bytes(raw)
        with caplog.at_level(logging.WARNING):
            assert len(read_book(path)) == 0
        assert not path.exists() and (tmp_path / (BOOK_FILE + ".damaged")).read_bytes() == raw
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"the peer book {path} is damaged"
    ] * 2


# -- the directory and the seam ------------------------------------------------------


def _ctx(tmp_path: Path) -> DaemonContext:
    config = DaemonConfig(root=tmp_path, tracker_url="http://tracker.invalid", name="me")
    ctx = DaemonContext(config=config, hub=EventHub(stdout=io.StringIO()), local=LocalInfo("me"))
    ctx.book = PeerBook(tmp_path / BOOK_FILE, clock=lambda: 5.0)
    ctx.lan = LanTable(FP_ME)
    return ctx


def test_peers_merge_tracker_lan_and_book_one_row_per_fingerprint(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    alice = PeerInfo("p-alice", "alice", "127.0.0.1", 1, fingerprint=FP_ALICE)
    ctx.table.apply(Snapshot(seq=3, peers=(alice,)))
    ctx.tracker_connected = True
    assert ctx.lan is not None
    ctx.lan.seen(LanPeer("a", None, "alice-lan", FP_ALICE, (Candidate("192.0.2.1", 4),)))
    ctx.lan.seen(LanPeer("b", None, "bob", FP_BOB, (Candidate("192.0.2.2", 4),)))
    ctx.lan.seen(LanPeer("me", None, "me", FP_ME, (Candidate("192.0.2.3", 4),)))
    assert ctx.book is not None
    ctx.book.record(FP_CAROL, name="carol", peer_id="p-carol")
    ctx.book.record(FP_BOB, name="bob-old")
    listing = PeerDirectory(ctx).listing()
    assert listing["tracker"] == {
        "url": "http://tracker.invalid",
        "connected": True,
        "reason": None,
        "ever_connected": True,
    }
    rows = {p["name"]: p for p in listing["peers"]}
    assert {n: r["source"] for n, r in rows.items()} == {
        "alice": "tracker",
        "bob": "lan",
        "carol": "book",
    }
    assert rows["alice"]["peer_server"] == {"host": "127.0.0.1", "port": 1}
    assert rows["alice"]["candidates"] == [{"host": "192.0.2.1", "port": 4}]
    assert rows["bob"]["peer_server"] is None and rows["bob"]["peer_id"] is None
    assert rows["carol"]["peer_id"] == "p-carol"
    # the tracker gone, its stale rows go; what the LAN says of the same key shows
    ctx.tracker_connected = False
    rows = {p["name"]: p for p in PeerDirectory(ctx).listing()["peers"]}
    assert {n: r["source"] for n, r in rows.items()} == {
        "alice-lan": "lan",
        "bob": "lan",
        "carol": "book",
    }


async def test_a_lan_only_peer_goes_to_the_direct_seam(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    assert ctx.lan is not None
    ctx.lan.seen(LanPeer("b", None, "bob", FP_BOB, (Candidate("192.0.2.2", 4),)))
    for key in ("bob", FP_BOB):  # to the routes, which this bare context has not started
        with pytest.raises(BackendUnavailable, match="routes are not up"):
            await connect_peer(ctx, ConnectRequest(key))
    assert ctx.book is not None  # a book entry with no address is known, not reachable
    ctx.book.record(FP_CAROL, name="carol", peer_id=None, candidates=())
    with pytest.raises(NoDirectEndpoint, match="no direct address"):
        await connect_peer(ctx, ConnectRequest("carol"))
    with pytest.raises(Exception, match="no peer 'nobody' is online"):
        await connect_peer(ctx, ConnectRequest("nobody"))


def test_lan_is_on_unless_turned_off() -> None:
    def lan(flags: dict[str, object], env: dict[str, str]) -> bool:
        return daemon_from_sources({"root": "/", **flags}, env, {}).lan

    assert lan({}, {}) is True
    assert lan({}, {"FLASHBACK_LAN": "off"}) is False
    assert lan({"lan": "on"}, {"FLASHBACK_LAN": "off"}) is True
    with pytest.raises(ConfigError, match="must be on or off"):
        lan({"lan": "maybe"}, {})


# -- the bridge from zeroconf's threads ---------------------------------------------


async def test_a_flood_through_the_bridge_is_dropped_not_queued() -> None:
    bridge = Bridge(capacity=8)

    def flood() -> None:  # as zeroconf's browser thread would
        for n in range(1000):
            bridge.push(Notice("removed", f"s{n}"))

    await trio.to_thread.run_sync(flood)
    await trio.testing.wait_all_tasks_blocked()
    received = []
    while True:
        try:
            received.append(bridge.receive.receive_nowait())
        except trio.WouldBlock:
            break
    assert [n.service for n in received] == [f"s{n}" for n in range(8)]
    assert bridge.dropped == 992


def test_a_push_after_trio_has_finished_is_dropped_quietly() -> None:
    async def make() -> Bridge:
        return Bridge(capacity=8)

    bridge = trio.run(make)
    bridge.push(Notice("removed", "late"))  # would raise RunFinishedError unguarded
    assert bridge.dropped == 0


# -- in namespaces ---------------------------------------------------------------------


async def test_lan_discovery_in_one_process_bounded_escaped_and_no_thread_left() -> None:
    require_netns()
    with one_host_two_addresses() as (ns, (honest, stranger)):
        result = await trio.run_process(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.lan_probe", honest, stranger],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    probe = json.loads(result.stdout)
    assert probe["listed"] == {"alice": ["bob"], "bob": ["alice"]}
    # the hostile ones (escapes, bad fingerprint, huge TXT) never made it; the flood
    # kept only its own share, its newest
    flood = 3 * MAX_LAN_PER_ADDRESS
    assert sorted(probe["stranger_rows"]) == sorted(
        f"flood{n}" for n in range(flood - MAX_LAN_PER_ADDRESS, flood)
    )
    names = {e[2]["name"] for e in probe["events"]}
    assert not names & {"ev\x1b[2Jil\x07", "badfp", "x" * 250}
    # the stranger's goodbye packets removed its services at once
    assert probe["after_stranger_left"] == ["alice", "bob"]
    threads = probe["threads"]
    assert sum(t.startswith("zeroconf-ServiceBrowser") for t in threads["during"]) == 2
    # what is left is trio's own idle worker cache, nothing of zeroconf's
    assert [t for t in threads["after"] if not t.startswith("Trio thread")] == threads["before"]


async def _lan_daemon(
    stack: AsyncExitStack, nursery: trio.Nursery, base: Path, name: str, host: str, *extra: str
) -> Proc:
    root = base / name / "share"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.txt").write_text(f"I am {name}\n")
    return await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(root), "--name", name, "--lan", "on", *extra],
            env=daemon_env(base, name),
            name=name,
            prefix=["ip", "netns", "exec", host],
        )
    )


def found(name: str) -> EventPredicate:
    return lambda e: e.get("event") == "lan-peer-found" and e.get("name") == name


def lost(name: str) -> EventPredicate:
    return lambda e: e.get("event") == "lan-peer-lost" and e.get("name") == name


async def test_two_daemons_on_a_lan_with_no_tracker(tmp_path: Path, nursery: trio.Nursery) -> None:
    require_netns()
    with two_hosts_on_a_lan() as lan, trio.fail_after(120):
        async with AsyncExitStack() as stack:
            alice = await _lan_daemon(stack, nursery, tmp_path, "alice", lan.hosts[0])
            await alice.wait_event(event_is("peer-server-ready"), timeout_s=30)
            bob = await _lan_daemon(stack, nursery, tmp_path, "bob", lan.hosts[1])
            await bob.wait_event(event_is("peer-server-ready"), timeout_s=30)
            with trio.fail_after(5):  # §12: within 5 s of the later peer-server-ready
                await bob.wait_event(found("alice"))
                await alice.wait_event(found("bob"))

            bob_env = daemon_env(tmp_path, "bob")
            peers = await run_cli(["peers", "--json"], env=bob_env)
            assert peers.returncode == 0, peers.stderr
            listing = json.loads(peers.stdout)
            assert listing["tracker"]["url"] is None and not listing["tracker"]["connected"]
            row = next(p for p in listing["peers"] if p["name"] == "alice")
            assert row["source"] == "lan" and row["peer_id"] is None
            assert row["candidates"][0]["host"] == LAN_ADDRS[0]
            text = await run_cli(["peers"], env=bob_env)
            row = next(r for r in text.stdout.decode().splitlines() if r.startswith("alice "))
            assert row.endswith(" lan"), row
            # alice shares with whom the tracker lists; with no tracker, a LAN stranger
            # is refused (§11, §12) until she allows his fingerprint
            bob_fp = json.loads((await run_cli(["status", "--json"], env=bob_env)).stdout)[
                "fingerprint"
            ]
            ls = await run_cli(["ls", "alice"], env=bob_env)
            assert ls.returncode == 1
            [line] = ls.stderr.decode().splitlines()
            assert "does not share with this peer" in line and bob_fp in line, line
            alice_env = daemon_env(tmp_path, "alice")
            allowed = await run_cli(["allow", bob_fp], env=alice_env)
            assert allowed.returncode == 0, allowed.stderr
            in_bob = ["ip", "netns", "exec", lan.hosts[1]]  # the forward is bob's 127.0.0.1
            got = await run_cli(
                ["get", "alice", "alice.txt", "-o", str(tmp_path / "got.txt")],
                env=bob_env,
                prefix=in_bob,
            )
            assert got.returncode == 0, got.stderr
            assert (tmp_path / "got.txt").read_text() == "I am alice\n"
            peers = json.loads((await run_cli(["peers", "--json"], env=bob_env)).stdout)
            assert next(p for p in peers["peers"] if p["name"] == "alice")["route"] == "direct"

            # a clean stop says goodbye: bob's LAN list loses alice at once
            mark = len(bob.events)
            alice.signal(signal.SIGTERM)
            assert await alice.wait_exit(timeout_s=5) == 0  # 1 if the deadline cut a step
            await bob.wait_event(lost("alice"), after=mark, timeout_s=5)
            listing = json.loads((await run_cli(["peers", "--json"], env=bob_env)).stdout)
            # not on the LAN any more; remembered in bob's peer book, since he reached her
            assert [(p["name"], p["source"]) for p in listing["peers"]] == [("alice", "book")]

            # a SIGKILL says nothing: her records' TTL runs out, and she answers no query
            again = await _lan_daemon(stack, nursery, tmp_path, "alice", lan.hosts[0])
            mark = len(bob.events)
            await bob.wait_event(found("alice"), after=mark, timeout_s=10)
            again.signal(signal.SIGKILL)
            await again.wait_exit()
            mark = len(bob.events)
            await bob.wait_event(
                lost("alice"),
                after=mark,
                timeout_s=LAN_TTL_S + LAN_RECHECK_S + 5,
            )
            bob.signal(signal.SIGTERM)
            assert await bob.wait_exit(timeout_s=5) == 0


_POST_STREAM = """
import json, sys, httpx
r = httpx.post(f"http://127.0.0.1:{sys.argv[1]}/api/stream", json={"path": "movie.bin"})
print(r.status_code, r.json()["error"]["code"])
"""


async def test_stream_from_a_lan_peer_with_no_tracker(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """``stream`` asks a LAN peer for its port over the direct endpoint (``POST
    /api/stream`` through ``OPEN peer-server``), then fetches it by ``OPEN stream``."""
    require_netns()
    with two_hosts_on_a_lan() as lan, trio.fail_after(120):
        async with AsyncExitStack() as stack:
            alice = await _lan_daemon(stack, nursery, tmp_path, "alice", lan.hosts[0])
            bob = await _lan_daemon(stack, nursery, tmp_path, "bob", lan.hosts[1])
            await bob.wait_event(found("alice"), timeout_s=30)
            big = tmp_path / "alice" / "share" / "movie.bin"
            big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
            bob_env, alice_env = daemon_env(tmp_path, "bob"), daemon_env(tmp_path, "alice")
            bob_fp = json.loads((await run_cli(["status", "--json"], env=bob_env)).stdout)[
                "fingerprint"
            ]
            allowed = await run_cli(["allow", bob_fp], env=alice_env)
            assert allowed.returncode == 0, allowed.stderr
            out = tmp_path / "streamed.bin"
            in_bob = ["ip", "netns", "exec", lan.hosts[1]]  # the forward is bob's 127.0.0.1
            streamed = await run_cli(
                ["stream", "alice", "movie.bin", "-o", str(out)], env=bob_env, prefix=in_bob
            )
            assert streamed.returncode == 0, streamed.stderr
            assert (
                hashlib.sha256(out.read_bytes()).digest()
                == hashlib.sha256(big.read_bytes()).digest()
            )
            ready = next(
                json.loads(line)
                for line in streamed.stdout.splitlines()
                if b'"file-stream-ready"' in line
            )
            # the owner opened the port for the fingerprint bob proved, and closed it once sent
            opened = await alice.wait_event(event_is("file-stream-ready", path="movie.bin"))
            assert opened["peer_id"] == bob_fp and opened["port"] == ready["port"]
            closed = await alice.wait_event(event_is("stream-closed", port=ready["port"]))
            assert closed["reason"] == "completed" and closed["bytes_sent"] == big.stat().st_size
            # the route answers only connections an owner end carried: a local client that
            # proved no fingerprint (anything else on alice's 127.0.0.1) gets no port
            server = await alice.wait_event(event_is("peer-server-ready"))
            in_alice = ["ip", "netns", "exec", lan.hosts[0]]
            plain = await trio.run_process(
                [*in_alice, sys.executable, "-c", _POST_STREAM, str(server["port"])],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert plain.stdout.decode().split() == ["403", "forbidden"], plain.stderr
            # a missing file is the owner's one-line refusal, not a timeout
            missing = await run_cli(
                ["stream", "alice", "nothing.bin", "-o", str(tmp_path / "x")],
                env=bob_env,
                prefix=in_bob,
            )
            assert missing.returncode == 1
            assert len(missing.stderr.decode().strip().splitlines()) == 1, missing.stderr


async def test_a_peer_the_tracker_vouched_for_is_served_by_the_book_a_lan_stranger_not(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """``tracker`` mode with the tracker gone (§11, §12): alice serves bob, whom she
    reached while the tracker listed him (her book holds him as vouched), with no
    ``allow`` and no pin; carol, a stranger who only announces herself on the LAN,
    is refused."""
    require_netns()
    with two_hosts_on_a_lan() as lan, trio.fail_after(120):
        async with AsyncExitStack() as stack:
            tracker = await stack.enter_async_context(
                start(
                    nursery,
                    ["tracker", "--host", "0.0.0.0", "--port", "0", "--database-url", "memory://"],
                    env={"FLASHBACK_DATA_DIR": str(tmp_path / "tracker"), "RELAY_TUNNEL_PORT": "0"},
                    name="tracker",
                    prefix=["ip", "netns", "exec", lan.hosts[0]],
                )
            )
            port = (await tracker.wait_event(event_is("tracker-ready")))["port"]
            url = ["--tracker", f"http://{LAN_ADDRS[0]}:{port}"]
            alice = await _lan_daemon(stack, nursery, tmp_path, "alice", lan.hosts[0], *url)
            bob = await _lan_daemon(stack, nursery, tmp_path, "bob", lan.hosts[1], *url)
            await wait_until_linked(bob, alice, "bob")
            await wait_until_linked(alice, bob, "alice")
            alice_env, bob_env = daemon_env(tmp_path, "alice"), daemon_env(tmp_path, "bob")
            in_alice, in_bob = (["ip", "netns", "exec", host] for host in lan.hosts)
            ls = await run_cli(["ls", "bob"], env=alice_env, prefix=in_alice)
            assert ls.returncode == 0, ls.stderr  # alice reached bob: the tracker listed him

            tracker.signal(signal.SIGKILL)
            await tracker.wait_exit()
            for proc in (alice, bob):
                await proc.wait_event(event_is("tracker-disconnected"), timeout_s=20)
            carol = await _lan_daemon(stack, nursery, tmp_path, "carol", lan.hosts[1])
            await carol.wait_event(found("alice"), timeout_s=30)
            status = json.loads((await run_cli(["status", "--json"], env=alice_env)).stdout)
            assert status["access"]["allowed"] == [] and status["access"]["requesters"] == 0

            got = await run_cli(
                ["get", "alice", "alice.txt", "-o", str(tmp_path / "bob-got.txt")],
                env=bob_env,
                prefix=in_bob,
            )
            assert got.returncode == 0, got.stderr
            assert (tmp_path / "bob-got.txt").read_text() == "I am alice\n"

            carol_env = daemon_env(tmp_path, "carol")
            carol_fp = json.loads((await run_cli(["status", "--json"], env=carol_env)).stdout)[
                "fingerprint"
            ]
            mark = len(alice.events)
            refused = await run_cli(
                ["get", "alice", "alice.txt", "-o", str(tmp_path / "carol-got.txt")],
                env=carol_env,
                prefix=in_bob,
            )
            assert refused.returncode == 1
            [line] = refused.stderr.decode().splitlines()
            assert "does not share with this peer" in line and carol_fp in line, line
            assert not (tmp_path / "carol-got.txt").exists()
            await alice.wait_event(
                event_is("access-denied", fingerprint=carol_fp, reason="forbidden"), after=mark
            )


async def test_a_peer_reached_through_the_tracker_stays_in_the_book(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    from tests.test_daemon_system import start_daemon, start_tracker

    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            tracker, url = await start_tracker(stack, nursery, tmp_path)
            await start_daemon(stack, nursery, tmp_path, "alice", url)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(lambda e: "alice" in json.dumps(e) and "peer" in e["event"])
            bob_env = daemon_env(tmp_path, "bob")
            status = json.loads(
                (await run_cli(["status", "--json"], env=daemon_env(tmp_path, "alice"))).stdout
            )
            ls = await run_cli(["ls", "alice", "--json"], env=bob_env)
            assert ls.returncode == 0, ls.stderr

            tracker.signal(signal.SIGKILL)
            await tracker.wait_exit()
            await bob.wait_event(event_is("tracker-disconnected"))
            listing = json.loads((await run_cli(["peers", "--json"], env=bob_env)).stdout)
            assert (listing["tracker"]["url"], listing["tracker"]["connected"]) == (url, False)
            assert [
                (p["name"], p["source"], p["peer_id"], p["fingerprint"]) for p in listing["peers"]
            ] == [("alice", "book", status["peer_id"], status["fingerprint"])]
            bob.signal(signal.SIGTERM)
            assert await bob.wait_exit(timeout_s=5) == 0
    books = list((tmp_path / "bob" / "data").rglob(BOOK_FILE))
    assert len(books) == 1
    entries = read_book(books[0]).entries()
    assert [(e.name, e.fingerprint) for e in entries] == [("alice", status["fingerprint"])]


def test_carried_names_a_connection_only_while_it_is_carried() -> None:
    carried = Carried()
    with carried.carrying(("127.0.0.1", 40000), FP_BOB):
        assert carried.who(("127.0.0.1", 40000)) == FP_BOB
        assert carried.who(["127.0.0.1", 40000]) == FP_BOB  # an ASGI scope may hold a list
        for other in (("127.0.0.1", 40001), ("192.0.2.9", 40000), None, "x", (1, 2), ("a",)):
            assert carried.who(other) is None
    assert carried.who(("127.0.0.1", 40000)) is None and len(carried) == 0
