"""The peer book, the LAN rules and the merged directory (§12), with plain values."""

from __future__ import annotations

import json

import pytest

from flashback.protocol.book import MAX_BOOK_FILE_BYTES, Book, BookDamaged
from flashback.protocol.directory import KnownPeer, find, merge
from flashback.protocol.lan import (
    MAX_TXT_BYTES,
    Ignored,
    LanPeer,
    LanTable,
    instance_label,
    parse_announcement,
    txt_record,
)
from flashback.protocol.messages import Candidate, PeerInfo

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
FP_C = "sha256:" + "c" * 64


def fp(n: int) -> str:
    return f"sha256:{n:064x}"


# -- the book ---------------------------------------------------------------------


def test_record_keeps_old_candidates_and_id_when_the_new_reach_says_nothing() -> None:
    book = Book()
    book.record(FP_A, name="alice", peer_id="p1", candidates=(Candidate("192.0.2.1", 7),), now=1)
    book.record(FP_A, name="alice2", now=5)
    entry = book.get(FP_A)
    assert entry is not None
    assert (entry.peer_id, entry.name, entry.candidates, entry.last_seen) == (
        "p1",
        "alice2",
        (Candidate("192.0.2.1", 7),),
        5,
    )


def test_the_least_recently_seen_is_evicted_at_capacity() -> None:
    book = Book(capacity=3)
    for n in range(3):
        assert book.record(fp(n), name=f"p{n}", now=n) == []
    book.record(fp(0), name="p0", now=10)  # seen again: now the newest
    evicted = book.record(fp(3), name="p3", now=11)
    assert [e.fingerprint for e in evicted] == [fp(1)]
    assert [e.fingerprint for e in book.entries()] == [fp(2), fp(0), fp(3)]


def test_strangers_that_only_connected_to_us_cannot_push_out_the_peers_we_reached() -> None:
    """Peers that connected to us (any tracker-listed key may) and peers we reached
    share the book fairly: past capacity the heavier kind's oldest goes. On the code
    before, 512 strangers each connecting once emptied the book of everyone we had
    reached."""
    book = Book(capacity=10)
    for n in range(4):
        book.record(fp(n), name=f"friend{n}", now=n)  # reached (our own action)
    for n in range(100, 140):  # a flood of strangers that only connected to us
        book.record(fp(n), name=f"s{n}", now=n, reached=False)
    kept = {e.fingerprint for e in book.entries()}
    assert {fp(n) for n in range(4)} <= kept
    assert len(book) == 10
    assert fp(139) in kept and fp(100) not in kept  # the flood rotates in its own part
    # once reached, an entry counts as reached, whoever records it later
    book.record(fp(139), name="s139", now=200)
    book.record(fp(139), name="s139", now=201, reached=False)
    entry = book.get(fp(139))
    assert entry is not None and entry.reached
    # and the kind survives the file form
    again = Book.loads(book.dumps(), capacity=10)
    assert [(e.fingerprint, e.reached) for e in again.entries()] == [
        (e.fingerprint, e.reached) for e in book.entries()
    ]


def test_find_by_fingerprint_then_id_then_name_newest_first() -> None:
    book = Book()
    book.record(FP_A, name="alice", peer_id="p1", now=1)
    book.record(FP_B, name="alice", now=2)
    book.record(FP_C, name="carol", peer_id="alice", now=3)
    assert [e.fingerprint for e in book.find(FP_A)] == [FP_A]
    assert [e.fingerprint for e in book.find("alice")] == [FP_C]  # a peer id wins over names
    assert [e.fingerprint for e in book.find("p1")] == [FP_A]
    book.forget(FP_C)
    assert [e.fingerprint for e in book.find("alice")] == [FP_B, FP_A]
    assert book.find("nobody") == []


def test_record_refuses_what_is_not_a_peer() -> None:
    book = Book()
    for bad in ({"fingerprint": "sha256:xyz"}, {"name": ""}, {"name": "a\x1bb"}):
        kwargs = {"fingerprint": FP_A, "name": "ok"} | bad
        with pytest.raises(ValueError):
            book.record(kwargs.pop("fingerprint"), name=kwargs["name"], now=0)
    assert len(book) == 0


