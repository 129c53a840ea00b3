"""The tunnel's pure rules: join line, keys, session table, routes."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

import pytest

from flashback.protocol.tunnel import (
    KEY_TTL_S,
    MAX_JOIN_LINE_BYTES,
    LineReader,
    OpenTarget,
    RouteMemory,
    Session,
    SessionTable,
    TunnelError,
    direct_probe_accepts,
    is_valid_key,
    join_line,
    new_key,
    parse_join_line,
    parse_open_line,
)


def counting_keys() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: new_key(lambda n: next(counter).to_bytes(n, "big"))


# -- keys and lines -------------------------------------------------------------


def test_keys_are_43_chars_of_urlsafe_base64_and_random() -> None:
    a, b = new_key(), new_key()
    assert a != b
    assert len(a) == 43 and is_valid_key(a)
    assert set(a) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "text",
    ["", "a" * 42, "a" * 44, "+" * 43, "a" * 42 + "=", "A" * 42 + "B"],  # last: non-canonical bits
)
def test_invalid_keys(text: str) -> None:
    assert not is_valid_key(text)


def test_join_line_round_trip_and_fits_the_limit() -> None:
    key = new_key()
    line = join_line(key)
    assert len(line) <= MAX_JOIN_LINE_BYTES
    reader = LineReader(MAX_JOIN_LINE_BYTES)
    assert reader.receive_data(line[:10]) is None
    got = reader.receive_data(line[10:] + b"\x16\x03\x01")
    assert got is not None and parse_join_line(got) == key
    assert reader.leftover == b"\x16\x03\x01"  # early TLS bytes are kept, not dropped


@pytest.mark.parametrize(
    "line",
    [
        b"GET / HTTP/1.1",
        b"FLASHBACK-TUNNEL 2 " + b"a" * 43,
        b"FLASHBACK-TUNNEL 1 short",
        b"\xff" * 20,
    ],
)
def test_bad_join_lines(line: bytes) -> None:
    with pytest.raises(TunnelError) as info:
        parse_join_line(line)
    assert info.value.line == b"ERR bad_line\n"


def test_oversized_line_is_refused_before_its_newline() -> None:
    reader = LineReader(MAX_JOIN_LINE_BYTES)
    assert reader.receive_data(b"x" * 127) is None
    with pytest.raises(TunnelError) as info:
        reader.receive_data(b"x")
    assert info.value.code == "line_too_long"
    with pytest.raises(TunnelError):
        LineReader(8).receive_data(b"123456789\n")


def test_eof_before_newline() -> None:
    with pytest.raises(TunnelError) as info:
        LineReader(8).receive_data(b"")
    assert info.value.code == "bad_line"


def test_open_lines() -> None:
    assert parse_open_line(b"OPEN peer-server") == OpenTarget("peer-server")
    assert parse_open_line(b"OPEN stream 40123") == OpenTarget("stream", 40123)
    assert OpenTarget("stream", 7).line() == b"OPEN stream 7\n"
    assert OpenTarget("peer-server").line() == b"OPEN peer-server\n"
    for bad in [
        b"OPEN stream 0",
        b"OPEN stream 65536",
        b"OPEN stream " + b"9" * 5000,
        b"OPEN stream -1",
        b"OPEN ssh",
        b"OPEN  peer-server",
        b"open peer-server",
    ]:
        with pytest.raises(TunnelError):
            parse_open_line(bad)


# -- the session table -----------------------------------------------------------


def test_pairing_needs_both_keys_each_once() -> None:
    table = SessionTable(make_key=counting_keys())
    s = table.open(request_id="r1", client_peer="bob", server_peer="alice", now=100.0)
    assert s.keys["client"] != s.keys["server"]
    first = table.join(s.keys["server"], now=101.0)
    assert (first.role, first.paired) == ("server", False)
    second = table.join(s.keys["client"], now=102.0)
    assert (second.role, second.paired, second.session) == ("client", True, s)
    with pytest.raises(TunnelError) as third:  # a third joiner with either key
        table.join(s.keys["client"], now=103.0)
    assert third.value.code == "used"
    assert table.paired_count == 1


def test_unknown_key() -> None:
    with pytest.raises(TunnelError) as info:
        SessionTable().join(new_key(), now=0.0)
    assert info.value.code == "unknown"


def test_key_lives_exactly_30_seconds() -> None:
    table = SessionTable()
    s = table.open(request_id="r", client_peer="b", server_peer="a", now=10.0)
    assert KEY_TTL_S == 30.0
    table.join(s.keys["server"], now=10.0 + 29.999)  # still valid
    with pytest.raises(TunnelError) as info:
        table.join(s.keys["client"], now=40.0)
    assert info.value.code == "expired"
    assert len(table) == 0  # the half-joined session went with it


def test_expire_drops_unpaired_sessions_only() -> None:
    table = SessionTable()
    pending = table.open(request_id="p", client_peer="b", server_peer="a", now=0.0)
    paired = table.open(request_id="q", client_peer="b", server_peer="a", now=0.0)
    table.join(paired.keys["server"], now=1.0)
    table.join(paired.keys["client"], now=1.0)
    assert table.expire(29.0) == []
    assert table.expire(30.0) == [pending]
    assert len(table) == 1
    with pytest.raises(TunnelError) as info:
        table.join(pending.keys["client"], now=30.0)
    assert info.value.code == "used"  # remembered as dead until it would have expired
    table.expire(31.0)
    with pytest.raises(TunnelError) as later:
        table.join(pending.keys["client"], now=31.0)
    assert later.value.code == "unknown"


def pair(table: SessionTable, session: Session, now: float = 0.0) -> None:
    table.join(session.keys["server"], now=now)
    table.join(session.keys["client"], now=now)


def test_table_is_bounded_and_busy_only_when_every_session_is_paired() -> None:
    table = SessionTable(max_sessions=2)
    a = table.open(request_id="1", client_peer="b", server_peer="a", now=0.0)
    pair(table, a)
    b = table.open(request_id="2", client_peer="c", server_peer="a", now=0.0)
    pair(table, b)
    with pytest.raises(TunnelError) as info:
        table.open(request_id="3", client_peer="d", server_peer="a", now=1.0)
    assert info.value.code == "busy"
    table.close(a)
    table.open(request_id="3", client_peer="d", server_peer="a", now=1.0)
    assert len(table) == 2
    table.close(b)
    # expired sessions make room by themselves
    assert table.open(request_id="4", client_peer="b", server_peer="a", now=31.0)
    assert len(table) == 1


def test_one_requester_cannot_take_the_pending_sessions() -> None:
    """1,000 requests from one peer, then honest ones: they get sessions (the
    flood took 255 of 256, and honest requesters heard ``busy``)."""
    table = SessionTable(max_sessions=256, max_pending_per_peer=16)
    flood = [
        table.open(request_id=str(i), client_peer="mallory", server_peer="m2", now=0.0)
        for i in range(1000)
    ]
    assert table.pending_of("mallory") == 16  # each new one replaced its own oldest
    assert len(table) == 16
    honest = [
        table.open(request_id="h", client_peer=f"honest{i}", server_peer="alice", now=1.0)
        for i in range(240)
    ]
    assert len(table) == 256
    # the table is full: the next newcomer pushes out the heaviest's OLDEST pending one
    newcomer = table.open(request_id="n", client_peer="newcomer", server_peer="alice", now=2.0)
    assert table.evicted is flood[1000 - 16]
    assert table.pending_of("mallory") == 15 and table.pending_of("newcomer") == 1
    with pytest.raises(TunnelError) as info:  # its key is dead, and says why
        table.join(flood[1000 - 16].keys["client"], now=2.0)
    assert info.value.code == "busy"
    table.join(newcomer.keys["server"], now=2.0)
    assert table.join(newcomer.keys["client"], now=2.0).paired
    assert all(table.find("h", s.client_peer) is s for s in honest)


def test_paired_sessions_are_capped_per_peer() -> None:
    """A byte every 10 s keeps a paired session alive: one peer holds its share only."""
    table = SessionTable(max_sessions=256, max_paired_per_peer=4)
    for i in range(4):
        pair(table, table.open(request_id=str(i), client_peer="m", server_peer="m2", now=0.0))
    with pytest.raises(TunnelError) as info:
        table.open(request_id="5", client_peer="m", server_peer="alice", now=0.0)
    assert info.value.code == "busy"
    with pytest.raises(TunnelError):  # nor as the owner side, under another requester id
        table.open(request_id="5", client_peer="m3", server_peer="m2", now=0.0)
    # pending ones opened before the cap was reached cannot pair past it
    table2 = SessionTable(max_sessions=256, max_paired_per_peer=1)
    s1 = table2.open(request_id="1", client_peer="m", server_peer="x", now=0.0)
    s2 = table2.open(request_id="2", client_peer="m", server_peer="y", now=0.0)
    pair(table2, s1)
    table2.join(s2.keys["server"], now=0.0)
    with pytest.raises(TunnelError) as late:
        table2.join(s2.keys["client"], now=0.0)
    assert late.value.code == "busy" and len(table2) == 1
    assert table.open(request_id="h", client_peer="bob", server_peer="alice", now=0.0)
    table.close(cast(Session, table.find("0", "m")))  # a closed one gives its share back
    assert table.paired_of("m") == 3
    assert table.open(request_id="6", client_peer="m", server_peer="alice", now=0.0)


def test_a_declined_session_tells_late_joiners_why() -> None:
    table = SessionTable()
    s = table.open(request_id="r", client_peer="bob", server_peer="alice", now=0.0)
    assert table.find("r", "bob") is s and table.find("r", "eve") is None
    table.close(s, code="refused")
    with pytest.raises(TunnelError) as info:
        table.join(s.keys["client"], now=1.0)
    assert info.value.line == b"ERR refused\n"


def test_closing_a_session_kills_its_unused_key() -> None:
    table = SessionTable()
    s = table.open(request_id="r", client_peer="b", server_peer="a", now=0.0)
    table.join(s.keys["server"], now=1.0)
    table.close(s)
    with pytest.raises(TunnelError) as info:
        table.join(s.keys["client"], now=2.0)
    assert info.value.code == "used"


@pytest.mark.parametrize(
    ("header", "configured", "expected"),
    [
        ("tracker.example:3000", None, "tracker.example"),
        ("192.0.2.1:3000", None, "192.0.2.1"),
        ("[2001:db8::1]:3000", None, "2001:db8::1"),
        ("tracker.example", None, "tracker.example"),
        ("anything:1", "relay.example", "relay.example"),
        (None, None, None),
        ("evil/path:3000", None, None),
        ("a b:1", None, None),
        ("[]:1", None, None),
    ],
)
def test_advertise_host(header: str | None, configured: str | None, expected: str | None) -> None:
    from flashback.protocol.tunnel import advertise_host

    assert advertise_host(header, configured) == expected


# -- routes --------------------------------------------------------


def test_route_memory_expires_but_keeps_the_last_used() -> None:
    routes = RouteMemory(ttl_s=60.0)
    assert routes.recall("a", 0.0) is None
    routes.remember("a", "relay", now=0.0)
    assert routes.recall("a", 59.0) == "relay"
    assert routes.recall("a", 60.0) is None
    assert routes.last_used("a") == "relay"
    routes.forget("a")
    assert routes.last_used("a") is None


def test_direct_probe_must_name_the_peer() -> None:
    assert direct_probe_accepts({"peer_id": "p1", "name": "alice"}, "p1")
    assert not direct_probe_accepts({"peer_id": "p2"}, "p1")
    assert not direct_probe_accepts(["p1"], "p1")
    assert not direct_probe_accepts(None, "p1")


# -- the websocket messages of §6.2 -------------------------------------------------


def test_tunnel_messages_round_trip() -> None:
    from flashback.protocol.messages import (
        TunnelErrorMessage,
        TunnelInvite,
        TunnelRequest,
        parse,
    )

    key = new_key()
    invite = TunnelInvite(
        request_id="r1",
        from_="peer-b",
        fingerprint="sha256:" + "ab" * 32,
        role="client",
        host="tracker.example",
        port=3001,
        key=key,
    )
    wire = invite.encode()
    assert '"from":"peer-b"' in wire and '"role":"client"' in wire
    assert parse(wire) == invite
    assert key not in repr(invite)
    assert parse(TunnelRequest("r1", "peer-a").encode()) == TunnelRequest("r1", "peer-a")
    decline = TunnelErrorMessage("r1", "refused", "no", to="peer-b")
    assert parse(decline.encode()) == decline
    busy = parse({"type": "tunnel-error", "request_id": "r", "code": "busy"})
    assert isinstance(busy, TunnelErrorMessage) and busy.to is None


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "tunnel-request", "request_id": "r"},
        {"type": "tunnel-request", "request_id": "", "to": "p"},
        {
            "type": "tunnel-invite",
            "request_id": "r",
            "from": "p",
            "fingerprint": "x" * 72,
            "role": "client",
            "host": "h",
            "port": 1,
            "key": "k",
        },
        {
            "type": "tunnel-invite",
            "request_id": "r",
            "from": "p",
            "fingerprint": "f",
            "role": "boss",
            "host": "h",
            "port": 1,
            "key": "k",
        },
        {"type": "tunnel-error", "request_id": "r", "code": "c", "to": "a", "from": "b"},
    ],
)
def test_bad_tunnel_messages_are_protocol_errors(frame: dict[str, Any]) -> None:
    from flashback.protocol.messages import ProtocolError, parse

    with pytest.raises(ProtocolError):
        parse(frame)


# -- reflection (§10.2) and where cluster owners dial ---------------------------------


def test_reflect_line_is_parsed_and_answered() -> None:
    from flashback.protocol.messages import Candidate
    from flashback.protocol.tunnel import (
        Reflect,
        addr_line,
        parse_addr_line,
        parse_first_line,
        reflect_line,
    )

    token = "t0K-en_" + "x" * 36
    line = reflect_line(token)
    assert line == b"FLASHBACK-REFLECT 1 " + token.encode() + b"\n"
    assert len(line) <= MAX_JOIN_LINE_BYTES
    assert parse_first_line(line[:-1]) == Reflect(token)
    assert token not in repr(Reflect(token))
    key = new_key()
    assert parse_first_line(join_line(key)[:-1]) == key
    for bad in (b"FLASHBACK-REFLECT 1 ", b"FLASHBACK-REFLECT 1 a b", b"FLASHBACK-REFLECT 1 \xff"):
        with pytest.raises(TunnelError) as info:
            parse_first_line(bad)
        assert info.value.code == "bad_line"
    seen = Candidate("203.0.113.7", 40123)
    assert addr_line(seen) == b"ADDR 203.0.113.7 40123\n"
    assert parse_addr_line(b"ADDR 203.0.113.7 40123") == seen
    assert parse_addr_line(b"ADDR 2001:db8::7 1") == Candidate("2001:db8::7", 1)
    with pytest.raises(TunnelError) as refused:
        parse_addr_line(b"ERR unauthorized")
    assert refused.value.code == "unauthorized"
    for bad in (b"ADDR host 1", b"ADDR 1.2.3.4 0", b"ADDR 1.2.3.4 999999", b"OK"):
        with pytest.raises(TunnelError):
            parse_addr_line(bad)


def test_source_candidate_and_holder() -> None:
    from flashback.protocol.fairshare import share_address as source_holder
    from flashback.protocol.messages import Candidate
    from flashback.protocol.tunnel import source_candidate

    assert source_candidate("::ffff:198.51.100.4", 5000) == Candidate("198.51.100.4", 5000)
    assert source_candidate("2001:db8::1", 5000) == Candidate("2001:db8::1", 5000)
    assert source_candidate("fe80::1%eth0", 5000) is None
    assert source_candidate("198.51.100.4", 0) is None
    assert source_candidate("", 1) is None
    assert source_holder("127.0.0.2") == "127.0.0.2"
    assert source_holder("::ffff:127.0.0.2") == "127.0.0.2"
    # one IPv6 subscriber has a /64: it is one holder, however many addresses it uses
    assert source_holder("2001:db8:1:2::1") == source_holder("2001:db8:1:2:ffff::9")
    assert source_holder("2001:db8:1:2::1") != source_holder("2001:db8:1:3::1")


@pytest.mark.parametrize(
    ("configured", "bind", "expected"),
    [
        ("relay.example", "0.0.0.0", "relay.example"),
        (None, "192.0.2.10", "192.0.2.10"),
        (None, "tracker.internal", "tracker.internal"),
        (None, "0.0.0.0", None),
        (None, "::", None),
        (None, "", None),
    ],
)
def test_a_cluster_owner_dials_what_the_server_names(
    configured: str | None, bind: str, expected: str | None
) -> None:
    from flashback.protocol.tunnel import cluster_tunnel_host

    assert cluster_tunnel_host(configured, bind) == expected


# -- introductions (§10.3 metrics) --------------------------------------------------


def test_introductions_count_once_and_only_from_a_side() -> None:
    from flashback.protocol.introductions import Counted, IntroductionTable

    table = IntroductionTable(window_s=300.0)
    table.introduce("r1", "bob", "alice", now=0.0)
    assert table.report("r1", "eve", "direct", now=1.0) == Counted()  # a stranger
    assert table.report("r1", "bob", "relay", now=1.0) == Counted(True, False)
    assert table.report("r1", "bob", "relay", now=1.5) == Counted()  # repeated
    assert table.report("r1", "alice", "direct", now=2.0) == Counted(False, True)
    assert table.report("r1", "alice", "direct", now=2.0) == Counted()
    table.introduce("r2", "bob", "alice", now=3.0)
    assert table.report("r2", "alice", "direct", now=4.0) == Counted(True, True)
    table.introduce("r3", "bob", "alice", now=5.0)
    assert table.report("r3", "bob", "direct", now=305.0) == Counted()  # too late
    assert len(table) == 3
    table.introduce("r4", "carol", "alice", now=400.0)
    assert len(table) == 1  # the old ones expired


def test_introductions_are_a_fair_share_per_requester() -> None:
    from flashback.protocol.introductions import Counted, IntroductionTable

    table = IntroductionTable(capacity=8, per_requester=4)
    for i in range(100):
        table.introduce(str(i), "mallory", "m2", now=0.0)
    assert len(table) == 4
    assert table.report("99", "mallory", "direct", now=0.0) == Counted(True, True)
    assert table.report("0", "mallory", "direct", now=0.0) == Counted()  # pushed out
    for i in range(5):
        table.introduce("h", f"honest{i}", "alice", now=1.0)
    assert len(table) == 8
    assert table.report("h", "honest0", "relay", now=1.0).introduction  # never the newcomer


def test_unspecified_multicast_and_broadcast_candidates_are_not_dialable() -> None:
    from flashback.protocol.messages import Candidate
    from flashback.protocol.tunnel import dialable

    for host in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"):
        assert not dialable(Candidate(host, 4000)), host
    for host in ("192.168.1.5", "203.0.113.7", "2001:db8::5", "10.0.0.255"):
        assert dialable(Candidate(host, 4000)), host


def test_paired_sessions_are_capped_per_requester_address_too() -> None:
    """Peer ids are free: 16 of them from one address (8 requesters, 8 accomplice
    owners, 32 tunnels each) took all 256 paired sessions on the code before, and
    every honest request was busy. The requester's address has a share as well."""
    table = SessionTable(max_sessions=256, max_paired_per_peer=32)
    per_address = table.max_paired_per_address
    assert per_address < 256
    for i in range(256):
        try:
            session = table.open(
                request_id=str(i),
                client_peer=f"m{i % 8}",
                server_peer=f"o{i // 32}",
                now=0.0,
                client_address="203.0.113.9",
            )
        except TunnelError as exc:
            assert exc.code == "busy"
            continue
        pair(table, session)
    assert table.paired_count == per_address
    honest = table.open(
        request_id="h", client_peer="bob", server_peer="alice", now=0.0, client_address="192.0.2.4"
    )
    assert table.join(honest.keys["server"], now=1.0).paired is False
    assert table.join(honest.keys["client"], now=1.0).paired
    # a closed one gives the address its share back
    found = table.find("0", "m0")
    assert found is not None
    table.close(found)
    again = {"client_peer": "m0", "server_peer": "o0", "client_address": "203.0.113.9"}
    assert table.open(request_id="again", now=0.0, **again)
