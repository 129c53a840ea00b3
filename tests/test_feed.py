"""The feed core's rules, once, with plain numbers (no sockets, no clock)."""

from __future__ import annotations

import pytest

from flashback.protocol.feed import (
    ChangeLog,
    LinkCount,
    Listing,
    forwarded,
    is_change,
    not_online_text,
    place,
    refusal,
    route_relay,
)
from flashback.protocol.messages import (
    Candidate,
    Change,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    StreamError,
    StreamRequest,
)
from flashback.protocol.mirror import FeedMirror


def _peer(peer_id: str) -> PeerInfo:
    return PeerInfo(peer_id, peer_id, "h", 1)


def _changes(first: int, last: int) -> list[Change]:
    return [PeerLeft(seq, f"p{seq}", "left") for seq in range(first, last + 1)]


def _log(first: int, last: int, backlog: int = 100) -> ChangeLog:
    log = ChangeLog(backlog, seq=first - 1)
    for change in _changes(first, last):
        log.append(change)
    return log


# -- what counts as a change -----------------------------------------------------

BASE = Listing("laptop", "10.0.0.1", 8000, {"stream": True, "v": [1, 2]}, "sha256:" + "a" * 64)


def test_a_new_peer_is_a_change_and_the_same_listing_is_not() -> None:
    assert is_change(None, BASE)
    same = Listing("laptop", "10.0.0.1", 8000, {"v": [1, 2], "stream": True}, BASE.fingerprint)
    assert not is_change(BASE, same)  # key order is not a change


@pytest.mark.parametrize(
    "changed",
    [
        Listing("desk", "10.0.0.1", 8000, BASE.capabilities, BASE.fingerprint),
        Listing("laptop", "10.0.0.2", 8000, BASE.capabilities, BASE.fingerprint),
        Listing("laptop", "10.0.0.1", 8001, BASE.capabilities, BASE.fingerprint),
        Listing("laptop", "10.0.0.1", 8000, {"stream": False, "v": [1, 2]}, BASE.fingerprint),
        Listing("laptop", "10.0.0.1", 8000, BASE.capabilities, None),
        Listing(
            "laptop",
            "10.0.0.1",
            8000,
            BASE.capabilities,
            BASE.fingerprint,
            (Candidate("10.0.0.1", 4000),),
        ),
        BASE.reflected(Candidate("203.0.113.7", 40000)),
    ],
)
def test_every_listed_field_counts(changed: Listing) -> None:
    assert is_change(BASE, changed)


def test_the_canonical_text_round_trips_and_ignores_last_seen() -> None:
    assert Listing.from_canonical(BASE.canonical()) == BASE
    # records written before fingerprints existed have none
    assert Listing.from_canonical('{"name":"n","host":"h","port":1,"capabilities":{}}') == (
        Listing("n", "h", 1, {}, None)
    )
    seen_once = BASE.peer_info("p", registered_at="t0", last_seen="t1")
    seen_later = BASE.peer_info("p", registered_at="t0", last_seen="t9")
    assert not is_change(Listing.of(seen_once), Listing.of(seen_later))


DIRECT = (Candidate("192.168.1.5", 4000), Candidate("2001:db8::5", 4000))
SEEN = Candidate("203.0.113.7", 40123)


def test_direct_and_reflexive_round_trip_and_peer_info_carries_them() -> None:
    listing = Listing("n", "h", 1, {}, None, DIRECT, SEEN)
    assert Listing.from_canonical(listing.canonical()) == listing
    info = listing.peer_info("p", registered_at="t0", last_seen="t1")
    assert info.direct == DIRECT and info.reflexive == SEEN
    assert info.dump()["reflexive"] == {"host": "203.0.113.7", "port": 40123}
    assert Listing.of(info) == listing
    # a peer without them keeps the text it had before they existed
    assert "direct" not in BASE.canonical() and "reflexive" not in BASE.canonical()


def test_a_new_reflexive_address_is_a_change_the_same_one_is_not() -> None:
    seen = BASE.reflected(SEEN)
    assert is_change(BASE, seen)
    assert not is_change(seen, BASE.reflected(Candidate("203.0.113.7", 40123)))
    assert is_change(seen, BASE.reflected(Candidate("203.0.113.7", 40124)))


def test_a_reregistration_keeps_the_reflexive_address_while_direct_stays() -> None:
    old = Listing("n", "h", 1, {}, None, DIRECT, SEEN)
    again = Listing("n2", "h", 1, {}, None, DIRECT)  # a registration never names it
    assert again.reregistered(old).reflexive == SEEN
    assert again.reregistered(old).name == "n2"
    moved = Listing("n", "h", 1, {}, None, (Candidate("192.168.1.5", 4001),))
    assert moved.reregistered(old).reflexive is None  # a mapping of a port no longer used
    assert again.reregistered(None).reflexive is None


# -- seq order and the log -------------------------------------------------------


