"""The sans-IO registry, with plain numbers for time."""

from __future__ import annotations

from typing import Any, cast

from flashback.protocol.messages import Candidate, PeerJoined, PeerLeft, PeerUpdated
from flashback.protocol.registry import MIN_BACKLOG_CHANGES, Registry, clock_seq, rfc3339_millis


def join(registry: Registry, peer_id: str, now: float, **overrides: Any) -> list[Any]:
    fields: dict[str, Any] = {
        "name": peer_id,
        "host": "127.0.0.1",
        "port": 8000,
        "capabilities": {},
    }
    fields.update(overrides)
    return registry.register(peer_id, now=now, **fields)


def test_join_update_leave_number_changes_in_order() -> None:
    registry = Registry(30, start_seq=100)
    [joined] = join(registry, "a", 0)
    assert isinstance(joined, PeerJoined) and joined.seq == 101
    assert join(registry, "a", 1) == []  # same fields: a refresh, not a change
    [updated] = join(registry, "a", 2, port=9000)
    assert isinstance(updated, PeerUpdated) and updated.seq == 102
    assert updated.peer.port == 9000
    [left] = registry.leave("a", 3)
    assert left == PeerLeft(103, "a", "left")
    assert registry.leave("a", 4) == []
    assert registry.seq == 103


def test_heartbeat_is_not_a_change_but_defers_expiry() -> None:
    registry = Registry(30)
    join(registry, "a", 0)
    assert registry.heartbeat("a", 20)
    assert not registry.heartbeat("ghost", 20)
    assert registry.seq == 1
    assert registry.expire(49.9) == []
    [left] = registry.expire(50)
    assert left == PeerLeft(2, "a", "expired")
    assert "a" not in registry
    assert not registry.heartbeat("a", 51)


def test_a_linked_peer_never_expires_and_its_ttl_restarts_at_detach() -> None:
    registry = Registry(10)
    join(registry, "a", 0)
    registry.attach("a")
    registry.attach("a")
    assert registry.expire(100) == []
    info = registry.get("a", 100)
    assert info is not None and info.last_seen == rfc3339_millis(100)
    registry.detach("a", 100)
    assert registry.expire(200) == []  # one link still open
    registry.detach("a", 200)
    assert registry.expire(209) == []
    assert [cast(PeerLeft, c).peer_id for c in registry.expire(210)] == ["a"]


def test_changes_since_is_the_log_of_its_changes() -> None:
    """The log's rules are tests/test_feed.py's; here: the registry logs every change."""
    registry = Registry(30, start_seq=1000, backlog_changes=3)
    join(registry, "a", 0)
    join(registry, "a", 1, port=9000)
    registry.leave("a", 2)
    assert [type(c).__name__ for c in registry.changes_since(1000) or []] == [
        "PeerJoined",
        "PeerUpdated",
        "PeerLeft",
    ]
    assert registry.changes_since(registry.seq) == []
    fresh = Registry(30, start_seq=clock_seq())
    assert fresh.changes_since(fresh.seq - 1) is None


def test_backlog_holds_at_least_ten_thousand_changes() -> None:
    registry = Registry(30, start_seq=0)
    for i in range(MIN_BACKLOG_CHANGES + 500):
        join(registry, "a", i, port=1 + i % 2)
    last = registry.seq
    missed = registry.changes_since(last - MIN_BACKLOG_CHANGES)
    assert missed is not None and len(missed) == MIN_BACKLOG_CHANGES
    assert [c.seq for c in missed[:2]] == [
        last - MIN_BACKLOG_CHANGES + 1,
        last - MIN_BACKLOG_CHANGES + 2,
    ]


def test_snapshot_and_times() -> None:
    registry = Registry(30, start_seq=5, wall_offset_s=1_700_000_000)
    join(registry, "a", 0.25, capabilities={"x": 1})
    snap = registry.snapshot(1)
    assert snap.seq == 6
    [peer] = snap.peers
    assert peer.registered_at == "2023-11-14T22:13:20.250Z"
    assert peer.capabilities == {"x": 1}
    assert rfc3339_millis(0) == "1970-01-01T00:00:00.000Z"


def test_clock_seq_is_monotone_enough() -> None:
    assert clock_seq() > 1_600_000_000 * 10**6
    assert clock_seq() < 2**53  # exact in a JSON double


def test_direct_is_registered_and_a_reflection_is_a_change_only_when_it_moved() -> None:
    registry = Registry(30, start_seq=0)
    direct = (Candidate("192.168.1.5", 4000),)
    [joined] = join(registry, "a", 0, direct=direct)
    assert joined.peer.direct == direct and joined.peer.reflexive is None
    assert registry.reflect("ghost", Candidate("203.0.113.7", 1), 1) == []
    [seen] = registry.reflect("a", Candidate("203.0.113.7", 40000), 1)
    assert isinstance(seen, PeerUpdated) and seen.peer.reflexive == Candidate("203.0.113.7", 40000)
    # every 25 s the same address again: not one event
    for tick in range(2, 12):
        assert registry.reflect("a", Candidate("203.0.113.7", 40000), tick * 25) == []
    assert join(registry, "a", 300, direct=direct) == []  # the re-registration keeps it
    [moved] = registry.reflect("a", Candidate("203.0.113.7", 40001), 301)
    assert isinstance(moved, PeerUpdated)
    assert moved.peer.reflexive == Candidate("203.0.113.7", 40001)
    [updated] = join(registry, "a", 302, direct=(Candidate("192.168.1.5", 4001),))
    assert updated.peer.reflexive is None and registry.seq == 4
