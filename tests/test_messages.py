"""The websocket message types: round trips both ways, and every rejection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flashback.protocol import messages as m
from flashback.protocol import wire

PEER = m.PeerInfo(
    peer_id="p1",
    name="laptop",
    host="10.0.0.2",
    port=8080,
    capabilities={"stream": True},
    registered_at="2024-01-01T00:00:00.000Z",
    last_seen="2024-01-01T00:00:01.000Z",
)

ROUND_TRIPS: list[m.Message] = [
    m.Hello(last_seq=None),
    m.Hello(last_seq=42, peer_id="p1", token="secret"),
    m.Snapshot(seq=7, peers=(PEER,)),
    m.Snapshot(seq=0),
    m.PeerJoined(seq=8, peer=PEER),
    m.PeerUpdated(seq=9, peer=PEER),
    m.PeerLeft(seq=10, peer_id="p1", reason="expired"),
    m.StreamRequest(request_id="r1", path="a/b.mkv", to="p2"),
    m.StreamRequest(request_id="r1", path="a/b.mkv", from_="p1"),
    m.FileStreamReady(
        request_id="r1",
        host="10.0.0.2",
        port=4000,
        token="t",
        path="a",
        size=3,
        expires_in=60,
        to="p1",
    ),
    m.FileStreamReady(
        request_id="r1",
        host="h",
        port=1,
        token="t",
        path="a",
        size=0,
        expires_in=1.5,
        from_="p2",
    ),
    m.StreamError(request_id="r1", code="not_found", message="gone", to="p1"),
    m.StreamError(request_id="r1", code="unknown_peer", message="offline"),
    m.ErrorMessage(code="invalid_json", message="bad"),
    m.RouteReport(request_id="r1", route="direct"),
    m.TunnelInvite(
        request_id="r1",
        from_="p2",
        fingerprint="sha256:" + "a" * 64,
        role="server",
        host="198.51.100.1",
        port=3001,
        key="k",
        candidates=(m.Candidate("192.0.2.2", 4000), m.Candidate("2001:db8::1", 4000)),
        peer_fingerprint="sha256:" + "b" * 64,
    ),
]


def test_a_peer_record_carries_its_direct_and_reflexive_candidates() -> None:
    record = m.PeerInfo(
        "p1",
        "laptop",
        "10.0.0.2",
        8080,
        registered_at="2024-01-01T00:00:00.000Z",
        last_seen="2024-01-01T00:00:01.000Z",
        direct=(m.Candidate("10.0.0.2", 4000),),
        reflexive=m.Candidate("203.0.113.9", 61000),
    )
    assert m.PeerInfo.parse(record.dump()) == record
    assert record.candidates == (m.Candidate("10.0.0.2", 4000), m.Candidate("203.0.113.9", 61000))


@pytest.mark.parametrize(
    "bad",
    [
        {"host": "example.com", "port": 1},  # a name would be resolved by every dialler
        {"host": "fe80::1%eth0", "port": 1},
        {"host": "10.0.0.1", "port": 0},
        {"host": "10.0.0.1", "port": True},
        "10.0.0.1:80",
    ],
)
def test_a_candidate_is_an_ip_literal_and_a_port(bad: object) -> None:
    with pytest.raises(m.ProtocolError):
        m.read_candidates({"direct": [bad]}, "direct")


def test_at_most_eight_candidates_and_duplicates_dropped() -> None:
    one = {"host": "10.0.0.1", "port": 9}
    assert m.read_candidates({"direct": [one, one]}, "direct") == (m.Candidate("10.0.0.1", 9),)
    with pytest.raises(m.ProtocolError):
        m.read_candidates(
            {"direct": [{"host": "10.0.0.1", "port": p} for p in range(1, 10)]}, "direct"
        )


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda msg: type(msg).__name__)
def test_round_trip_through_dict_and_text(message: m.Message) -> None:
    assert m.parse(message.dump()) == message
    assert m.parse(message.encode()) == message
    assert m.parse(message.encode().encode()) == message


def test_wire_shapes_match_the_contract() -> None:
    assert m.StreamRequest(request_id="r", path="x", from_="p1").dump() == {
        "type": "stream-request",
        "request_id": "r",
        "from": "p1",
        "path": "x",
    }
    assert m.PeerJoined(seq=1, peer=PEER).dump()["peer"] == {
        "peer_id": "p1",
        "name": "laptop",
        "peer_server": {"host": "10.0.0.2", "port": 8080},
        "capabilities": {"stream": True},
        "registered_at": "2024-01-01T00:00:00.000Z",
        "last_seen": "2024-01-01T00:00:01.000Z",
        "fingerprint": None,
        "direct": [],
        "reflexive": None,
    }
    assert m.Hello(last_seq=None).dump() == {"type": "hello", "last_seq": None}
    assert m.parse({"type": "hello"}) == m.Hello(last_seq=None)


def test_hello_repr_hides_the_token() -> None:
    assert "secret" not in repr(m.Hello(last_seq=1, peer_id="p", token="secret"))


BAD: list[tuple[Any, str]] = [
    ("{nope", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ("null", "invalid_message"),
    ({"no": "type"}, "unknown_type"),
    ({"type": "bogus"}, "unknown_type"),
    ({"type": 3}, "unknown_type"),
    ({"type": "hello", "last_seq": "1"}, "invalid_field"),
    ({"type": "hello", "last_seq": True}, "invalid_field"),
    ({"type": "hello", "last_seq": -1}, "invalid_field"),
    ({"type": "hello", "peer_id": "p"}, "invalid_field"),
    ({"type": "hello", "token": "t"}, "invalid_field"),
    ({"type": "hello", "peer_id": "", "token": "t"}, "invalid_field"),
    ({"type": "stream-request", "request_id": "r", "path": "x"}, "invalid_field"),
    (
        {"type": "stream-request", "request_id": "r", "to": "a", "from": "b", "path": "x"},
        "invalid_field",
    ),
    ({"type": "stream-request", "request_id": 5, "to": "a", "path": "x"}, "invalid_field"),
    ({"type": "stream-request", "request_id": "r", "to": "a", "path": "x" * 5000}, "invalid_field"),
    (
        {
            "type": "file-stream-ready",
            "request_id": "r",
            "to": "a",
            "host": "h",
            "port": 0,
            "token": "t",
            "path": "p",
            "size": 1,
            "expires_in": 1,
        },
        "invalid_field",
    ),
    (
        {
            "type": "file-stream-ready",
            "request_id": "r",
            "to": "a",
            "host": "h",
            "port": 1,
            "token": "t",
            "path": "p",
            "size": 1,
            "expires_in": "soon",
        },
        "invalid_field",
    ),
    ({"type": "stream-error", "request_id": "r", "code": "x", "message": 3}, "invalid_field"),
    ({"type": "peer-left", "seq": 1, "peer_id": "p", "reason": "bored"}, "invalid_field"),
    ({"type": "peer-joined", "seq": 1, "peer": "p"}, "invalid_field"),
    ({"type": "snapshot", "seq": 1, "peers": {}}, "invalid_field"),
]


@pytest.mark.parametrize(("frame", "code"), BAD)
def test_bad_frames_carry_their_error_reply(frame: Any, code: str) -> None:
    with pytest.raises(m.ProtocolError) as caught:
        m.parse(frame)
    reply = caught.value.reply.dump()
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert isinstance(reply["message"], str) and reply["message"]
    json.dumps(reply)


@pytest.mark.parametrize(
    "frame",
    ['{"type":"hello","last_seq":NaN}', '{"type":"hello","x":1e999}', '{"x":' + "[" * 100_000],
)
def test_non_finite_numbers_are_not_json(frame: str) -> None:
    with pytest.raises(m.ProtocolError) as info:
        m.parse(frame)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        b'{"peer_id": "\\ud800"}',  # an escape, in ASCII bytes
        b'{"peer_id": "\\uDFFF"}',
        b'{"peer_id": "\xed\xa0\x80"}',  # a surrogate's UTF-8 form (decoded with surrogatepass)
        '{"peer_id": "\\ud800"}'.encode("utf-16-le"),  # ASCII range, but with NULs
        '{"peer_id": "\\ud800"}'.encode("utf-32"),
        '{"peer_id": "\\ud800"}',  # text, not bytes
    ],
)
def test_lone_surrogates_are_refused_in_every_encoding(body: str | bytes) -> None:
    with pytest.raises(m.ProtocolError) as info:
        wire.decode_object(body)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [b'{"peer_id": "p\\u00e9"}', b'{"peer_id": "\\ud83d\\ude00"}', '{"a": 1}'.encode("utf-16")],
)
def test_escapes_and_other_encodings_still_decode(body: bytes) -> None:
    assert isinstance(wire.decode_object(body), dict)


def test_strict_json_keeps_what_json_loads_refuses_and_accepts() -> None:
    from flashback.protocol.strict_json import loads_strict

    with pytest.raises(ValueError):
        loads_strict("\ufeff{}")  # a BOM in text
    assert loads_strict(b"\xef\xbb\xbf{}") == {}  # in bytes it is UTF-8's signature
    assert loads_strict(bytearray(b'{"a": 1.5}')) == {"a": 1.5}
    assert loads_strict(b'{"a": 1}') == json.loads(b'{"a": 1}')


def test_peer_fingerprint_round_trips_and_bad_shapes_are_refused() -> None:
    fingerprint = "sha256:" + "ab" * 32
    peer = m.PeerInfo(
        peer_id="p1",
        name="n",
        host="h",
        port=1,
        registered_at="t",
        last_seen="t",
        fingerprint=fingerprint,
    )
    assert m.PeerInfo.parse(peer.dump()) == peer
    assert m.PeerInfo.parse({**peer.dump(), "fingerprint": None}).fingerprint is None
    for bad in ("sha256:" + "AB" * 32, "sha1:" + "ab" * 20, "sha256:" + "ab" * 31, 7, ""):
        with pytest.raises(m.ProtocolError):
            m.PeerInfo.parse({**peer.dump(), "fingerprint": bad})
