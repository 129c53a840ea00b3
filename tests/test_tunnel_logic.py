"""The tunnel's pure rules: join line, keys, session table, routes."""

from __future__ import annotations

import itertools

import pytest

from flashback.protocol.tunnel import (
    KEY_TTL_S,
    MAX_JOIN_LINE_BYTES,
    LineReader,
    OpenTarget,
    RouteMemory,
    SessionTable,
    TunnelError,
    direct_probe_accepts,
    is_valid_key,
    join_line,
    new_key,
    parse_join_line,
    parse_open_line,
)


def counting_keys():
    counter = itertools.count()
    return lambda: new_key(lambda n: next(counter).to_bytes(n, "big"))


# -- keys and lines -------------------------------------------------------------


def test_keys_are_43_chars_of_urlsafe_base64_and_random():
    a, b = new_key(), new_key()
    assert a != b
    assert len(a) == 43 and is_valid_key(a)
    assert set(a) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize(
    "text",
    ["", "a" * 42, "a" * 44, "+" * 43, "a" * 42 + "=", "A" * 42 + "B"],  # last: non-canonical bits
)
def test_invalid_keys(text):
    assert not is_valid_key(text)


def test_join_line_round_trip_and_fits_the_limit():
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
def test_bad_join_lines(line):
    with pytest.raises(TunnelError) as info:
        parse_join_line(line)
    assert info.value.line == b"ERR bad_line\n"


def test_oversized_line_is_refused_before_its_newline():
    reader = LineReader(MAX_JOIN_LINE_BYTES)
    assert reader.receive_data(b"x" * 127) is None
    with pytest.raises(TunnelError) as info:
        reader.receive_data(b"x")
    assert info.value.code == "line_too_long"
    with pytest.raises(TunnelError):
        LineReader(8).receive_data(b"123456789\n")


def test_eof_before_newline():
    with pytest.raises(TunnelError) as info:
        LineReader(8).receive_data(b"")
    assert info.value.code == "bad_line"


def test_open_lines():
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


def test_pairing_needs_both_keys_each_once():
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


def test_unknown_key():
    with pytest.raises(TunnelError) as info:
        SessionTable().join(new_key(), now=0.0)
    assert info.value.code == "unknown"


def test_key_lives_exactly_30_seconds():
    table = SessionTable()
    s = table.open(request_id="r", client_peer="b", server_peer="a", now=10.0)
    assert KEY_TTL_S == 30.0
    table.join(s.keys["server"], now=10.0 + 29.999)  # still valid
    with pytest.raises(TunnelError) as info:
        table.join(s.keys["client"], now=40.0)
    assert info.value.code == "expired"
    assert len(table) == 0  # the half-joined session went with it


def test_expire_drops_unpaired_sessions_only():
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


def test_table_is_bounded_and_busy_when_full():
    table = SessionTable(max_sessions=2)
    a = table.open(request_id="1", client_peer="b", server_peer="a", now=0.0)
    table.open(request_id="2", client_peer="b", server_peer="a", now=0.0)
    with pytest.raises(TunnelError) as info:
        table.open(request_id="3", client_peer="b", server_peer="a", now=1.0)
    assert info.value.code == "busy"
    table.close(a)
    table.open(request_id="3", client_peer="b", server_peer="a", now=1.0)
    # expired sessions make room by themselves
    assert table.open(request_id="4", client_peer="b", server_peer="a", now=31.0)
    assert len(table) == 1


def test_a_declined_session_tells_late_joiners_why():
    table = SessionTable()
    s = table.open(request_id="r", client_peer="bob", server_peer="alice", now=0.0)
    assert table.find("r", "bob") is s and table.find("r", "eve") is None
    table.close(s, code="refused")
    with pytest.raises(TunnelError) as info:
        table.join(s.keys["client"], now=1.0)
    assert info.value.line == b"ERR refused\n"


def test_closing_a_session_kills_its_unused_key():
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
def test_advertise_host(header, configured, expected):
    from flashback.protocol.tunnel import advertise_host

    assert advertise_host(header, configured) == expected


# -- routes --------------------------------------------------------


def test_route_memory_expires_but_keeps_the_last_used():
    routes = RouteMemory(ttl_s=60.0)
    assert routes.recall("a", 0.0) is None
    routes.remember("a", "relay", now=0.0)
    assert routes.recall("a", 59.0) == "relay"
    assert routes.recall("a", 60.0) is None
    assert routes.last_used("a") == "relay"
    routes.forget("a")
    assert routes.last_used("a") is None


def test_direct_probe_must_name_the_peer():
    assert direct_probe_accepts({"peer_id": "p1", "name": "alice"}, "p1")
    assert not direct_probe_accepts({"peer_id": "p2"}, "p1")
    assert not direct_probe_accepts(["p1"], "p1")
    assert not direct_probe_accepts(None, "p1")


# -- the websocket messages of §6.2 -------------------------------------------------


def test_tunnel_messages_round_trip():
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
    assert parse({"type": "tunnel-error", "request_id": "r", "code": "busy"}).to is None


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
def test_bad_tunnel_messages_are_protocol_errors(frame):
    from flashback.protocol.messages import ProtocolError, parse

    with pytest.raises(ProtocolError):
        parse(frame)
