"""Daemon logic without sockets: backoff, peer table rules, identity file, heartbeat timing."""

from __future__ import annotations

import io
import itertools
import random
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from flashback.config import DaemonConfig
from flashback.daemon.context import DaemonContext
from flashback.daemon.hub import EventHub
from flashback.daemon.identity import Identity, IdentityStore
from flashback.daemon.keys import KeyPair
from flashback.daemon.link import websocket_target
from flashback.daemon.session import heartbeat_loop, maintain_registration
from flashback.daemon.tracker_api import Registration, RetryLater, UnknownPeer
from flashback.peer.app import LocalInfo
from flashback.protocol.backoff import Backoff
from flashback.protocol.messages import PeerInfo, PeerJoined, PeerLeft, PeerUpdated, Snapshot
from flashback.protocol.peer_table import PeerTable, ResyncNeeded
from flashback.web import BoundAddress


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


# -- backoff -------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_without_jitter() -> None:
    backoff = Backoff(rng=FixedRandom(0.0))
    assert [backoff.next_delay_s() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next_delay_s() == 1


def test_backoff_jitter_shortens_by_at_most_a_quarter() -> None:
    assert Backoff(rng=FixedRandom(1.0)).next_delay_s() == 0.75
    delays = [Backoff(rng=random.Random(seed)).next_delay_s() for seed in range(50)]
    assert all(0.75 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1  # clients do not come back in lock-step


# -- peer table ----------------------------------------------------------------


def peer(peer_id: str, name: str = "n", port: int = 1000) -> PeerInfo:
    return PeerInfo(peer_id, name, "127.0.0.1", port, {}, "t", "t")


def test_snapshot_then_changes_in_order() -> None:
    table = PeerTable()
    events = table.apply(Snapshot(10, (peer("a"),)))
    assert [e.event for e in events] == ["peer-joined"]
    assert table.seq == 10
    assert [e.event for e in table.apply(PeerJoined(11, peer("b")))] == ["peer-joined"]
    assert [e.event for e in table.apply(PeerUpdated(12, peer("b", port=2)))] == ["peer-updated"]
    left = table.apply(PeerLeft(13, "a", "expired"))
    assert [e.to_json() for e in left] == [
        {"event": "peer-left", "seq": 13, "peer_id": "a", "reason": "expired"}
    ]
    assert set(table.peers) == {"b"}
    assert table.snapshot()["seq"] == 13


def test_duplicates_are_ignored_and_gaps_need_resync() -> None:
    table = PeerTable()
    table.apply(Snapshot(5, ()))
    table.apply(PeerJoined(6, peer("a")))
    assert table.apply(PeerJoined(6, peer("a"))) == []
    assert table.apply(PeerLeft(4, "a", "left")) == []
    with pytest.raises(ResyncNeeded) as info:
        table.apply(PeerJoined(8, peer("b")))
    assert info.value.last_seq == 6
    assert "b" not in table.peers and table.seq == 6


def test_changes_before_a_snapshot_need_resync() -> None:
    with pytest.raises(ResyncNeeded):
        PeerTable().apply(PeerJoined(1, peer("a")))


def test_snapshot_after_reconnect_reports_the_difference() -> None:
    table = PeerTable()
    table.apply(Snapshot(1, (peer("a"), peer("b"), peer("c"))))
    events = table.apply(Snapshot(9, (peer("b"), peer("c", port=5), peer("d"))))
    summary = sorted(
        (e.event, e.fields.get("peer_id") or e.fields["peer"]["peer_id"]) for e in events
    )
    assert summary == [("peer-joined", "d"), ("peer-left", "a"), ("peer-updated", "c")]
    left = next(e for e in events if e.event == "peer-left")
    assert left.fields["reason"] == "resync"


def test_find_by_id_or_name() -> None:
    table = PeerTable()
    table.apply(Snapshot(1, (peer("a", "alice"), peer("b", "bob"), peer("c", "bob"))))
    assert [p.peer_id for p in table.find("a")] == ["a"]
    assert [p.peer_id for p in table.find("alice")] == ["a"]
    assert [p.peer_id for p in table.find("bob")] == ["b", "c"]
    assert table.find("zed") == []


# -- identity ------------------------------------------------------------------


def test_identity_round_trip_is_private(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path / "data", "http://t:1")
    assert store.load() is None
    store.save(Identity("p1", "secret-token"))
    assert store.load() == Identity("p1", "secret-token")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "secret-token" not in repr(store.load())
    other = IdentityStore(tmp_path / "data", "http://other:2")
    assert other.load() is None  # identities are per tracker
    other.save(Identity("p2", "t2"))
    assert store.load() == Identity("p1", "secret-token")
    store.forget()
    assert store.load() is None and other.load() == Identity("p2", "t2")


def test_corrupt_identity_file_is_ignored(tmp_path: Path) -> None:
    store = IdentityStore(tmp_path, "http://t:1")
    store.path.write_text("{not json")
    assert store.load() is None
    store.save(Identity("p", "t"))
    assert store.load() == Identity("p", "t")


def test_websocket_target() -> None:
    assert websocket_target("http://tracker:3000") == ("tracker", 3000, "/api/peers/ws", False)
    assert websocket_target("https://t.example/relay/") == (
        "t.example",
        443,
        "/relay/api/peers/ws",
        True,
    )


# -- timing on the mock clock ------------------------------------------------------


class FakeAPI:
    """Records when each call happens; fails as scripted."""

    def __init__(self, *, register_failures: int = 0, heartbeat_script: list[Any] | None = None):
        self.register_failures = register_failures
        self.heartbeat_script = list(heartbeat_script or [])
        self.register_times: list[float] = []
        self.heartbeat_times: list[float] = []
        self.registered_with: list[Identity | None] = []
        self.fingerprints: list[str | None] = []

    async def register(
        self,
        name: str,
        host: str,
        port: int,
        *,
        identity: Identity | None,
        capabilities: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        direct: Any = (),
    ) -> Registration:
        self.register_times.append(trio.current_time())
        self.fingerprints.append(fingerprint)
        self.registered_with.append(identity)
        if len(self.register_times) <= self.register_failures:
            raise RetryLater("tracker down")
        return Registration(identity or Identity("new-id", "new-token"), 10.0, 30.0)

    async def leave(self, identity: Identity) -> None:
        pass

    async def heartbeat(self, identity: Identity) -> float:
        self.heartbeat_times.append(trio.current_time())
        if self.heartbeat_script:
            outcome = self.heartbeat_script.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return float(outcome)
        return 10.0


async def test_heartbeats_follow_an_absolute_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    api = FakeAPI(heartbeat_script=[10, RetryLater("blip"), 10, 5, 5])
    start = trio.current_time()
    with trio.move_on_after(47):
        await heartbeat_loop(api, Identity("p", "t"), 10.0, rng=FixedRandom(0.0))
    offsets = [t - start for t in api.heartbeat_times]
    # a failed beat does not shift the schedule; a new interval applies from then on
    assert offsets == [10, 20, 30, 40, 45]


async def test_heartbeat_jitter_is_early_never_late(autojump_clock: trio.testing.MockClock) -> None:
    api = FakeAPI()
    start = trio.current_time()
    with trio.move_on_after(35):
        await heartbeat_loop(api, Identity("p", "t"), 10.0, rng=FixedRandom(1.0))
    assert [round(t - start, 6) for t in api.heartbeat_times] == [9, 19, 29]


def make_context(tmp_path: Path) -> DaemonContext:
    config = DaemonConfig(root=tmp_path, tracker_url="http://t:1", name="me")
    ctx = DaemonContext(
        config=config,
        hub=EventHub(stdout=io.StringIO()),
        local=LocalInfo(name="me"),
        keys=KeyPair(tmp_path / "identity.pem", b"not really DER"),
    )
    ctx.address = BoundAddress("127.0.0.1", 4242)
    return ctx


async def test_registration_retries_with_backoff_then_heartbeats(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    api = FakeAPI(register_failures=3)
    ctx = make_context(tmp_path)
    store = IdentityStore(tmp_path / "data", "http://t:1")
    start = trio.current_time()
    with trio.move_on_after(30):
        await maintain_registration(ctx, api, store, rng=random.Random(0))
    registers = [t - start for t in api.register_times]
    assert registers[0] == 0
    gaps = [b - a for a, b in itertools.pairwise(registers)]
    steps = [1, 2, 4]
    assert len(gaps) == 3
    for gap, step in zip(gaps, steps, strict=True):
        assert step * 0.75 <= gap <= step
    assert ctx.identity == Identity("new-id", "new-token")
    assert store.load() == Identity("new-id", "new-token")
    assert ctx.local.peer_id == "new-id"
    assert api.fingerprints == [ctx.fingerprint] * 4  # every registration carries it
    assert api.heartbeat_times and api.heartbeat_times[0] - api.register_times[-1] <= 10


async def test_unknown_peer_registers_again_under_the_same_identity(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    api = FakeAPI(heartbeat_script=[UnknownPeer("tracker restarted")])
    ctx = make_context(tmp_path)
    store = IdentityStore(tmp_path / "data", "http://t:1")
    store.save(Identity("kept-id", "kept-token"))
    with trio.move_on_after(15):
        await maintain_registration(ctx, api, store, rng=random.Random(0))
    assert api.registered_with == [Identity("kept-id", "kept-token")] * 2
    assert ctx.identity == Identity("kept-id", "kept-token")


async def test_link_reporting_unknown_peer_registers_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    api = FakeAPI()
    ctx = make_context(tmp_path)
    store = IdentityStore(tmp_path / "data", "http://t:1")

    async def lose_registration_at_3s() -> None:
        await trio.sleep(3)
        ctx.registration_lost()

    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lose_registration_at_3s)
            await maintain_registration(ctx, api, store, rng=random.Random(0))
    start = api.register_times[0]
    assert [t - start for t in api.register_times] == [0, 3]
    assert api.heartbeat_times == []  # re-registered without waiting for a heartbeat's 404


def test_announce_host() -> None:
    from flashback.daemon.announce import announce_host

    assert announce_host("192.0.2.7", "http://tracker:3000") == "192.0.2.7"
    assert announce_host("127.0.0.1", None) == "127.0.0.1"
    # a wildcard is no address to dial: the route towards the tracker is
    assert announce_host("0.0.0.0", "http://127.0.0.1:3000") == "127.0.0.1"
    assert announce_host("0.0.0.0", None) == "127.0.0.1"
    assert announce_host("0.0.0.0", "http://unresolvable.invalid:3000") == "127.0.0.1"