def test_place_a_change_after_the_seq_held() -> None:
    assert [place(10, seq) for seq in (9, 10, 11, 12)] == ["repeat", "repeat", "next", "gap"]


def test_the_log_takes_only_the_next_change() -> None:
    log = _log(101, 103)
    assert log.seq == 103
    with pytest.raises(ValueError):
        log.append(PeerLeft(105, "x", "left"))
    with pytest.raises(ValueError):
        log.append(PeerLeft(103, "x", "left"))
    assert log.seq == 103


def test_changes_since_returns_exactly_what_was_missed() -> None:
    log = _log(1001, 1005)
    assert [c.seq for c in log.changes_since(1002) or []] == [1003, 1004, 1005]
    assert [c.seq for c in log.changes_since(1000) or []] == [1001, 1002, 1003, 1004, 1005]
    assert log.changes_since(1005) == []


def test_changes_since_asks_for_a_snapshot_when_it_cannot_vouch() -> None:
    log = _log(1001, 1005, backlog=3)
    assert log.changes_since(None) is None
    assert log.changes_since(1001) is None  # 1002 fell out of the backlog
    assert [c.seq for c in log.changes_since(1002) or []] == [1003, 1004, 1005]
    assert log.changes_since(1006) is None  # from the future
    assert log.changes_since(0) is None
    fresh = ChangeLog(3, seq=5000)
    assert fresh.changes_since(4999) is None  # nothing held from before our start
    assert fresh.changes_since(5000) == []


def test_the_backlog_is_bounded_and_stays_contiguous() -> None:
    log = _log(1, 25_000, backlog=16_384)
    missed = log.changes_since(25_000 - 16_384)
    assert missed is not None and len(missed) == 16_384
    assert (missed[0].seq, missed[-1].seq) == (25_000 - 16_384 + 1, 25_000)
    assert log.changes_since(25_000 - 16_385) is None


def test_reset_keeps_only_history_that_is_contiguous_and_ends_at_seq() -> None:
    log = ChangeLog(10)
    history = [*_changes(5, 5), *_changes(7, 8)]  # 6 is missing
    log.reset(8, history)
    assert [c.seq for c in log.changes_since(6) or []] == [7, 8]
    assert log.changes_since(5) is None
    log.reset(20, history)  # a log that stops short of seq is no backlog
    assert log.seq == 20 and log.changes_since(8) is None and log.changes_since(20) == []
    with pytest.raises(ValueError):
        ChangeLog(0)


def test_the_mirror_follows_numbered_changes_and_refuses_gaps() -> None:
    mirror = FeedMirror(3)
    mirror.reset(10, [_peer("a")])
    assert mirror.changes_since(9) is None  # nothing held before the reset
    assert mirror.apply(PeerJoined(11, _peer("b")))
    assert mirror.apply(PeerLeft(12, "a", "left"))
    assert mirror.apply(PeerLeft(12, "a", "left"))  # a repeat is ignored
    assert not mirror.apply(PeerLeft(14, "b", "left"))  # 13 is missing
    assert mirror.seq == 12 and list(mirror.peers) == ["b"]
    assert [c.seq for c in mirror.changes_since(10) or []] == [11, 12]
    snapshot = mirror.snapshot()
    assert (snapshot.seq, [p.peer_id for p in snapshot.peers]) == (12, ["b"])


# -- links -----------------------------------------------------------------------


def test_a_peer_stays_linked_until_its_last_link_closes() -> None:
    links = LinkCount()
    links.attach("a")
    links.attach("a")
    links.attach("b")
    links.detach("a")
    assert links.is_linked("a") and sorted(links) == ["a", "b"]
    links.detach("a")
    links.detach("a")  # one too many is harmless
    assert not links.is_linked("a") and list(links) == ["b"] and len(links) == 1


# -- the relay -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("online", "linked_here", "relayed", "route"),
    [
        (True, True, False, "deliver"),
        (True, False, False, "forward"),  # linked to another instance, maybe
        (False, True, False, "forward"),  # our feed does not know it yet
        (False, False, False, "forward"),  # the backend says whether anyone holds it
        (True, True, True, "deliver"),
        (False, True, True, "deliver"),  # it crossed to us because the link is here
        (True, False, True, "bounce"),  # never forwarded twice: no loops
        (False, False, True, "bounce"),
    ],
)
def test_route_relay(online: bool, linked_here: bool, relayed: bool, route: str) -> None:
    assert route_relay(online=online, linked_here=linked_here, relayed=relayed) == route


def test_forwarded_messages_name_their_sender_and_refusals_never_answer_errors() -> None:
    request = StreamRequest(request_id="r1", path="/a", to="owner")
    assert forwarded(request, "asker") == StreamRequest("r1", "/a", to=None, from_="asker")
    bounce = refusal("r1", request, "unknown_peer", not_online_text("owner"))
    assert bounce == StreamError("r1", "unknown_peer", "peer 'owner' is not online")
    assert refusal("r1", bounce, "unknown_peer", "again") is None