def test_the_file_form_round_trips_and_a_damaged_one_is_refused() -> None:
    book = Book()
    book.record(FP_A, name="älice", peer_id="p1", candidates=(Candidate("2001:db8::1", 9),), now=2)
    book.record(FP_B, name="bob", now=1)
    again = Book.loads(book.dumps())
    assert again.entries() == book.entries()
    for raw, reason in (
        (b"{", "not JSON"),
        (b"[]", "no 'peers' list"),
        (b'{"version": 2, "peers": []}', "version 2"),
        (b'{"version": 1, "peers": [{"fingerprint": "x"}]}', "no valid fingerprint"),
        (b" " * (MAX_BOOK_FILE_BYTES + 1), "over 1024 KiB"),
        (b'{"version": 1, "peers": [1e999]}', "not JSON"),
    ):
        with pytest.raises(BookDamaged, match=reason):
            Book.loads(raw)
    bad_candidate = json.loads(book.dumps())
    bad_candidate["peers"][0]["candidates"] = [{"host": "example.com", "port": 1}]
    with pytest.raises(BookDamaged, match="IP address literal"):
        Book.loads(json.dumps(bad_candidate).encode())


def test_the_trackers_vouching_sticks_survives_the_file_and_is_never_guessed() -> None:
    book = Book()
    book.record(FP_A, name="alice", peer_id="p1", now=1, vouched=True)  # the tracker listed it
    book.record(FP_A, name="alice", now=2)  # reached again from the LAN: stays vouched
    book.record(FP_B, name="bob", now=3)  # a LAN peer reached: not vouched
    assert book.vouched() == {FP_A}
    again = Book.loads(book.dumps())
    assert again.vouched() == {FP_A} and again.entries() == book.entries()
    old_file = json.loads(book.dumps())  # a book written before the mark: nobody vouched
    for entry in old_file["peers"]:
        del entry["vouched"]
    assert Book.loads(json.dumps(old_file).encode()).vouched() == frozenset()
    old_file["peers"][0]["vouched"] = "yes"
    with pytest.raises(BookDamaged, match="non-boolean vouched"):
        Book.loads(json.dumps(old_file).encode())


def test_a_hand_grown_file_keeps_its_newest_entries() -> None:
    big = Book(capacity=10)
    for n in range(10):
        big.record(fp(n), name=f"p{n}", now=n)
    small = Book.loads(big.dumps(), capacity=3)
    assert [e.fingerprint for e in small.entries()] == [fp(7), fp(8), fp(9)]


# -- LAN announcements -----------------------------------------------------------


def props(**values: str | bytes) -> dict[bytes, bytes | None]:
    base: dict[str, str | bytes] = {"id": "", "name": "alice", "fp": FP_A, **values}
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in base.items()}


def announce(
    properties: dict[bytes, bytes | None],
    *,
    addresses: tuple[str, ...] = ("192.0.2.5",),
    port: object = 4242,
    size: int = 100,
) -> LanPeer:
    return parse_announcement(
        "x._flashback._tcp.local.",
        properties,
        addresses,
        port,  # type: ignore[arg-type]  # a stranger may send any type
        text_bytes=size,
    )


