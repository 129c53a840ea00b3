"""The pure rules of direct connections, with plain numbers (no sockets, no clock)."""

from __future__ import annotations

import pytest

from flashback.protocol.direct import (
    INTRO_MAGIC,
    MAX_ATTEMPTS_PER_CANDIDATE,
    DialPlan,
    Race,
    RouteBook,
    classify_first_byte,
    hostport,
    intro_line,
    introduction_candidates,
    order_candidates,
    parse_addr_line,
    parse_intro_line,
    reflect_line,
)
from flashback.protocol.messages import Candidate
from flashback.protocol.tunnel import LineReader, TunnelError

C = Candidate


def test_intro_line_round_trips_and_is_bounded() -> None:
    line = intro_line("t1-abcd")
    assert line == b"FLASHBACK-INTRO 1 t1-abcd\n"
    assert parse_intro_line(line[:-1]) == "t1-abcd"
    with pytest.raises(ValueError):
        intro_line("x" * 200)
    with pytest.raises(ValueError):
        intro_line("a b")
    for bad in (b"FLASHBACK-INTRO 1 ", b"FLASHBACK-TUNNEL 1 abc", INTRO_MAGIC + b"a\x00b"):
        with pytest.raises(TunnelError):
            parse_intro_line(bad)
    reader = LineReader(128)
    with pytest.raises(TunnelError):
        reader.receive_data(INTRO_MAGIC + b"a" * 200)


def test_first_byte_decides() -> None:
    assert classify_first_byte(b"\x16\x03\x01") == "tls"
    assert classify_first_byte(b"F") == "intro"
    assert classify_first_byte(b"GET / HTTP/1.1") == "close"
    assert classify_first_byte(b"") == "close"


def test_candidate_order_dedupes_v4_first_and_caps() -> None:
    got = order_candidates(
        [
            C("2001:db8::1", 5000),
            C("10.0.0.2", 5000),
            C("2001:db8:0:0::1", 5000),  # the same address spelled longer
            C("10.0.0.2", 5000),
            C("0.0.0.0", 5000),
            C("::", 5000),
            C("224.0.0.1", 5000),
            C("192.0.2.7", 6000),
        ]
    )
    assert got == (C("10.0.0.2", 5000), C("192.0.2.7", 6000), C("2001:db8::1", 5000))
    many = [C(f"10.0.0.{i}", 1000 + i) for i in range(1, 20)]
    assert len(order_candidates(many)) == 8
    assert {c.port for c in order_candidates(many)} <= {c.port for c in many}


def test_dial_plan_all_at_once_then_retries_until_the_window_ends() -> None:
    a, b = C("10.0.0.1", 1), C("10.0.0.2", 2)
    plan = DialPlan([a, b], start=100.0, window_s=3.0, interval_s=0.3)
    assert plan.due(100.0) == [a, b]
    assert plan.due(100.0) == []  # both in flight
    plan.failed(a, 100.1)
    assert plan.next_wake(100.1) == pytest.approx(100.4)
    assert plan.due(100.3) == []
    assert plan.due(100.4) == [a]
    plan.failed(a, 102.9)
    assert plan.due(103.2) == []  # past the window
    assert plan.next_wake(103.2) is None


def test_a_forged_candidate_is_dialled_a_bounded_number_of_times() -> None:
    victim = C("192.0.2.80", 80)
    plan = DialPlan([victim], start=0.0, window_s=1000.0, interval_s=0.01)
    now, dials = 0.0, 0
    while (wake := plan.next_wake(now)) is not None:
        now = wake
        for candidate in plan.due(now):
            dials += 1
            plan.failed(candidate, now)  # refused at once, every time
    assert dials == MAX_ATTEMPTS_PER_CANDIDATE == plan.attempts(victim)


def test_dial_plan_stops_when_one_succeeds() -> None:
    a, b = C("10.0.0.1", 1), C("10.0.0.2", 2)
    plan = DialPlan([a, b], start=0.0)
    plan.due(0.0)
    plan.succeeded()
    plan.failed(b, 0.1)
    assert plan.due(1.0) == [] and plan.next_wake(1.0) is None


def test_race_relay_waits_250_ms_unless_nothing_to_dial_and_first_wins() -> None:
    race = Race()
    assert race.relay_start(10.0, direct_candidates=2) == pytest.approx(10.25)
    assert race.relay_start(10.0, direct_candidates=0) == 10.0
    assert race.should_join_relay()
    assert race.claim("direct 10.0.0.1:1")
    assert not race.should_join_relay()
    assert not race.claim("relay")
    assert race.claim("direct 10.0.0.1:1")  # the winner stays the winner


def test_route_book_direct_first_and_relay_retry_every_60_s() -> None:
    book = RouteBook()
    a, b = C("10.0.0.1", 1), C("10.0.0.2", 2)
    assert book.direct_first("alice") == () and book.may_punch("alice", 0.0)
    book.remember_direct("alice", a, 1.0)
    book.remember_direct("alice", b, 2.0)
    assert book.direct_first("alice") == (b, a)  # the last that worked first
    last = book.last("alice")
    assert last is not None and (last.route, last.address) == ("direct", "10.0.0.2:2")
    book.forget_direct("alice", b)
    assert book.direct_first("alice") == (a,)

    book.remember_relay("bob", "198.51.100.1:3001", 100.0)
    assert not book.may_punch("bob", 159.9)
    assert book.may_punch("bob", 160.0)
    assert book.may_punch("alice", 100.0)  # direct peers are always tried


def test_route_book_is_bounded() -> None:
    book = RouteBook(max_peers=2)
    for i, peer in enumerate(("a", "b", "c")):
        book.remember_direct(peer, C("10.0.0.1", i + 1), float(i))
    assert book.last("a") is None and book.direct_first("a") == ()
    assert book.direct_first("c") == (C("10.0.0.1", 3),)


def test_hostport_brackets_v6() -> None:
    assert hostport("::1", 5) == "[::1]:5" and hostport("10.0.0.1", 5) == "10.0.0.1:5"


def test_reflect_and_addr_lines() -> None:
    assert reflect_line("tok-1") == b"FLASHBACK-REFLECT 1 tok-1\n"
    with pytest.raises(ValueError):
        reflect_line("a" * 300)
    assert parse_addr_line(b"ADDR 203.0.113.5 40123") == C("203.0.113.5", 40123)
    assert parse_addr_line(b"ADDR 2001:db8:0::1 7") == C("2001:db8::1", 7)
    for bad in (b"ADDR example.com 1", b"ADDR 1.2.3.4 0", b"ADDR 1.2.3.4 1" + b"0" * 50, b"HI"):
        with pytest.raises(TunnelError):
            parse_addr_line(bad)
    with pytest.raises(TunnelError) as info:
        parse_addr_line(b"ERR unauthorized")
    assert info.value.code == "unauthorized"


def test_loopback_candidates_only_when_the_tracker_is_on_loopback() -> None:
    given = [C("127.0.0.1", 5), C("::1", 6), C("192.0.2.9", 7)]
    assert introduction_candidates(given, tunnel_host="198.51.100.1") == (C("192.0.2.9", 7),)
    assert introduction_candidates(given, tunnel_host="tracker.example") == (C("192.0.2.9", 7),)
    assert len(introduction_candidates(given, tunnel_host="127.0.0.1")) == 3


def test_dial_plan_takes_candidates_learnt_in_the_window_up_to_8() -> None:
    a, b = C("10.0.0.1", 1), C("203.0.113.9", 2)
    plan = DialPlan([a], start=0.0)
    assert plan.due(0.0) == [a]
    assert plan.add([a, b], 0.5) == [b]  # a is known already
    assert plan.due(0.5) == [b]
    assert plan.add([C(f"10.1.0.{i}", 9) for i in range(20)], 0.6)[-1] == C("10.1.0.5", 9)
    assert len(plan.candidates) == 8


def test_a_relay_only_peer_is_punched_again_for_a_new_candidate() -> None:
    book = RouteBook()
    old, new = C("10.0.0.1", 1), C("203.0.113.9", 2)
    book.remember_relay("bob", "198.51.100.1:3001", 100.0, tried=[old])
    assert not book.may_punch("bob", 110.0, [old])
    assert book.may_punch("bob", 110.0, [old, new])