def test_a_good_announcement_becomes_a_lan_peer() -> None:
    peer = announce(props(id="p1"), addresses=("192.0.2.5", "2001:db8::5", "192.0.2.5"))
    assert (peer.peer_id, peer.name, peer.fingerprint) == ("p1", "alice", FP_A)
    assert peer.candidates == (Candidate("192.0.2.5", 4242), Candidate("2001:db8::5", 4242))
    assert announce(props()).peer_id is None  # empty id: no tracker peer id


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"properties": props(fp="sha256:" + "A" * 64)}, "'fp' is not a fingerprint"),
        ({"properties": props(name="ev\x1b[2Jil")}, "'name' is not"),
        ({"properties": props(name="x" * 65)}, "'name' is not"),
        ({"properties": props(name="")}, "'name' is not"),
        ({"properties": props(name=b"\xff\xfe")}, "not UTF-8"),
        ({"properties": props(id="a\nb")}, "'id' is not"),
        ({"properties": props(name="x" * 300)}, "TXT 'name' of 300 bytes"),
        ({"properties": props(), "size": MAX_TXT_BYTES + 1}, "TXT record of 1025 bytes"),
        ({"properties": {b"name": b"alice"}}, "no TXT 'fp'"),
        ({"properties": props(), "port": 0}, "port 0"),
        ({"properties": props(), "port": 70000}, "port 70000"),
        ({"properties": props(), "port": None}, "port None"),
        (
            {
                "properties": props(),
                "addresses": (
                    "127.0.0.1",
                    "::1",
                    "0.0.0.0",
                    "fe80::1",
                    "224.0.0.251",
                    "fe80::1%2",
                    "nonsense",
                ),
            },
            "no dialable address",
        ),
    ],
)
def test_hostile_announcements_are_ignored(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(Ignored, match=reason):
        announce(**kwargs)  # type: ignore[arg-type]  # hostile values of any type, on purpose


def test_our_txt_and_label_pass_our_own_checks() -> None:
    txt = txt_record(None, "Bob's laptop", FP_B)
    label = instance_label("Bob's laptop ☃", FP_B)
    assert label == "Bob-s-laptop-bbbbbbbbbbbb" and len(label.encode()) <= 63
    assert instance_label("☃☃", FP_B) == "flashback-bbbbbbbbbbbb"
    peer = announce({k.encode(): v.encode() for k, v in txt.items()})
    assert (peer.name, peer.peer_id, peer.fingerprint) == ("Bob's laptop", None, FP_B)


def lan_peer(service: str, address: str, fingerprint: str = FP_A, name: str = "x") -> LanPeer:
    return LanPeer(service, None, name, fingerprint, (Candidate(address, 1),))


def test_a_flood_from_one_address_rotates_in_its_own_share() -> None:
    table = LanTable(FP_C, capacity=6, per_address=2)
    table.seen(lan_peer("honest", "192.0.2.1"))
    evicted = [table.seen(lan_peer(f"f{n}", "192.0.2.66", fp(n))) for n in range(50)]
    assert len(table) == 3
    assert {p.service for p in table.peers()} == {"honest", "f48", "f49"}
    assert [p.service for p in evicted[2]] == ["f0"]


def test_a_flood_from_many_addresses_evicts_the_heaviest_not_the_newcomer() -> None:
    table = LanTable(None, capacity=4, per_address=3)
    for n in range(3):
        table.seen(lan_peer(f"f{n}", "192.0.2.66", fp(n)))
    table.seen(lan_peer("honest", "192.0.2.1"))
    evicted = table.seen(lan_peer("late", "192.0.2.2"))
    assert [p.service for p in evicted] == ["f0"]
    assert {p.service for p in table.peers()} == {"f1", "f2", "honest", "late"}


def test_our_own_announcement_is_not_listed_and_gone_removes() -> None:
    table = LanTable(FP_A)
    assert table.seen(lan_peer("me", "192.0.2.1", FP_A)) == [] and len(table) == 0
    table.seen(lan_peer("bob", "192.0.2.2", FP_B))
    gone = table.gone("bob")
    assert gone is not None and gone.fingerprint == FP_B
    assert table.gone("bob") is None and len(table) == 0


# -- the merged directory --------------------------------------------------------


def tracker_peer(peer_id: str, name: str, fingerprint: str | None) -> PeerInfo:
    return PeerInfo(
        peer_id,
        name,
        "127.0.0.1",
        1,
        fingerprint=fingerprint,
        direct=(Candidate("198.51.100.1", 5),),
    )


def test_one_row_per_fingerprint_and_the_most_live_source_shows() -> None:
    book = Book()
    book.record(
        FP_A, name="alice-old", peer_id="p-old", candidates=(Candidate("192.0.2.9", 9),), now=1
    )
    book.record(FP_C, name="carol", now=2)
    lan = [lan_peer("a", "192.0.2.1", FP_A, "alice"), lan_peer("b", "192.0.2.2", FP_B, "bob")]
    rows = merge(
        [tracker_peer("p1", "alice", FP_A), tracker_peer("p9", "nofp", None)], lan, book.entries()
    )
    shown = {(r.name, r.source) for r in rows}
    assert shown == {("alice", "tracker"), ("bob", "lan"), ("carol", "book"), ("nofp", "tracker")}
    alice = next(r for r in rows if r.fingerprint == FP_A)
    assert alice.peer_id == "p1"
    assert alice.candidates == (
        Candidate("198.51.100.1", 5),
        Candidate("192.0.2.1", 1),
        Candidate("192.0.2.9", 9),
    )
    only_lan_and_book = merge([], lan[:1], book.entries())
    alice = next(r for r in only_lan_and_book if r.fingerprint == FP_A)
    assert (alice.source, alice.name, alice.peer_id) == ("lan", "alice", "p-old")


def test_a_key_changed_under_the_same_peer_id_is_one_peer_not_two() -> None:
    book = Book()
    book.record(FP_A, name="alice", peer_id="p1", now=1)  # reached before, with the old key
    rows = merge([tracker_peer("p1", "alice", FP_B)], [], book.entries())
    assert [(r.fingerprint, r.source) for r in rows] == [(FP_B, "tracker")]
    assert len(find(rows, "alice")) == 1  # the pin check refuses it, not "several peers"


def test_find_takes_a_fingerprint_a_peer_id_or_a_name() -> None:
    rows = [
        KnownPeer("p1", "alice", FP_A, (), "tracker"),
        KnownPeer(None, "alice", FP_B, (), "lan"),
        KnownPeer(None, "p1", FP_C, (), "book"),
    ]
    assert [r.fingerprint for r in find(rows, FP_B)] == [FP_B]
    assert [r.fingerprint for r in find(rows, "p1")] == [FP_A]  # the id, not the name "p1"
    assert [r.fingerprint for r in find(rows, "alice")] == [FP_A, FP_B]
    assert find(rows, "nobody") == []
